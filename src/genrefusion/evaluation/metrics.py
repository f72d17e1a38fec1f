"""Multi-label evaluation: the thesis's metrics (plus ranking and calibration), threshold tuning, tables.

Everything that scikit-learn defines is computed *by* scikit-learn, so numbers are comparable with
other papers. Conventions used throughout:

* A genre is predicted when its probability is >= its threshold (`binarize`).
* `zero_division=0` everywhere: a precision / recall / F1 whose denominator is zero (a genre that is
  never predicted, or has no positives, or a movie with no true and no predicted genre) counts as 0.
  That is sklearn's conservative choice and it makes macro scores *lower*, never flattering.
* "Accuracy" in the thesis (Tables 6/7, ~0.90-0.93) is the per-(movie, genre) accuracy, i.e.
  `1 - hamming_loss`; the much stricter exact-match accuracy is reported as `subset_accuracy`.
* ROC-AUC and average precision are undefined for a genre whose test labels are all one class.
  Such genres are listed (`labels_without_positives` / `labels_without_negatives`), get `None` per
  genre, and the macro averages run over the remaining `n_labels_scored` genres only.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    hamming_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

AVERAGES = ("macro", "micro", "weighted", "samples")
# Candidate thresholds for tuning: 0.05, 0.06, ..., 0.95 (rounded so 0.5 is exactly in the grid).
THRESHOLD_GRID = np.round(np.arange(5, 96) / 100.0, 2)
TUNE_MODES = ("fixed", "global", "per_genre")


def check_inputs(y_true, y_prob, what: str = "inputs") -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to (int64 {0,1} labels, float64 probabilities), both (N, L)."""
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape[0] == 0 or y_true.shape[1] == 0:
        raise ValueError(f"{what}: y_true must be a non-empty (n_samples, n_labels) array, got shape {y_true.shape}")
    if y_prob.shape != y_true.shape:
        raise ValueError(f"{what}: y_prob shape {y_prob.shape} != y_true shape {y_true.shape}")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError(f"{what}: y_true must contain only 0/1 (multi-hot genres)")
    if not np.isfinite(y_prob).all() or y_prob.min() < 0.0 or y_prob.max() > 1.0:
        raise ValueError(f"{what}: y_prob must be finite probabilities in [0, 1] (apply a sigmoid to logits first)")
    return y_true.astype(np.int64), y_prob


def check_threshold(threshold, n_labels: int) -> float | np.ndarray:
    """A float, or one threshold per genre (length n_labels); all within [0, 1]."""
    t = np.asarray(threshold, dtype=np.float64)
    if t.ndim == 0:
        t_val: float | np.ndarray = float(t)
    elif t.shape == (n_labels,):
        t_val = t
    else:
        raise ValueError(f"threshold must be a float or have shape ({n_labels},), got shape {t.shape}")
    if not np.isfinite(t).all() or t.min() < 0.0 or t.max() > 1.0:
        raise ValueError(f"threshold values must lie in [0, 1], got {threshold!r}")
    return t_val


def binarize(y_prob, threshold=0.5) -> np.ndarray:
    """(N, L) probabilities -> (N, L) int 0/1 predictions; a genre is on when p >= its threshold."""
    y_prob = np.asarray(y_prob, dtype=np.float64)
    t = check_threshold(threshold, y_prob.shape[-1])
    return (y_prob >= t).astype(np.int64)


def expected_calibration_error(y_true, y_prob, n_bins: int = 15) -> float:
    """Expected calibration error of the per-genre probabilities.

    Every (movie, genre) pair is one binary event with predicted probability p and outcome y. The
    n = N*L probabilities are put into `n_bins` equal-width bins over [0, 1] (bin b holds
    b/n_bins <= p < (b+1)/n_bins; p = 1 goes into the last bin) and

        ECE = sum_b |B_b| / n * |mean(y in B_b) - mean(p in B_b)|

    i.e. the gap between how often a genre is present and how confident the model said it was,
    weighted by bin size. This is the label-wise ("positive class") ECE used for multi-label
    models, not the top-label-confidence ECE of single-label classification.
    """
    y_true, y_prob = check_inputs(y_true, y_prob, "expected_calibration_error")
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    p, y = y_prob.ravel(), y_true.ravel().astype(np.float64)
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)
    # |B|/n * |sum_y/|B| - sum_p/|B|| == |sum_y - sum_p| / n; empty bins contribute 0.
    return float(np.abs(sum_y - sum_p).sum() / p.size)


