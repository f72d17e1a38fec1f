"""Scores of saved models under each corruption at each level: the numbers behind the robustness curves.

Every model is scored on the same movies (those of the split that every model can score; the others are counted
by reason). Clean features come from the feature cache (scoring.cached_inputs); under a corruption of one
modality, the corrupted items are encoded by the models' own encoders, once per encoder (models that share an
encoder, like every fusion row of a grid, share the encoded items) and the other modality stays clean. A model
that does not read the corrupted modality keeps its clean inputs: its curve is flat, and says so (`reads`).
Removing a modality hands the head its learned stand-in for it, as for a movie without it; a model reading only
that modality cannot score such movies, which is stated instead of a number, and a fusion trained without ever
seeing the modality missing (modalities=both, no modality dropout) is flagged, its stand-in never learned.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...data.loader import DataSpec
from ...data.modalities import spec
from ...data.summary import data_summary, format_data_line
from ...features.spec import FeatureSpec
from ...inference.predictor import Predictor, load_model
from .. import runs, scoring
from .corruptions import CORRUPTIONS, DEFAULT_LEVELS, Corruption, check_level, get_corruption, movie_rng

SCORES = ("f1_macro", "f1_micro", "map_macro")  # of metrics.compute_metrics, at each model's own thresholds


@dataclass
class Model:
    label: str
    directory: Path
    predictor: Predictor

    @property
    def kind(self) -> str:
        return "unimodal" if len(self.predictor.modalities) == 1 else "fusion"

    def reads(self, modality: str) -> bool:
        return modality in self.predictor.modalities


def _run_label(directory: Path, predictor: Predictor) -> str:
    """The grid's row label when the model folder sits in a run folder that has one, else fusion [encoders]."""
    try:
        metrics = runs.read_metrics(directory.parent)
    except (runs.RunFileMissing, runs.RunFolderError):
        metrics = {}
    if isinstance(metrics.get("row_label"), str):
        return metrics["row_label"]
    names = [Path(predictor.meta["encoders"][m]["name"]).name for m in predictor.modalities]
    return f"{predictor.fusion} [{' + '.join(names)}]"


def load_models(directories: Sequence[str | Path], cache_root: Path | None = None) -> list[Model]:
    """The saved models, each labelled for the charts; their offline weights built under `cache_root`."""
    if not directories:
        raise ValueError("no model given (--model DIR)")
    models: list[Model] = []
    for d in directories:
        p = load_model(d, cache_root=cache_root)
        label = base = _run_label(Path(d), p)
        if any(m.label == label for m in models):
            label = base = f"{base} seed {p.meta['config'].get('seed', '?')}"
        k = 2
        while any(m.label == label for m in models):
            label, k = f"{base} #{k}", k + 1
        models.append(Model(label, Path(d), p))
    return models


def data_settings(models: list[Model], split_mode: str | None = None) -> dict[str, Any]:
    """How to read the data so that each model's test split is the one it was tested on: the split mode, its seed
    and the plot mode the models were trained with (they must agree), unless `split_mode` is given."""
    keys = ("split", "split_seed", "plot_mode")
    seen = {m.label: {k: m.predictor.meta["config"].get(k) for k in keys} for m in models}
    first = next(iter(seen.values()))
    for label, got in seen.items():
        if got != first:
            a, b = next(iter(seen)), label
            raise ValueError(f"the models were trained on different splits ({a}: {first}; {b}: {got}), so no "
                             "split is a test split of both; pass --split-mode to score them on one anyway")
    out = {"split": split_mode or first["split"] or "official", "split_seed": first["split_seed"] or 1234,
           "plot_mode": first["plot_mode"] or "join"}
    return out


def parse_levels(text: str | Sequence[float] | None) -> tuple[float, ...]:
    """Levels in [0, 1], sorted, each once, 0 (the clean reference) always included."""
    if text is None:
        return DEFAULT_LEVELS
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        levels = {check_level(float(x)) for x in items if str(x).strip()}
    except ValueError as e:
        raise ValueError(f"levels {text!r}: {e}" if "level" in str(e) else f"levels {text!r}: not numbers") from None
    return tuple(sorted(levels | {0.0}))


def parse_corruptions(text: str | Sequence[str] | None) -> tuple[Corruption, ...]:
    if text is None:
        return tuple(CORRUPTIONS.values())
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise ValueError("no corruption named")
    return tuple(get_corruption(n) for n in dict.fromkeys(names))


def relative_robustness(levels: Sequence[float], values: Sequence[float | None]) -> float | None:
    """MultiBench's relative robustness: the area under the score-vs-level curve, divided by the levels' span (so
    it reads as a mean score over the levels); None when a level has no score."""
    if len(levels) < 2 or any(v is None for v in values):
        return None
    x, y = np.asarray(levels, dtype=float), np.asarray(values, dtype=float)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2 / (x[-1] - x[0]))


