"""Probes: how much genre signal an encoder's cached features carry, before any head is trained.

Two probes score the pooled vectors of the movies, each cross-validated (every movie is scored by a probe fitted on
the other folds only) and compared with chance:

* linear: per-genre logistic regression (one-vs-rest) on standardised features (scikit-learn's StandardScaler,
  LogisticRegression, OneVsRestClassifier); a genre's score is the decision value.
* kNN: a genre's score is the share of the movie's k nearest training movies (cosine distance) that have the genre
  (scikit-learn's KNeighborsRegressor over the multi-hot labels). Features whose vectors all point one way (a high
  mean pairwise cosine) leave this probe at chance even where a linear probe finds signal.

Both are scored by average precision per genre (scikit-learn's average_precision_score over the out-of-fold scores
of all probed movies), macro-averaged over the genres with at least `min_positives` positives (and one negative)
among them. Chance is the AP of a constant scorer, which is the genre's prevalence, macro-averaged over the same
genres. AP is a ranking metric: no threshold is tuned, so the probe has nothing to fit besides its own weights.

Folds are scikit-learn's KFold, shuffled with the seed (no multi-label stratification: scikit-learn has none).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import KFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..data.labels import GENRES
from ..data.modalities import MODALITIES, spec
from ..data.records import MovieDataset
from ..features.spec import FeatureSpec
from ..features.cache import dataset_features

FOLDS = 5
MIN_POSITIVES = 10  # a genre with fewer positives among the probed movies is not scored (its AP is noise)
C = 1.0  # inverse L2 strength of the linear probe (scikit-learn's default), one value for every encoder
K = 20  # neighbours of the kNN probe


def fold_ids(n: int, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """(n,) the fold of each of n items: scikit-learn's KFold, shuffled with `seed`."""
    if n < folds:
        raise ValueError(f"{n} movies cannot be cut into {folds} folds")
    out = np.empty(n, dtype=np.int64)
    for k, (_, held) in enumerate(KFold(folds, shuffle=True, random_state=seed).split(np.zeros(n))):
        out[held] = k
    return out


def _linear(c: float) -> Any:
    return make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=c, max_iter=2000)))


def out_of_fold(make: Callable[[], Any], x: np.ndarray, y: np.ndarray, fold_of: np.ndarray,
                score: Callable[[Any, np.ndarray], np.ndarray]) -> np.ndarray:
    """(N, L) scores, row i from a model `make()` fitted on the folds other than fold_of[i]."""
    out = np.zeros(y.shape, dtype=np.float64)
    for k in np.unique(fold_of):
        held = fold_of == k
        model = make().fit(x[~held], y[~held])
        out[held] = score(model, x[held])
    return out


def linear_scores(x: np.ndarray, y: np.ndarray, fold_of: np.ndarray, c: float = C) -> np.ndarray:
    """Out-of-fold decision values of the linear probe (see the module docstring)."""
    return out_of_fold(lambda: _linear(c), x, y, fold_of, lambda m, h: m.decision_function(h).reshape(len(h), -1))


def knn_scores(x: np.ndarray, y: np.ndarray, fold_of: np.ndarray, k: int = K) -> np.ndarray:
    """Out-of-fold kNN scores: the share of the k nearest (cosine) training movies that have each genre."""
    n_train = int(min((fold_of != f).sum() for f in np.unique(fold_of)))
    return out_of_fold(lambda: KNeighborsRegressor(n_neighbors=min(k, n_train), metric="cosine", algorithm="brute"),
                       x, y, fold_of, lambda m, h: m.predict(h).reshape(len(h), -1))


def scored_genres(y: np.ndarray, min_positives: int = MIN_POSITIVES) -> np.ndarray:
    """Indices of the genres with at least `min_positives` positives and at least one negative."""
    pos = y.sum(axis=0)
    return np.flatnonzero((pos >= min_positives) & (pos < len(y)))


