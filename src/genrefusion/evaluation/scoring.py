"""Scoring a saved model on labelled movies, batched: what `genrefusion robustness` (and any command that scores a
model folder on a dataset) builds on.

    predictor = load_model("runs/gmu/model")
    ds = load_dataset(...)                       # an MM-IMDb folder or a catalog, with labels
    idx = split_indices(ds, "test")
    keep, why = scorable(predictor, ds, idx)     # movies the model can score, and why the others cannot
    inputs = cached_inputs(predictor, ds.subset(keep))   # clean features through the feature cache
    probs = probabilities(predictor, inputs)     # (N, G), columns in predictor.genres order
    y = labels(predictor, ds.subset(keep))

Clean features come from the feature cache (features.dataset_features with the model's own encoders at the
precision its training features were computed at: the cache is keyed by the same fingerprint, so what the run
cached is read back, and what is missing is encoded once and cached). Changed inputs (a corrupted plot or
poster) are encoded by `encode_items` through the Predictor's encoders, in batches. Either way the head then reads
exactly the batch training gave it (batching.modality_inputs).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..features.cache import dataset_features
from ..features.spec import FeatureSpec
from ..fusion.batching import modality_inputs
from ..data.loader import MovieDataset
from ..data.labels import GENRES
from ..data.modalities import spec
from ..inference.base import NonFiniteOutputError
from ..inference.predictor import Predictor

SPLIT_CHOICES = ("test", "dev", "train", "all")


@dataclass
class ModalityInputs:
    """One modality of N movies as a head reads it: pooled vectors, presence flags, sequences when it reads them."""

    pooled: torch.Tensor  # (N, D) float32, zeros where absent
    present: torch.Tensor  # (N,) bool
    sequences: list[torch.Tensor | None] | None = None
    encoded_now: int = 0  # how many of them were encoded now (cached_inputs: the rest came from the cache)

    def without(self, drop: np.ndarray) -> "ModalityInputs":
        """The same movies with the modality removed where `drop` is True (the head's learned stand-in there)."""
        keep = torch.as_tensor(~np.asarray(drop, dtype=bool))
        seqs = None if self.sequences is None else [s if k else None for s, k in zip(self.sequences, keep.tolist())]
        return ModalityInputs(self.pooled * keep[:, None], self.present & keep, seqs)


def split_indices(dataset: MovieDataset, split: str) -> list[int]:
    """The movies of one split (train, dev, test) or all of them, in dataset order."""
    if split == "all":
        return list(range(len(dataset.movies)))
    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_CHOICES)}, not {split!r}")
    idx = sorted(dataset.splits.get(split, []))
    if not idx:
        raise ValueError(f"{dataset.report.source}: the {split} split holds no movie")
    return idx


def missing_reason(predictor: Predictor, has: dict[str, bool]) -> str | None:
    """Why `predictor` cannot score a movie with these modalities (Predictor.check's rule), or None."""
    if not any(has[m] for m in predictor.modalities):
        return f"no {' or '.join(spec(m).display for m in predictor.modalities)}"
    for m in predictor.modalities:
        if not has[m] and not predictor.can_miss(m):
            return f"no {spec(m).display} (this model needs one)"
    return None


def scorable(predictor: Predictor, dataset: MovieDataset, indices: Sequence[int]) -> tuple[list[int], Counter]:
    """The movies of `indices` the model can score, and a count of the others by reason."""
    keep, why = [], Counter()
    for i in indices:
        movie = dataset.movies[i]
        reason = missing_reason(predictor, {m: spec(m).present(movie) for m in predictor.modalities})
        if reason is None:
            keep.append(i)
        else:
            why[reason] += 1
    return keep, why


def labels(predictor: Predictor, dataset: MovieDataset) -> np.ndarray:
    """(N, G) 0/1 labels with the columns in the model's genre order."""
    unknown = [g for g in predictor.genres if g not in GENRES]
    if unknown:
        raise ValueError(f"{predictor.directory}: the model predicts genres the data cannot label: {unknown}")
    return dataset.labels()[:, [GENRES.index(g) for g in predictor.genres]]


