"""The stratified split of Arevalo et al.'s make_dataset.py (gmu-mmimdb), which the thesis code used.

Genres are visited rarest first. Each genre's movies that are not yet assigned are shuffled and cut into
test (ceil 30%), dev (ceil 10%) and train (the rest); assigned movies are then removed from every later genre.
This keeps rare genres present in all three splits. Movies with no genre are never assigned.
"""
from __future__ import annotations

import math

import numpy as np


def stratified_split(y: np.ndarray, dev_size: float = 0.1, test_size: float = 0.3,
                     seed: int = 1234) -> dict[str, list[int]]:
    y = np.asarray(y)
    remaining = y.copy()
    rng = np.random.RandomState(seed)
    out: dict[str, list[int]] = {"train": [], "dev": [], "test": []}
    # Most frequent first, then reversed: the same order as make_dataset.py (`counts.most_common()`, `labels[::-1]`).
    # A stable sort keeps ties in label order, so the result does not depend on numpy's sort algorithm.
    order = np.argsort(-y.sum(axis=0), kind="stable")
    for label in order[::-1]:
        members = rng.permutation(remaining[:, label].nonzero()[0])
        n_test = int(math.ceil(len(members) * test_size))
        n_dev = int(math.ceil(len(members) * dev_size))
        out["test"].extend(members[:n_test].tolist())
        out["dev"].extend(members[n_test:n_test + n_dev].tolist())
        out["train"].extend(members[n_test + n_dev:].tolist())
        remaining[members, :] = 0
    return {k: sorted(v) for k, v in out.items()}
