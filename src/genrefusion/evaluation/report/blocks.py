"""What a report is made of: headings, paragraphs, tables, figures and a warning callout, built once as a list of
blocks that the Markdown and HTML renderers (render.py) both walk, so the two files cannot disagree. Also how a
number is printed in them."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADERS = {"hamming_accuracy": "Hamming Acc.", "f1_macro": "F1-Macro", "f1_micro": "F1-Micro",
           "f1_weighted": "F1-Weighted", "f1_samples": "F1-Samples"}
ACC_NOTE = ("Hamming Acc. = 1 − Hamming loss, the per-(movie, genre) accuracy that the thesis calls “Accuracy”; "
            "F1 uses sklearn's macro / micro / weighted / samples averaging with zero_division=0.")
KIND_TITLE = {"unimodal": "Unimodal", "fusion": "Multimodal fusion"}


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Text:
    kind: str  # h1 | h2 | h3 | p
    text: str


@dataclass
class Callout:  # the not-a-reproduction warning: a lead sentence and one item per reason
    text: str
    items: list[str]


@dataclass
class Report:
    blocks: list[Any] = field(default_factory=list)
    charts: list[Path] = field(default_factory=list)

    def add(self, *blocks: Any) -> None:
        self.blocks.extend(blocks)


def fmt(value: float | Mapping | None, digits: int = 4) -> str:
    """Scores print with 4 decimals (the thesis's precision); several seeds print as "mean ± std"."""
    if value is None:
        return "-"
    if isinstance(value, Mapping):
        return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"
    return f"{value:.{digits}f}"


def fmt_pct(value: float | Mapping | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, Mapping):
        return f"{value['mean']:+.2f}% ± {value['std']:.2f}"
    return f"{value:+.2f}%"


def encoder_training(cfg: Mapping[str, Any]) -> str:
    if cfg.get("mode", "features") == "features":
        return "frozen (cached features)"
    return "fine-tuned end to end" if cfg.get("finetune") else "frozen (end to end)"
