"""The report's numbers, computed from the run's files: Table 8's group averages, per-genre F1, the fusions' image
shares per genre and the training curves, each as one value (one seed) or {"mean", "std"} over seeds."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..stats import seed_summary
from ..thesis import METRICS
from ..runs import Grid, RunFolderError


def mean_of(value: float | Mapping | None) -> float | None:
    return value["mean"] if isinstance(value, Mapping) else value


def std_of(value: float | Mapping | None) -> float | None:
    return value["std"] if isinstance(value, Mapping) else None


def group_averages(run: Grid) -> dict[str, dict[str, Any]] | None:
    """Table 8: per seed, the mean over the unimodal rows and over the fusion rows of each metric; then mean ± std
    over seeds. Improvement = (fusion - unimodal) / unimodal * 100 from those means (the thesis's definition);
    with several seeds its ± is the std of the per-seed improvements."""
    kinds = {k: [r["row"] for r in run.rows if r["kind"] == k] for k in ("unimodal", "fusion")}
    if not all(kinds.values()):
        return None
    per_seed = {k: np.array([[np.mean([run.metrics[name][s]["test"][m] for name in names]) for m in METRICS]
                             for s in range(run.n_seeds)]) for k, names in kinds.items()}  # (seeds, metrics)
    out: dict[str, dict[str, Any]] = {k: {m: seed_summary(v[:, j]) for j, m in enumerate(METRICS)}
                                      for k, v in per_seed.items()}
    uni, fus = per_seed["unimodal"].mean(0), per_seed["fusion"].mean(0)
    seed_impr = (per_seed["fusion"] - per_seed["unimodal"]) / per_seed["unimodal"] * 100
    out["improvement_pct"] = {}
    for j, m in enumerate(METRICS):
        point = float((fus[j] - uni[j]) / uni[j] * 100)
        out["improvement_pct"][m] = point if run.n_seeds == 1 else \
            {"mean": point, "std": float(seed_impr[:, j].std(ddof=1))}
    return out


def per_genre_f1(run: Grid) -> dict[str, dict[str, Any]]:
    """row name -> genre -> F1 on test (mean ± std over seeds)."""
    return {name: {g: seed_summary([m["test"]["per_genre"][g]["f1"] for m in ms]) for g in ms[0]["test"]["per_genre"]}
            for name, ms in run.metrics.items()}


# Analysis tensors that hold an image share per test movie: GMU's gate z (B, H), image share of each hidden unit,
# averaged over units; attention fusion's softmax weights (B, 2) = (text, image).
SHARES = {"gmu": ("gate", "GMU gate (image share)", lambda t: t.mean(axis=1)),
          "attention": ("modality_weights", "Attention weight (image)", lambda t: t[:, 1])}


def modality_shares(run: Grid) -> dict[str, dict[str, Any]]:
    """model -> {"title", "n": {genre: test movies}, "genre": {genre: mean share or None}, "all": overall mean}.
    Per seed: the per-movie image share averaged over the test movies carrying each genre; then over seeds."""
    out = {}
    for model, (key, title, per_movie) in SHARES.items():
        row = next((r for r in run.rows if r["model"] == model), None)
        if row is None:
            continue
        preds = run.predictions(row)
        missing = [p.path for p in preds if key not in p.analysis]
        if missing:
            raise RunFolderError(f"{missing[0]}: no {key!r} tensor (the {row['row']} run did not save its analysis)")
        genres = preds[0].genres
        labels = preds[0].labels > 0.5
        shares = [per_movie(p.analysis[key]) for p in preds]
        n = {g: int(labels[:, j].sum()) for j, g in enumerate(genres)}
        out[model] = {
            "title": title, "row": row["row"], "n": n, "n_all": int(labels.shape[0]),
            "genre": {g: seed_summary([float(s[labels[:, j]].mean()) for s in shares]) if n[g] else None
                      for j, g in enumerate(genres)},
            "all": seed_summary([float(s.mean()) for s in shares]),
        }
    return out


def curves(histories: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """epochs, mean, std over the seeds that reached each epoch (early stopping can end seeds at different epochs)."""
    longest = max(len(h) for h in histories)
    epochs, mean, std = [], [], []
    for e in range(longest):
        vals = [h[e][key] for h in histories if len(h) > e]
        epochs.append(e + 1)
        mean.append(np.mean(vals))
        std.append(np.std(vals, ddof=1) if len(vals) > 1 else 0.0)
    return np.array(epochs), np.array(mean), np.array(std)
