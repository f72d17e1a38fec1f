"""The probe scores measured for registered encoders (EncoderSpec.probe), kept as data in one place.

Each entry is what one run of benchmarks/probe.py printed for the encoder (evaluation/probe.py: 5-fold cross-validated
linear and cosine-kNN probes of its cached features, macro average precision over the genres with >= 10 positives;
chance = the AP of a constant scorer, the genres' base rates), with the movies it ran over, the command and the date.
Only numbers a run produced go here; an encoder that has not been probed has no entry (its spec's probe is None).
"""
from __future__ import annotations

from typing import Any

KEYS = ("linear", "knn", "chance", "n", "genres", "command", "date")

# The 1,305 movies of the MM-IMDb sample with a plot and a poster (every encoder over the same movies), 22 genres
# scored. Not probed yet: the multilingual encoders.
_SAMPLE = {"n": 1305, "genres": 22, "date": "2026-12-07",
           "command": "benchmarks/probe.py --data ../shared/data/mmimdb-sample --encoders minilm-l6,efficientnet-lite0"}
_SAMPLE_MPNET = {**_SAMPLE, "command": "benchmarks/probe.py --data ../shared/data/mmimdb-sample --encoders mpnet-base"}
_SAMPLE_DINO = {**_SAMPLE, "command": "benchmarks/probe.py --data ../shared/data/mmimdb-sample --encoders dinov2-vits14"}
# EfficientNet-Lite2 was probed beside Lite0 on a seeded draw of 600 of those movies (Lite0 there: linear 0.1994,
# kNN 0.1693, chance 0.1110; its own entry stays the one over all 1,305).
_LIMIT_600 = {"n": 600, "genres": 22, "date": "2026-12-07",
              "command": "benchmarks/probe.py --data ../shared/data/mmimdb-sample "
                         "--encoders efficientnet-lite0,efficientnet-lite2 --limit 600"}
MEASURED: dict[str, dict[str, Any]] = {
    "minilm-l6": {"linear": 0.3567, "knn": 0.3768, "chance": 0.1106, **_SAMPLE},
    "mpnet-base": {"linear": 0.4369, "knn": 0.4325, "chance": 0.1106, **_SAMPLE_MPNET},
    "efficientnet-lite0": {"linear": 0.1938, "knn": 0.1828, "chance": 0.1106, **_SAMPLE},
    "dinov2-vits14": {"linear": 0.1802, "knn": 0.1386, "chance": 0.1106, **_SAMPLE_DINO},
    "efficientnet-lite2": {"linear": 0.1917, "knn": 0.1747, "chance": 0.1110, **_LIMIT_600},
}