def probe_features(x, y, *, folds: int = FOLDS, seed: int = 0, min_positives: int = MIN_POSITIVES, c: float = C,
                   k: int = K, genres: Sequence[str] = GENRES) -> dict[str, Any]:
    """Linear and kNN probe of features `x` (N, D) for multi-hot labels `y` (N, L); see the module docstring.

    Returns {"n", "dim", "folds", "seed", "c", "k", "min_positives", "genres" (the scored ones), "linear", "knn",
    "chance" (macro-AP over those genres), "per_genre": {genre: {"positives", "chance", "linear", "knn"}}}."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or y.shape[1] != len(genres):
        raise ValueError(f"features {x.shape} and labels {y.shape} do not fit {len(genres)} genres")
    if not np.isfinite(x).all():
        raise ValueError("features hold NaN or inf")
    cols = scored_genres(y, min_positives)
    if not len(cols):
        raise ValueError(f"no genre has {min_positives} positives among the {len(y)} movies: nothing to score")
    y = y[:, cols].astype(np.int64)
    fold_of = fold_ids(len(x), folds, seed)
    scores = {"linear": linear_scores(x, y, fold_of, c), "knn": knn_scores(x, y, fold_of, k)}
    per_genre = {}
    for j, g in enumerate(genres[c_] for c_ in cols):
        per_genre[g] = {"positives": int(y[:, j].sum()), "chance": float(y[:, j].mean()),
                        **{name: float(average_precision_score(y[:, j], s[:, j])) for name, s in scores.items()}}
    macro = {name: float(np.mean([p[name] for p in per_genre.values()])) for name in ("linear", "knn", "chance")}
    return {"n": int(len(x)), "dim": int(x.shape[1]), "folds": folds, "seed": seed, "c": c, "k": k,
            "min_positives": min_positives, "genres": list(per_genre), **macro, "per_genre": per_genre}


def probe_movies(dataset: MovieDataset, modalities: Sequence[str] = MODALITIES, limit: int | None = None,
                 seed: int = 0) -> list[int]:
    """Indices of the labelled movies of `dataset` that have every modality in `modalities`, in dataset order; with
    `limit`, a random `limit` of them drawn with `seed`."""
    idx = [i for i, m in enumerate(dataset.movies) if m.genres and all(spec(x).present(m) for x in modalities)]
    if limit is not None and limit < len(idx):
        idx = sorted(np.random.default_rng(seed).choice(idx, size=limit, replace=False).tolist())
    return idx


def probe_encoder(dataset: MovieDataset, name: str, movies: Sequence[int] | None = None, *,
                  features: FeatureSpec | None = None, encoder_kwargs: dict[str, Any] | None = None,
                  **probe_kw) -> dict[str, Any]:
    """probe_features of encoder `name`'s pooled features (through the feature cache: encoded once) over `movies`
    (indices into dataset; default: every labelled movie with the encoder's modality), plus "encoder", "modality",
    "encoder_kwargs", "precision" and "seconds_features" (time to get the features). An encoder whose package is
    not installed raises what building it raises (ImportError, PackageNotFoundError, OfflineWeightsError)."""
    import time

    features = FeatureSpec() if features is None else features
    encoder = features.create_encoder(name, **(encoder_kwargs or {}))
    movies = probe_movies(dataset, (encoder.modality,)) if movies is None else list(movies)
    missing = [i for i in movies if not spec(encoder.modality).present(dataset.movies[i])]
    if missing:
        raise ValueError(f"{len(missing)} of the movies to probe lack {spec(encoder.modality).article}")
    t = time.perf_counter()
    table = dataset_features(dataset.subset(movies), encoder, features)
    seconds = time.perf_counter() - t
    out = probe_features(table.pooled.numpy(), dataset.labels(movies), **probe_kw)
    return {"encoder": name, "modality": encoder.modality, "encoder_kwargs": dict(encoder_kwargs or {}),
            "precision": table.precision, **out, "seconds_features": seconds}


def format_probe_table(results: Sequence[dict[str, Any]]) -> str:
    """Plain-text table: encoder, modality, dim, n movies, linear macro-AP, kNN macro-AP, chance."""
    header = ["encoder", "modality", "dim", "n movies", "linear macro-AP", "kNN macro-AP", "chance"]
    body = [[r["encoder"], r["modality"], str(r["dim"]), str(r["n"]), f"{r['linear']:.4f}", f"{r['knn']:.4f}",
             f"{r['chance']:.4f}"] for r in results]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in [header, *body]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


__all__ = ["fold_ids", "format_probe_table", "knn_scores", "linear_scores", "probe_encoder", "probe_features",
           "probe_movies", "scored_genres"]