def compute_metrics(y_true, y_prob, threshold=0.5, label_names: Sequence[str] | None = None) -> dict[str, Any]:
    """All evaluation numbers for one model on one split, as a JSON-able dict (see module docstring).

    y_true: (N, L) multi-hot labels; y_prob: (N, L) probabilities; threshold: float or (L,) array.
    """
    y_true, y_prob = check_inputs(y_true, y_prob, "compute_metrics")
    n, n_labels = y_true.shape
    names = list(label_names) if label_names is not None else [f"label_{j}" for j in range(n_labels)]
    if len(names) != n_labels:
        raise ValueError(f"label_names has {len(names)} names but the labels have {n_labels} columns")
    threshold = check_threshold(threshold, n_labels)
    y_pred = binarize(y_prob, threshold)

    out: dict[str, Any] = {
        "n_samples": int(n),
        "n_labels": int(n_labels),
        "threshold": threshold.tolist() if isinstance(threshold, np.ndarray) else threshold,
        "hamming_accuracy": float(1.0 - hamming_loss(y_true, y_pred)),
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
    }
    for avg in AVERAGES:
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(p), float(r), float(f)

    # Ranking metrics (threshold-free). Per genre only where both classes occur in y_true.
    n_pos = y_true.sum(axis=0)
    scorable = (n_pos > 0) & (n_pos < n)
    roc = [float(roc_auc_score(y_true[:, j], y_prob[:, j])) if scorable[j] else None for j in range(n_labels)]
    ap = [float(average_precision_score(y_true[:, j], y_prob[:, j])) if scorable[j] else None for j in range(n_labels)]
    # Same as sklearn's average="macro" restricted to the scorable columns (an unweighted mean).
    out["roc_auc_macro"] = float(np.mean([v for v in roc if v is not None])) if scorable.any() else None
    out["map_macro"] = float(np.mean([v for v in ap if v is not None])) if scorable.any() else None
    # Micro pools every (movie, genre) cell, so it is defined as soon as both classes occur anywhere.
    pooled_ok = 0 < y_true.sum() < y_true.size
    out["roc_auc_micro"] = float(roc_auc_score(y_true, y_prob, average="micro")) if pooled_ok else None
    out["map_micro"] = float(average_precision_score(y_true, y_prob, average="micro")) if pooled_ok else None
    out["n_labels_scored"] = int(scorable.sum())
    out["labels_without_positives"] = [names[j] for j in range(n_labels) if n_pos[j] == 0]
    out["labels_without_negatives"] = [names[j] for j in range(n_labels) if n_pos[j] == n]
    out["ece"] = expected_calibration_error(y_true, y_prob)

    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    out["per_genre"] = {
        names[j]: {
            "precision": float(p[j]),
            "recall": float(r[j]),
            "f1": float(f[j]),
            "support": int(support[j]),
            "roc_auc": roc[j],
            "ap": ap[j],
        }
        for j in range(n_labels)
    }
    return out


