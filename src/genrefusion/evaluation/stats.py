"""Uncertainty for model comparisons: paired bootstrap over test movies, mean ± std over seeds.

The thesis reports single runs; differences of a point or two in F1 between fusion heads are
within resampling noise on MM-IMDb's test split, so comparisons here come with intervals.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np

from .metrics import binarize, check_inputs, f1_from_counts

BOOTSTRAP_METRICS = ("f1_macro", "f1_micro", "f1_samples", "hamming_accuracy")


def resampled_scores(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray, metric: str) -> np.ndarray:
    """`metric` on many resamples at once. weights: (B, N), weights[b, i] = how many times movie i
    was drawn in resample b. A resample's confusion counts are weighted sums of per-movie counts, so
    this equals sklearn's score on y_true[idx], y_pred[idx] without materialising the copies."""
    if metric not in BOOTSTRAP_METRICS:
        raise ValueError(f"unknown bootstrap metric {metric!r}; choose one of {BOOTSTRAP_METRICS}")
    y, p = y_true.astype(bool), y_pred.astype(bool)
    tp, fp, fn = (y & p).astype(np.float64), (~y & p).astype(np.float64), (y & ~p).astype(np.float64)
    n_drawn = weights.sum(axis=1)
    if metric == "f1_macro":  # per-genre counts (B, L), then the unweighted mean over genres
        return f1_from_counts(weights @ tp, weights @ fp, weights @ fn).mean(axis=1)
    if metric == "f1_micro":  # counts pooled over genres
        return f1_from_counts(weights @ tp.sum(1), weights @ fp.sum(1), weights @ fn.sum(1))
    if metric == "f1_samples":  # per-movie F1, averaged over the drawn movies
        return weights @ f1_from_counts(tp.sum(1), fp.sum(1), fn.sum(1)) / n_drawn
    return weights @ (y == p).mean(axis=1) / n_drawn  # hamming_accuracy


