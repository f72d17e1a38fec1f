"""`genrefusion evaluate`: score a saved model on labelled movies (an MM-IMDb folder or a catalog).

    genrefusion evaluate --model runs/gmu/model --data my_movies.csv --score-split all --bootstrap 2000 --json out.json

Every metric of metrics.compute_metrics at the model's own thresholds and at 0.5, the per-genre table, and
percentile bootstrap 95% intervals for macro- and micro-F1 (stats.py). `--compare DIR2` scores a second model on the
same movies and adds a paired bootstrap of the difference (B - A), the computation `genrefusion compare` runs on two
run folders' saved test predictions, so on a run's own test split the two agree.

The movies are encoded in batches through the feature cache (features.dataset_features) with the Predictor's own
encoders, each already checked against the fingerprint model.json records and run at the precision the model was
trained at, so a movie whose features are cached is not encoded again and the rest are cached for next time. The
head runs over them with train.predict, the function that produced the run's saved predictions.

Which movies: the model's own split (its config's split mode and seed, so `--score-split test` on its training data is
its test split) and its own modality filter unless `--modalities` says otherwise. A movie the model cannot score
(a plot-only movie for an image model, a movie without a poster for a fusion model trained only on movies with
both) is counted and named in the result, never silently dropped. Labels are required: a catalog without a
`genres` column is refused by the catalog reader with a message naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.labels import GENRES
from ..data.loader import DataError, DataSpec
from ..data.modalities import spec
from ..data.summary import skipped_record
from ..inference.base import NonFiniteOutputError
from ..inference.predictor import Predictor
from .runs import MODEL_DIR

if TYPE_CHECKING:  # a type only: the CLI parser imports this module, and features.spec imports torch
    from ..features.spec import FeatureSpec

SPLITS = ("test", "dev", "train", "all")
SPLIT_NAMES = {"test": "test", "dev": "validation", "train": "train", "all": "all"}
MAX_NAMED = 50  # unscorable movies named in the result (all are counted)


def model_folder(path: str | Path) -> Path:
    """A model folder, or a run folder holding one in model/."""
    from ..inference.checkpoint import META_FILE  # lazy: keeps evaluation.evaluate free of safetensors, torch

    path = Path(path)
    inner = path / MODEL_DIR
    return inner if not (path / META_FILE).exists() and (inner / META_FILE).exists() else path


def load_labelled(data: str | Path, split: str, cfg: dict[str, Any], modalities: str | None = None,
                  split_mode: str | None = None):
    """(dataset, indices of the movies in `split`). The split mode, its seed, the plot mode and the modality filter
    default to the model's training config (so `test` is the test split it was scored on); `all` takes every
    movie and needs no split at all."""

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    trained = cfg.get("modalities", "any")
    modalities = modalities or trained
    split_mode = split_mode or cfg.get("split", "official")
    if split != "all" and split_mode == "stratified" and modalities != trained:
        # the stratified split is drawn over the movies kept, so another filter draws another split: its "test"
        # would hold movies this model was trained on
        raise ValueError(f"--modalities {modalities}: the model was trained with modalities={trained} on a "
                         "stratified split, which another filter would redraw (its test split would hold training "
                         f"movies); use --modalities {trained}, or --score-split all on data it was not trained on")
    spec = DataSpec(data, split_mode, modalities, split_seed=cfg.get("split_seed", 1234),
                    plot_mode=cfg.get("plot_mode", "join"))
    try:
        ds = spec.load()
    except DataError as e:
        if split != "all" or "no official split" not in str(e):
            raise
        ds = spec.replace(split="stratified").load()  # any split will do: every movie is taken
    if split == "all":
        return ds, sorted(i for idx in ds.splits.values() for i in idx)
    return ds, list(ds.splits.get(split, []))


def unscorable_reason(predictor, movie) -> str | None:
    """Why `predictor` cannot score `movie` (None when it can): scoring.missing_reason on the movie's fields."""
    from .scoring import missing_reason  # lazy: keeps evaluation.evaluate free of safetensors, torch

    return missing_reason(predictor, {m: spec(m).present(movie) for m in predictor.modalities})


