"""The probe scores measured for registered encoders (EncoderSpec.probe), kept as data in one place.

Each entry is what one run of benchmarks/probe.py printed for the encoder (evaluation/probe.py: 5-fold cross-validated
linear and cosine-kNN probes of its cached features, macro average precision over the genres with >= 10 positives;
chance = the AP of a constant scorer, the genres' base rates), with the movies it ran over, the command and the date.
Only numbers a run produced go here; an encoder that has not been probed has no entry (its spec's probe is None).
"""
from __future__ import annotations

from typing import Any

KEYS = ("linear", "knn", "chance", "n", "genres", "command", "date")

MEASURED: dict[str, dict[str, Any]] = {}