def resample_weights(n: int, n_boot: int, seed: int, chunk: int = 256):
    """The bootstrap's resamples of n movies as (b, n) draw counts, `chunk` resamples at a time (the count matrix
    stays small even for MM-IMDb's ~7.8k test movies). The same (n, n_boot, seed) gives the same draws, so an
    interval for one model and the paired interval for two are drawn from the same resamples."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        flat = (np.arange(b)[:, None] * n + idx).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def bootstrap_interval(y_true, prob, threshold=0.5, metric: str = "f1_macro", n_boot: int = 1000, seed: int = 0,
                       ci: float = 0.95) -> dict[str, Any]:
    """Percentile bootstrap interval of one model's `metric` over its movies: {"metric", "estimate" (on every
    movie), "ci_low", "ci_high", "n_boot", "seed", "ci"}."""
    y_true, prob = check_inputs(y_true, prob, "bootstrap_interval")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    pred = binarize(prob, threshold)
    n = y_true.shape[0]
    estimate = float(resampled_scores(y_true, pred, np.ones((1, n)), metric)[0])
    scores = np.concatenate([resampled_scores(y_true, pred, w, metric) for w in resample_weights(n, n_boot, seed)])
    lo, hi = np.quantile(scores, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return {"metric": metric, "estimate": estimate, "ci_low": float(lo), "ci_high": float(hi),
            "n_boot": int(n_boot), "seed": int(seed), "ci": float(ci)}


def paired_bootstrap(
    y_true,
    prob_a,
    prob_b,
    metric: str = "f1_macro",
    threshold_a=0.5,
    threshold_b=0.5,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Paired bootstrap of metric(B) - metric(A) on the same test movies.

    Each resample draws N test movies with replacement and scores *both* models on that same draw,
    so the movie-to-movie difficulty cancels out of the difference. A model trained with several seeds is
    given as a list of probability arrays (with a list of thresholds): its score on a draw is the mean over its
    seeds, so the interval is for the difference of seed-averaged scores. Returns
      diff:      metric(B) - metric(A) on the full test set,
      ci_low/ci_high: percentile interval (level `ci`) of the resampled differences,
      p_value:   fraction of resamples where B does not beat A (diff <= 0); a one-sided bootstrap
                 estimate, small when B is reliably better — not an exact test,
    plus score_a, score_b, metric, n_boot, seed, ci.
    """
    runs_a = _runs(y_true, prob_a, threshold_a, "A")
    runs_b = _runs(y_true, prob_b, threshold_b, "B")
    y_true = check_inputs(y_true, runs_a[0][0], "paired_bootstrap")[0]
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    preds_a = [binarize(p, t) for p, t in runs_a]
    preds_b = [binarize(p, t) for p, t in runs_b]
    n = y_true.shape[0]

    def score(preds, weights):  # mean over a model's seeds
        return np.mean([resampled_scores(y_true, p, weights, metric) for p in preds], axis=0)

    full = np.ones((1, n))
    score_a, score_b = float(score(preds_a, full)[0]), float(score(preds_b, full)[0])

    diffs = np.concatenate([score(preds_b, w) - score(preds_a, w) for w in resample_weights(n, n_boot, seed)])
    lo, hi = np.quantile(diffs, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return {
        "metric": metric,
        "score_a": score_a,
        "score_b": score_b,
        "diff": score_b - score_a,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "p_value": float(np.mean(diffs <= 0)),
        "n_boot": int(n_boot),
        "seed": int(seed),
        "ci": float(ci),
        "n_seeds_a": len(preds_a),
        "n_seeds_b": len(preds_b),
    }


def _runs(y_true, probs, thresholds, which: str) -> list[tuple[np.ndarray, Any]]:
    """Normalise one model's input to [(probs, threshold), ...], one pair per seed."""
    if isinstance(probs, (list, tuple)):
        if not isinstance(thresholds, (list, tuple)) or len(thresholds) != len(probs):
            raise ValueError(f"model {which}: give one threshold per seed ({len(probs)} probability arrays)")
        pairs = list(zip(probs, thresholds))
    else:
        pairs = [(probs, thresholds)]
    if not pairs:
        raise ValueError(f"model {which}: no predictions")
    return [(check_inputs(y_true, p, f"paired_bootstrap (model {which})")[1], t) for p, t in pairs]


def _is_number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def seed_mean_std(values: Sequence[float]) -> dict[str, float]:
    """{"mean", "std"} of one number over seeds: the sample std (ddof=1), 0 for a single value."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("seed_mean_std needs at least one value")
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}


def seed_summary(values: Sequence[float]) -> float | dict[str, float]:
    """What a table shows for one number over seeds: the value itself for one seed, else seed_mean_std."""
    return float(values[0]) if len(values) == 1 else seed_mean_std(values)


def mean_std(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Aggregate metrics dicts from several runs (seeds) into {key: {"mean", "std"}} (seed_mean_std per key).

    Every top-level key whose value is a number in *every* run is aggregated; nested values
    (per_genre), lists (per-genre thresholds, label names) and keys that are None or missing in some
    run (e.g. an undefined ROC-AUC) are left out. std is the sample std (ddof=1), 0 for a single run.
    """
    if len(runs) == 0:
        raise ValueError("mean_std needs at least one metrics dict")
    keys = [k for k in runs[0] if all(_is_number(r.get(k)) for r in runs)]
    return {k: seed_mean_std([float(r[k]) for r in runs]) for k in keys}


def cv_interval(values: Sequence[float], test_train_ratio: float, ci: float = 0.95) -> dict[str, float]:
    """Mean and interval of a score over the folds x repeats of a repeated cross-validation (or of a paired
    difference of two models' scores, fold by fold).

    The J fold scores are not independent: any two folds' models share most of their training movies, so the plain
    t-interval (variance s^2 / J) is far too narrow. This is the corrected resampled t-interval (Nadeau & Bengio,
    2003; for repeated k-fold, Bouckaert & Frank, 2004): variance (1/J + n_test/n_train) * s^2, with the t
    distribution's J - 1 degrees of freedom. `test_train_ratio`: n_test / n_train of one fold (about 1/(K-1)).
    Returns {"mean", "std" (sample std of the fold scores), "ci_low", "ci_high", "n" (J), "ci"}; for one fold the
    interval is the single value (there is no spread to measure)."""
    from scipy.stats import t  # only here: this module is imported where scipy is not needed

    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0 or not np.isfinite(v).all():
        raise ValueError("cv_interval needs one finite score per fold")
    if not test_train_ratio > 0:
        raise ValueError(f"test_train_ratio must be > 0, got {test_train_ratio}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    mean, j = float(v.mean()), v.size
    std = float(v.std(ddof=1)) if j > 1 else 0.0
    half = float(t.ppf(0.5 + ci / 2, j - 1) * np.sqrt((1 / j + test_train_ratio) * std ** 2)) if j > 1 else 0.0
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": int(j), "ci": float(ci)}


__all__ = ["BOOTSTRAP_METRICS", "bootstrap_interval", "cv_interval", "mean_std", "paired_bootstrap", "resample_weights", "resampled_scores", "seed_mean_std",
           "seed_summary"]