def encoder_key(predictor: Predictor, modality: str) -> tuple[str, str, bool]:
    """What identifies a modality's features: the encoder's fingerprint with its precision (model.json's
    fingerprint_sha256), and whether sequences are kept. Models sharing the key share the features."""
    return (modality, predictor.meta["encoders"][modality]["fingerprint_sha256"], predictor.sequences)


def model_features(predictor: Predictor, features: FeatureSpec | None = None) -> FeatureSpec:
    """`features` (default: FeatureSpec(progress=False)) with each of the model's encoders at the precision its
    training features were computed at, so the cache entries read are those training wrote."""
    features = FeatureSpec(progress=False) if features is None else features
    return features.replace(precisions={**features.precisions, **{
        predictor.encoders[m].name: predictor.precision[m] for m in predictor.modalities}})


def cached_inputs(predictor: Predictor, dataset: MovieDataset, features: FeatureSpec | None = None,
                  modalities: Sequence[str] | None = None) -> dict[str, ModalityInputs]:
    """The clean features of every movie of `dataset` for each modality the model reads (or those of
    `modalities`), through the feature cache (encoding and caching what it lacks), made as `features` says
    (default: FeatureSpec(progress=False)) at the model's own precisions (model_features)."""
    features = model_features(predictor, features)
    out = {}
    for m in modalities or predictor.modalities:
        table = dataset_features(dataset, predictor.encoders[m], features, sequences=predictor.sequences)
        out[m] = ModalityInputs(table.pooled, table.present, table.sequences, table.encoded_now)
    return out


def encode_items(predictor: Predictor, modality: str, n: int, item: Callable[[int], Any],
                 batch_size: int | None = None, order: Sequence[int] | None = None,
                 on_batch: Callable[[int], None] | None = None) -> ModalityInputs:
    """Movie i's raw item is `item(i)` (None: the movie lacks the modality), for i < n; encoded in batches of
    `batch_size` (the modality's CPU batch by default) taken in `order` (e.g. plots by length, so a batch pads
    little), loading each batch's items only when it is encoded. `on_batch(k)` is told how many were encoded."""
    dim = predictor.encoders[modality].dim
    pooled = torch.zeros(n, dim)
    present = torch.zeros(n, dtype=torch.bool)
    seqs: list | None = [None] * n if predictor.sequences else None
    order = list(range(n)) if order is None else list(order)
    size = batch_size or spec(modality).cpu_batch_size
    for start in range(0, n, size):
        chunk = order[start:start + size]
        got = [(i, x) for i in chunk if (x := item(i)) is not None]
        if got:
            with predictor.lock:
                vecs, got_seqs = predictor.encode(modality, [x for _, x in got])
            idx = torch.tensor([i for i, _ in got])
            pooled[idx] = vecs
            present[idx] = True
            if seqs is not None:
                for j, (i, _) in enumerate(got):
                    seqs[i] = got_seqs[j]
        if on_batch:
            on_batch(len(chunk))
    return ModalityInputs(pooled, present, seqs)


def probabilities(predictor: Predictor, inputs: dict[str, ModalityInputs], batch_size: int = 512) -> np.ndarray:
    """The model's probabilities (N, G) for movies given as features of each modality it reads;
    NonFiniteOutputError (its `rows`: of the N movies) where the model's outputs are not finite."""
    n = len(next(iter(inputs.values())).present)
    out = []
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        batch: dict[str, torch.Tensor] = {}
        for m in predictor.modalities:
            x = inputs[m]
            batch.update(modality_inputs(m, x.pooled[sl], x.present[sl],
                                         x.sequences[sl] if predictor.sequences else None))
        try:
            out.append(predictor.probabilities(batch))
        except NonFiniteOutputError as e:  # its rows are positions in this batch
            raise NonFiniteOutputError(str(e), [start + r for r in e.rows]) from None
    return np.concatenate(out) if out else np.zeros((0, len(predictor.genres)))