def model_probabilities(predictor, dataset, features: FeatureSpec | None = None):
    """(N, G) probabilities of every movie of `dataset` (all scorable) and, per modality, how many were encoded
    now (the rest came from the cache): scoring's batched path, through the feature cache (made as `features`
    says, default FeatureSpec(progress=False))."""
    from .scoring import cached_inputs, probabilities  # lazy: keeps evaluation.evaluate free of safetensors, torch

    inputs = cached_inputs(predictor, dataset, features)
    return probabilities(predictor, inputs), {m: x.encoded_now for m, x in inputs.items()}


def _scores(y: np.ndarray, probs: np.ndarray, thresholds, genres, n_boot: int, seed: int) -> dict[str, Any]:
    from .metrics import compute_metrics  # lazy: keeps evaluation.evaluate free of scipy, sklearn
    from .stats import bootstrap_interval  # lazy: keeps evaluation.evaluate free of scipy, sklearn

    out = {"metrics": compute_metrics(y, probs, thresholds, genres),
           "metrics_at_0.5": compute_metrics(y, probs, 0.5, genres)}
    if n_boot > 0:
        out["bootstrap"] = {k: bootstrap_interval(y, probs, thresholds, k, n_boot=n_boot, seed=seed)
                            for k in ("f1_macro", "f1_micro")}
    return out


def evaluate(model: str | Path, data: str | Path, split: str = "test", modalities: str | None = None,
             n_boot: int = 1000, seed: int = 0, compare_with: str | Path | None = None,
             features: FeatureSpec | None = None, split_mode: str | None = None) -> dict[str, Any]:
    """Score a saved model (and optionally a second one, paired) on the labelled movies of `data`; see the module
    docstring. `features`: where the feature cache is and whether progress shows (default:
    FeatureSpec(progress=False)). Returns a JSON-able dict."""
    from ..features.spec import FeatureSpec  # here: it imports torch, and the CLI parser imports this module
    from .stats import paired_bootstrap  # lazy: keeps evaluation.evaluate free of scipy, sklearn

    if n_boot < 0:
        raise ValueError(f"--bootstrap must be >= 0, got {n_boot}")
    features = FeatureSpec(progress=False) if features is None else features
    predictors = [Predictor(model_folder(model), cache_root=features.cache_root)]
    if compare_with is not None:
        predictors.append(Predictor(model_folder(compare_with), cache_root=features.cache_root))
    for p in predictors:
        if tuple(p.genres) != tuple(GENRES):
            raise ValueError(f"{p.directory}: its genres are not the 23 MM-IMDb genres the data is labelled with")
    cfg = predictors[0].meta.get("config", {})
    dataset, indices = load_labelled(data, split, cfg, modalities, split_mode)
    if not indices:
        raise ValueError(f"{data}: no labelled movie in the {SPLIT_NAMES[split]} split")
    unscorable = []
    for i in indices:
        reasons = [r for p in predictors if (r := unscorable_reason(p, dataset.movies[i])) is not None]
        if reasons:
            unscorable.append({"id": dataset.movies[i].id, "reason": reasons[0]})
    skip = {u["id"] for u in unscorable}
    scored = [i for i in indices if dataset.movies[i].id not in skip]
    if not scored:
        raise ValueError(f"{data}: none of the {len(indices):,} movies of the {SPLIT_NAMES[split]} split can be "
                         f"scored by this model ({unscorable[0]['id']} {unscorable[0]['reason']})")
    movies = dataset.subset(scored)
    # subset keeps the dataset's order, which is the split's order for the official and stratified splits alike
    order = {m.id: k for k, m in enumerate(movies.movies)}
    rows = [order[dataset.movies[i].id] for i in scored]
    y = movies.labels()[rows].astype(np.float64)
    result: dict[str, Any] = {
        "model": str(predictors[0].directory), "data": str(data), "split": split,
        "split_mode": dataset.split_mode, "modalities": modalities or cfg.get("modalities", "any"),
        "data_fingerprint": dataset.fingerprint(), "n_movies": len(indices), "n_scored": len(scored),
        "unscorable": {"n": len(unscorable), "movies": unscorable[:MAX_NAMED]},
        "data_skipped": skipped_record(dataset), "ids": [m.id for m in (movies.movies[r] for r in rows)],
    }
    probs = []
    for k, p in enumerate(predictors):
        try:
            pr, encoded = model_probabilities(p, movies, features)
        except NonFiniteOutputError as e:
            named = ", ".join(movies.movies[r].id for r in e.rows[:5]) + (" ..." if len(e.rows) > 5 else "")
            raise NonFiniteOutputError(
                f"{p.directory}: the model's outputs are not finite numbers (NaN or inf) for {len(e.rows):,} of the "
                f"{len(movies.movies):,} movies ({named}): its weights overflow on them, so it cannot be scored "
                "(retrain it)", e.rows) from None
        probs.append(pr[rows])
        entry = {"model": str(p.directory), "thresholds": p.thresholds.tolist(), "encoded_now": encoded,
                 **_scores(y, probs[-1], p.thresholds, list(GENRES), n_boot, seed)}
        if k == 0:
            result.update(entry)
        else:
            result["compare"] = {"b": entry}
    if compare_with is not None:
        thr = [p.thresholds for p in predictors]
        result["compare"]["paired"] = {
            k: paired_bootstrap(y, probs[0], probs[1], metric=k, threshold_a=thr[0], threshold_b=thr[1],
                                n_boot=max(n_boot, 1), seed=seed) for k in ("f1_macro", "f1_micro")}
    return result