def _pick(scores: np.ndarray, grid: np.ndarray = THRESHOLD_GRID) -> float:
    """Grid value with the best score; ties go to the threshold closest to 0.5 (then the lower one)."""
    best = scores.max()
    tied = grid[scores >= best - 1e-12]
    return float(tied[np.lexsort((tied, np.abs(tied - 0.5)))[0]])


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN) elementwise, 0 where the denominator is 0 (sklearn, zero_division=0)."""
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros(np.broadcast(tp, denom).shape), where=denom > 0)


def tune_thresholds(y_true, y_prob, mode: str, metric: str = "f1_macro") -> float | np.ndarray:
    """Choose decision thresholds. Call it with VALIDATION labels/probabilities only, then apply the
    result unchanged to the test split; the function sees nothing but what it is given.

    mode="fixed": 0.5 (the thesis's setting).
    mode="global": one threshold for all genres from THRESHOLD_GRID (0.05..0.95, step 0.01) that
        maximises `metric` ("f1_macro", the default because the thesis's headline gains are in
        macro-F1, or "f1_micro").
    mode="per_genre": for each genre the grid value maximising that genre's own F1 (which also
        maximises macro-F1, since macro-F1 is the mean of independent per-genre F1s). Genres with
        no positive in y_true keep 0.5: there is nothing to tune on.
    Ties always go to the threshold closest to 0.5, so flat regions do not drift to the grid's edge.
    Returns a float (fixed, global) or an (L,) float array (per_genre).
    """
    if mode not in TUNE_MODES:
        raise ValueError(f"unknown threshold mode {mode!r}; choose one of {TUNE_MODES}")
    if metric not in ("f1_macro", "f1_micro"):
        raise ValueError(f"unknown tuning metric {metric!r}; choose 'f1_macro' or 'f1_micro'")
    y_true, y_prob = check_inputs(y_true, y_prob, "tune_thresholds")
    if mode == "fixed":
        return 0.5

    # Per-genre confusion counts at every grid threshold at once: (T, L).
    pred = y_prob[None, :, :] >= THRESHOLD_GRID[:, None, None]
    pos = y_true[None, :, :].astype(bool)
    tp = (pred & pos).sum(axis=1)
    fp = (pred & ~pos).sum(axis=1)
    fn = (~pred & pos).sum(axis=1)

    if mode == "global":
        if metric == "f1_macro":
            scores = f1_from_counts(tp, fp, fn).mean(axis=1)
        else:
            scores = f1_from_counts(tp.sum(axis=1), fp.sum(axis=1), fn.sum(axis=1))
        return _pick(scores)

    f1 = f1_from_counts(tp, fp, fn)
    has_pos = y_true.sum(axis=0) > 0
    return np.array([_pick(f1[:, j]) if has_pos[j] else 0.5 for j in range(y_true.shape[1])])


_SHOWN = {"precision": "Precision", "recall": "Recall", "f1": "F1"}
DISPLAY_NAMES = {
    "hamming_accuracy": "Accuracy",
    "subset_accuracy": "Subset-Acc",
    **{f"{m}_{a}": f"{shown}-{a.capitalize()}" for m, shown in _SHOWN.items() for a in AVERAGES},
    "roc_auc_macro": "ROC-AUC-Macro",
    "roc_auc_micro": "ROC-AUC-Micro",
    "map_macro": "mAP-Macro",
    "map_micro": "mAP-Micro",
    "ece": "ECE",
}
THESIS_COLUMNS = ("hamming_accuracy", "f1_macro", "f1_micro", "f1_weighted", "f1_samples")


def cross_fitted_f1(y_true, y_prob, mode: str, seed: int = 0) -> dict[str, Any]:
    """Honest scores for a model whose thresholds are tuned on the same movies it is scored on (a selection
    benchmark scoring on validation): the movies are split in two random halves, thresholds are tuned on one half
    and applied to the other, both ways; macro-F1, micro-F1 and per-genre F1 ("per_genre_f1", (L,)) are the means
    of the two halves."""
    y_true, y_prob = check_inputs(y_true, y_prob, "cross_fitted_f1")
    half = np.random.default_rng(seed).permutation(len(y_true)) < len(y_true) // 2
    macro, micro, genres = [], [], []
    for tune, score in ((half, ~half), (~half, half)):
        m = compute_metrics(y_true[score], y_prob[score], tune_thresholds(y_true[tune], y_prob[tune], mode))
        macro.append(m["f1_macro"])
        micro.append(m["f1_micro"])
        genres.append([g["f1"] for g in m["per_genre"].values()])
    return {"f1_macro": float(np.mean(macro)), "f1_micro": float(np.mean(micro)),
            "per_genre_f1": np.mean(genres, axis=0)}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Mapping):  # aggregated over seeds by stats.mean_std
        return f"{value['mean']:.4f} ± {value['std']:.4f}"
    return f"{value:.4f}"


def format_table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str] = THESIS_COLUMNS) -> str:
    """Plain-text table in the layout of the thesis's Tables 6/7 (Model | Accuracy | F1-Macro | ...).

    rows: {model name: metrics dict from compute_metrics (or mean_std)}; a value that is a
    {"mean", "std"} dict prints as "mean ± std"; a missing / None value prints as "-".
    """
    header = ["Model", *(DISPLAY_NAMES.get(c, c) for c in columns)]
    body = [[str(name), *(_cell(m.get(c)) for c in columns)] for name, m in rows.items()]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:]))
        return " | ".join([first, *rest]).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in body)])


__all__ = [
    "THRESHOLD_GRID",
    "binarize",
    "check_inputs",
    "compute_metrics",
    "cross_fitted_f1",
    "expected_calibration_error",
    "f1_from_counts",
    "format_table",
    "tune_thresholds",
]
