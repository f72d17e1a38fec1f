"""`genrefusion robustness`: saved models scored under increasingly corrupted plots and posters, as MultiBench
measures robustness for MM-IMDb, drawn as curves of macro-F1 (and micro-F1) against the corruption level.

    genrefusion robustness --model runs/grid/bert/seed-42/model --model runs/grid/gmu/seed-42/model \\
        --data ../shared/data/mmimdb-sample --out runs/robustness

  corruptions.py  the corruptions: pure functions of (item, level in [0, 1], rng), the identity at level 0
  measure.py      the scores: every model on the same movies, clean features from the cache, corrupted items
                  encoded by the models' own encoders (once per encoder)
  page.py         robustness.json, one PNG per corruption, robustness.md and robustness.html

Imported by the CLI parser: only the corruption table (PIL) loads here; torch and the rest load in the command.
"""
from __future__ import annotations

import time
from pathlib import Path

from .corruptions import CORRUPTIONS, DEFAULT_LEVELS

__all__ = ["CORRUPTIONS", "DEFAULT_LEVELS", "run_robustness"]


def run_robustness(model_dirs, data, out=None, **kwargs) -> dict:
    """measure.measure, then the page: returns {"result": ..., "json", "markdown", "html", "charts"}."""
    from .measure import measure  # lazy: keeps evaluation.robustness free of safetensors, torch
    from .page import write_page  # lazy: evaluation.robustness.page imports this module

    result = measure(model_dirs, data, **kwargs)
    out = Path(out) if out else Path("runs") / f"robustness-{time.strftime('%Y%m%d-%H%M%S')}"
    return {"result": result, **write_page(result, out)}