def format_evaluation(r: dict[str, Any]) -> str:
    from .metrics import DISPLAY_NAMES  # lazy: keeps evaluation.evaluate free of scipy, sklearn

    m, m05 = r["metrics"], r["metrics_at_0.5"]
    lines = [f"model: {r['model']}", f"data:  {r['data']}  ({SPLIT_NAMES[r['split']]} split, {r['split_mode']}, "
             f"modalities={r['modalities']}): {r['n_scored']:,} of {r['n_movies']:,} movies scored"]
    if r["unscorable"]["n"]:
        shown = r["unscorable"]["movies"][:5]
        lines.append(f"not scored: {r['unscorable']['n']:,} movie(s): " + "; ".join(f"{u['id']} {u['reason']}"
                                                                                   for u in shown)
                     + (" ..." if r["unscorable"]["n"] > len(shown) else ""))
    lines += ["", f"{'metric':<20} {'at its thresholds':>18} {'at 0.5':>8}"]
    for key, shown_name in DISPLAY_NAMES.items():
        a, b = m.get(key), m05.get(key)
        lines.append(f"{shown_name:<20} {'-' if a is None else f'{a:.4f}':>18} {'-' if b is None else f'{b:.4f}':>8}")
    for key, ci in r.get("bootstrap", {}).items():
        lines.append(f"{DISPLAY_NAMES[key]} {ci['estimate']:.4f}, bootstrap {ci['ci']:.0%} CI "
                     f"[{ci['ci_low']:.4f}, {ci['ci_high']:.4f}] ({ci['n_boot']} resamples)")
    lines += ["", f"{'genre':<12} {'movies':>6} {'threshold':>9} {'P':>6} {'R':>6} {'F1':>6} {'AP':>6}"]
    for (genre, g), t in zip(m["per_genre"].items(), r["thresholds"]):
        ap = "-" if g["ap"] is None else f"{g['ap']:.3f}"
        lines.append(f"{genre:<12} {g['support']:>6,} {t:>9.2f} {g['precision']:>6.3f} {g['recall']:>6.3f} "
                     f"{g['f1']:>6.3f} {ap:>6}")
    if "compare" in r:
        b = r["compare"]["b"]
        lines += ["", f"B: {b['model']}", f"same {r['n_scored']:,} movies, paired bootstrap, B - A:"]
        for key, d in r["compare"]["paired"].items():
            verdict = "B better" if d["ci_low"] > 0 else "A better" if d["ci_high"] < 0 else "no clear difference"
            lines.append(f"  {key:<9} A {d['score_a']:.4f}  B {d['score_b']:.4f}  diff {d['diff']:+.4f}  "
                         f"95% CI [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]  ({verdict})")
    return "\n".join(lines)
