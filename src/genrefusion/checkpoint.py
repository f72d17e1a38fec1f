"""Saved models: a folder with the head's weights (safetensors), the resolved config, the label vocabulary,
the decision thresholds and the encoders' names, enough to rebuild the exact model on another machine."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .atomic import staging_dir
from .config import Config
from .labels import GENRES

FORMAT_VERSION = 1


def save_model(directory: str | Path, model: torch.nn.Module, cfg: Config, threshold: Any,
               encoders: dict[str, dict[str, Any]]) -> Path:
    """Write atomically: everything goes to a sibling temp folder which is then renamed into place.
    `encoders`: per modality {"name", "kwargs", "fingerprint"}, what load_model rebuilds and checks."""
    directory = Path(directory)
    with staging_dir(directory) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        meta = {
            "format": FORMAT_VERSION,
            "model": model.config,
            "genres": list(GENRES),
            "thresholds": np.asarray(threshold).tolist(),
            "encoders": encoders,
            "config": cfg.to_dict(),
        }
        (tmp / "model.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return directory


def load_head(directory: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained fusion/head model (over encoder features) and its metadata."""
    from .fusion import create_model

    directory = Path(directory)
    meta_path = directory / "model.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{directory}: not a saved genrefusion model (no model.json)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: unsupported format {meta.get('format')!r} (expected {FORMAT_VERSION})")
    cfg = dict(meta["model"])
    name = cfg.pop("name")
    if "head_dropout" in cfg:
        cfg["head_dropout"] = tuple(cfg["head_dropout"])
    model = create_model(name, **cfg)
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    model.eval()
    return model, meta