def _scores(model: Model, y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    from ..metrics import compute_metrics  # lazy: keeps evaluation.robustness.measure free of scipy, sklearn

    m = compute_metrics(y, probs, model.predictor.thresholds, model.predictor.genres)
    return {k: m[k] for k in SCORES}


class Study:
    """The movies, their labels and clean features for a set of models; `score` runs one corruption."""

    def __init__(self, models: list[Model], dataset, indices: list[int], seed: int = 0,
                 features: FeatureSpec | None = None, use_cache: bool = True, batch_size: int | None = None,
                 progress: Callable[[int], None] | None = None):
        self.models, self.seed, self.batch_size, self.progress = models, seed, batch_size, progress
        self.data = dataset.subset(indices)
        self.movies = self.data.movies
        self.y = {m.label: scoring.labels(m.predictor, self.data) for m in models}
        self.clean: dict[tuple, scoring.ModalityInputs] = {}
        for model in models:
            for mod in model.predictor.modalities:
                key = scoring.encoder_key(model.predictor, mod)
                if key in self.clean:
                    continue
                if use_cache:
                    self.clean[key] = scoring.cached_inputs(model.predictor, self.data, features,
                                                            modalities=(mod,))[mod]
                else:
                    self.clean[key] = self._encode(model.predictor, mod, lambda i, mod=mod: self._raw(mod, i))

    def _raw(self, modality: str, i: int):
        movie = self.movies[i]
        return spec(modality).load_raw(movie) if spec(modality).present(movie) else None

    def _encode(self, predictor: Predictor, modality: str, item: Callable[[int], Any]) -> scoring.ModalityInputs:
        n = len(self.movies)
        order = sorted(range(n), key=lambda i: len(self.movies[i].plot or "")) if modality == "text" else None
        return scoring.encode_items(predictor, modality, n, item, self.batch_size, order, self.progress)

    def inputs(self, model: Model) -> dict[str, scoring.ModalityInputs]:
        return {m: self.clean[scoring.encoder_key(model.predictor, m)] for m in model.predictor.modalities}

    def score(self, model: Model, inputs: dict[str, scoring.ModalityInputs]) -> dict[str, float]:
        return _scores(model, self.y[model.label], scoring.probabilities(model.predictor, inputs))

    def clean_scores(self) -> dict[str, dict[str, float]]:
        return {m.label: self.score(m, self.inputs(m)) for m in self.models}

    def measured_clean(self, c: Corruption) -> dict[str, float]:
        """What `corrupted` measures, on the clean inputs (level 0)."""
        if c.removes:
            return {"removed": 0.0}
        plots = [m.plot for m in self.movies if m.plot is not None]
        return {"mean_words": float(np.mean([len(p.split()) for p in plots]))} if c.modality == "text" and plots else {}

    def corrupted(self, c: Corruption, level: float) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """Each model's scores under `c` at `level` (level > 0), and what the corrupted inputs measured."""
        rngs = lambda i: movie_rng(self.seed, c.name, self.movies[i].id)  # noqa: E731  (fresh per level: nested)
        out: dict[str, dict[str, Any]] = {}
        measured: dict[str, Any] = {}
        if c.removes:
            has = np.array([spec(c.modality).present(m) for m in self.movies])
            drop = np.array([c.apply(True, level, rngs(i)) is None for i in range(len(self.movies))]) & has
            # of the movies that had the modality (those without it have nothing to remove)
            measured["removed"] = float(drop.sum() / has.sum()) if has.any() else 0.0
            for model in self.models:
                if not model.reads(c.modality):
                    continue
                if model.kind == "unimodal" and drop.any():
                    out[model.label] = {"why": f"a {spec(c.modality).display}-only model cannot score a movie "
                                               f"without its {spec(c.modality).display}"}
                    continue
                inputs = self.inputs(model)
                inputs[c.modality] = inputs[c.modality].without(drop)
                out[model.label] = self.score(model, inputs)
            return out, measured
        words: list[int] = []

        def item(i: int):
            raw = self._raw(c.modality, i)
            if raw is None:
                return None
            got = c.apply(raw, level, rngs(i))
            if c.modality == "text":
                words.append(len(got.split()))
            return got

        done: dict[tuple, scoring.ModalityInputs] = {}
        for model in self.models:
            if not model.reads(c.modality):
                continue
            key = scoring.encoder_key(model.predictor, c.modality)
            if key not in done:
                words.clear()
                done[key] = self._encode(model.predictor, c.modality, item)
                if words:
                    measured["mean_words"] = float(np.mean(words))
            out[model.label] = self.score(model, {**self.inputs(model), c.modality: done[key]})
        return out, measured


def measure(model_dirs: Sequence[str | Path], data: str | Path, split: str = "test", modalities: str = "both",
            corruptions: str | Sequence[str] | None = None, levels: str | Sequence[float] | None = None,
            seed: int = 0, limit: int | None = None, split_mode: str | None = None,
            features: FeatureSpec | None = None, use_cache: bool = True, batch_size: int | None = None,
            log: Callable[[str], None] | None = print, progress: bool = True) -> dict[str, Any]:
    """Score every model clean and under each corruption at each level; the JSON-able result page.py draws.
    `features`: how the clean inputs' features are made through the cache (default: FeatureSpec(progress=False));
    `progress`: a bar over the corrupted inputs encoded."""
    t0 = time.perf_counter()
    chosen, levels = parse_corruptions(corruptions), parse_levels(levels)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be a positive number of movies, not {limit}")
    features = FeatureSpec(progress=False) if features is None else features
    models = load_models(model_dirs, features.cache_root)
    settings = data_settings(models, split_mode)
    # The whole dataset when every movie is scored: any split reads it, a stratified one even without a split.
    dataset = DataSpec(data, "stratified" if split == "all" else settings["split"], modalities,
                       split_seed=settings["split_seed"], plot_mode=settings["plot_mode"]).load()
    if log:
        log(format_data_line(data_summary(dataset), modalities))
    idx = scoring.split_indices(dataset, split)
    excluded: Counter = Counter()
    for model in models:
        idx, why = scoring.scorable(model.predictor, dataset, idx)
        excluded.update({f"{model.label}: {r}": n for r, n in why.items()})
    if not idx:
        raise ValueError(f"no movie of the {split} split can be scored by every model ({dict(excluded)})")
    if limit is not None and limit < len(idx):  # a seeded sample, kept in dataset order
        idx = sorted(np.random.default_rng(seed).choice(idx, size=limit, replace=False).tolist())
    steps = [(c, s) for c in chosen for s in levels if s > 0]
    n_enc = sum(len({scoring.encoder_key(m.predictor, c.modality) for m in models if m.reads(c.modality)})
                for c, _ in steps if not c.removes)
    bar = _progress_bar(progress, n_enc * len(idx))
    study = Study(models, dataset, idx, seed, features, use_cache, batch_size, bar.update if bar else None)
    if log:
        log(f"{len(idx):,} {split} movies scored by {len(models)} model(s)"
            + (f"; left out: {', '.join(f'{k} ({n})' for k, n in excluded.items())}" if excluded else ""))
    clean = study.clean_scores()
    result: dict[str, Any] = {
        "seed": seed, "levels": list(levels), "split": split, "modalities": modalities,
        "data": {"source": str(data), "fingerprint": study.data.fingerprint(), "n_movies": len(idx),
                 "limit": limit, "excluded": dict(excluded), **settings},
        "models": [_describe(m) for m in models],
        "clean": clean, "corruptions": {},
    }
    for c in chosen:
        per_model: dict[str, list[dict[str, Any]]] = {m.label: [{"level": 0.0, **clean[m.label]}] for m in models}
        level_info = [{"level": 0.0, "meaning": c.describe(0.0), **study.measured_clean(c)}]
        for s in (s for s in levels if s > 0):
            scores, measured = study.corrupted(c, s)
            level_info.append({"level": s, "meaning": c.describe(s), **measured})
            for m in models:
                per_model[m.label].append({"level": s, **scores.get(m.label, clean[m.label])})
        reads = {m.label: m.reads(c.modality) for m in models}
        result["corruptions"][c.name] = {
            "modality": c.modality, "title": c.title, "levels": level_info, "reads": reads, "scores": per_model,
            "relative_robustness": {k: relative_robustness(levels, [p.get("f1_macro") for p in v])
                                    for k, v in per_model.items()},
        }
        if log:
            worst = {k: v[-1].get("f1_macro") for k, v in per_model.items() if reads[k]}
            log(f"{c.name:<15} macro-F1 at level {levels[-1]:g}: "
                + ", ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in worst.items()))
    if bar:
        bar.close()
    result["seconds"] = time.perf_counter() - t0
    return result


def _progress_bar(show: bool, total: int):
    if not show or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="corrupted inputs encoded", unit="item")


def _describe(m: Model) -> dict[str, Any]:
    p = m.predictor
    return {"label": m.label, "kind": m.kind, "model_dir": str(m.directory), "fusion": p.fusion,
            "modalities": list(p.modalities), "encoders": {x: p.meta["encoders"][x]["name"] for x in p.modalities},
            "threshold_mode": p.meta["config"].get("threshold_mode", "fixed"),
            "stand_in_learned": {x: p.can_miss(x) for x in p.modalities if len(p.modalities) > 1}}
