"""Repeated cross-validation: each row's score as a mean with an honest interval, and the paired fusion-minus-text
difference, over every labelled movie that has a plot and a poster.

A single test split of a few hundred movies cannot tell a 0.02 macro-F1 gain from noise. Here each repeat r cuts the
movies into K folds (scikit-learn's KFold, shuffled with seed + r; the same folds for every row, so rows are paired
fold by fold). For each fold, each row's head is trained by run_experiment on the other folds: a random
`val_fraction` of those training folds is its validation split (early stopping, and the thresholds: tuned on it, or
with threshold_source=oof on out-of-fold predictions over the training folds), and the held-out fold is its test
split. So the scored fold enters neither training, nor early stopping, nor a threshold.

Every fold is a run folder (runs.py) holding the scored fold's predictions; the scores in crossval.json are
recomputed from those saved predictions, so each can be reproduced from its folder alone. Intervals are the
corrected resampled t-intervals of stats.cv_interval (fold scores share training movies; a plain t-interval over
them would be too narrow).

Layout: out/<row>/repeat-<r>/fold-<k>/ (a run folder), out/config.yaml, out/tables.txt, out/crossval.json (last).
"""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import atomic
from ..config import Config
from ..data.loader import load_dataset
from ..data.records import MovieDataset
from ..distributed import resolve_device
from ..evaluation import runs
from ..evaluation.metrics import compute_metrics, cross_fitted_f1
from ..evaluation.probe import fold_ids
from ..evaluation.stats import cv_interval
from ..features.spec import FeatureSpec
from ..evaluation.thesis import FUSION_IMAGE_SLOT, FUSION_TEXT_SLOT, ROWS
from . import workers
from .grid import AUTO, GridSpec, check_fuse, resolve_slots
from .experiment import (check_encoders, encoder_kwargs, encoder_name, load_features, model_modalities,
                         reads_sequences, run_experiment)

METRICS = ("f1_macro", "f1_micro", "map_macro", "hamming_accuracy")  # what each fold reports, and the summary
DEFAULT_ROWS = ("BERT", "ResNet50", "GMU")  # a text row, an image row and a fusion of the two


@dataclass(frozen=True)
class CVRow:
    """One model under cross-validation: a name, a registered model and the encoders of the modalities it reads."""

    name: str
    model: str
    text_encoder: str | None = None
    image_encoder: str | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        return model_modalities(self.model)

    @property
    def kind(self) -> str:
        """'fusion' for a model that reads both modalities, else the modality it reads ('text', 'image')."""
        return "fusion" if len(self.modalities) > 1 else self.modalities[0]

    def config(self, base: Config) -> Config:
        changes: dict[str, Any] = {"model": self.model, "name": None}
        for m in self.modalities:
            name = getattr(self, f"{m}_encoder")
            if not name:
                raise ValueError(f"row {self.name!r}: model {self.model!r} reads {m}, and the row names no {m} encoder")
            changes[f"{m}_encoder"] = name
        return base.replace(**changes)

    def label(self) -> str:
        return f"{self.name} [{' + '.join(getattr(self, f'{m}_encoder') for m in self.modalities)}]"


def thesis_rows(names: Sequence[str], slots: dict[str, str],
                fuse: tuple[str, str] = (FUSION_TEXT_SLOT, FUSION_IMAGE_SLOT)) -> list[CVRow]:
    """CVRows for the thesis grid's rows named (row or model names, evaluation/thesis.py), their slots filled from
    `slots` (slot -> encoder name, e.g. grid.resolve_slots()); the fusion rows fuse the slots `fuse` (a slot may join
    slots of one modality with '+', whose encoders are then joined the same way)."""
    def encoder(slot: str | None) -> str | None:
        return None if slot is None else "+".join(slots[p] for p in slot.split("+"))

    fuse = check_fuse(fuse)
    chosen = [r for r in ROWS if r.name in names or r.model in names]
    unknown = sorted(set(names) - {r.name for r in chosen} - {r.model for r in chosen})
    if unknown or not chosen:
        raise ValueError(f"no thesis rows {unknown or list(names)}; rows: {[r.name for r in ROWS]}")
    out = []
    for r in chosen:
        text, image = (fuse[0], fuse[1]) if r.kind == "fusion" else (r.text_slot, r.image_slot)
        out.append(CVRow(r.name, r.model, encoder(text), encoder(image)))
    return out


def parse_cv(text: str) -> tuple[int, int]:
    """'K' or 'KxR' (e.g. '5x5') -> (folds K, repeats R)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", str(text))
    folds, repeats = (int(m.group(1)), int(m.group(2) or 1)) if m else (0, 0)
    if folds < 2 or repeats < 1:
        raise ValueError(f"cross-validation {text!r}: expected K or KxR with K >= 2 folds and R >= 1 repeats "
                         "(e.g. 5x5)")
    return folds, repeats


def cv_movies(dataset: MovieDataset) -> list[int]:
    """The movies cross-validation runs over: every labelled movie with a plot and a poster."""
    return [i for i, m in enumerate(dataset.movies) if m.genres and m.plot is not None and m.poster is not None]


def load_cv_dataset(data: str | Path, strict: bool = False, plot_mode: str = "join", limit: int | None = None,
                    seed: int = 0) -> MovieDataset:
    """The data's movies with a plot and a poster (its own split is not used: the folds replace it); with `limit`,
    a random `limit` of its labelled ones (drawn with `seed`), for a quick run."""
    dataset = load_dataset(data, "stratified", "both", strict, plot_mode)
    movies = cv_movies(dataset)
    if limit is not None and limit < len(movies):
        dataset = dataset.subset(np.random.default_rng(seed).choice(movies, size=limit, replace=False).tolist())
    return dataset


def plan_folds(movies: Sequence[int], folds: int, repeats: int, seed: int = 0,
               val_fraction: float = 0.15) -> list[dict[str, Any]]:
    """For every repeat r and fold k: {"repeat", "fold", "train", "val", "test"}, indices into the dataset. test is
    fold k of repeat r (KFold shuffled with seed + r); val a random `val_fraction` of the other folds (drawn with
    seed, r, k) and train the rest of them."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    movies = np.asarray(movies)
    plan = []
    for r in range(repeats):
        fold_of = fold_ids(len(movies), folds, seed + r)
        for k in range(folds):
            outer = movies[fold_of != k]
            shuffled = np.random.default_rng([seed, r, k]).permutation(outer)
            n_val = max(1, int(round(val_fraction * len(outer))))
            plan.append({"repeat": r, "fold": k, "train": sorted(shuffled[n_val:].tolist()),
                         "val": sorted(shuffled[:n_val].tolist()), "test": sorted(movies[fold_of == k].tolist())})
    return plan


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _fold_task(job: tuple, task: tuple) -> dict[str, Any]:
    """One row on one fold, in this process or a worker (workers.py): run_experiment with the fold's splits."""
    dataset, tables = job
    cfg, keys, splits, run_dir, extra = task
    fold = dataclasses.replace(dataset, splits=splits)  # MovieDataset checks that no movie is in two splits
    m = run_experiment(cfg, dataset=fold, features={mod: tables[key] for mod, key in keys.items()},
                       run_dir=run_dir, log=None, extra=extra)
    return {"f1_macro": m["test"]["f1_macro"], "f1_micro": m["test"]["f1_micro"], "best_epoch": m["best_epoch"]}


def fold_scores(run_dir: str | Path) -> dict[str, Any]:
    """A fold's scores, recomputed from its saved predictions: METRICS on the scored fold (at the saved thresholds),
    and the validation macro-F1 with thresholds cross-fitted within validation (metrics.cross_fitted_f1, as the grid
    chooses rows), for choosing among rows without the scored fold."""
    test, val = runs.read_predictions(run_dir, "test"), runs.read_predictions(run_dir, "val")
    m = compute_metrics(test.labels, test.probs, test.thresholds, test.genres)
    mode = runs.metric(runs.read_metrics(run_dir), "threshold_mode", run_dir)
    return {**{k: m[k] for k in METRICS}, "val_f1_macro": cross_fitted_f1(val.labels, val.probs, mode)["f1_macro"]}


def paired_differences(rows: list[dict[str, Any]], ratio: float, ci: float = 0.95) -> list[dict[str, Any]]:
    """The paired differences: every fusion row minus every text row, fold by fold (the same folds), per metric
    {"mean", "std", "ci_low", "ci_high", "n", "ci", "wins" (folds where the fusion scored higher)}."""
    out = []
    for f in (r for r in rows if r["kind"] == "fusion"):
        for t in (r for r in rows if r["kind"] == "text"):
            diff = {}
            for k in METRICS:
                d = np.array([a[k] - b[k] for a, b in zip(f["folds"], t["folds"])])
                diff[k] = {**cv_interval(d, ratio, ci), "wins": int((d > 0).sum())}
            out.append({"row": f["row"], "minus": t["row"], **diff})
    return out


def _encode_rows(rows: Sequence[CVRow], cfgs: list[Config], dataset: MovieDataset,
                 log: Callable[[str], None] | None) -> tuple[dict[tuple, Any], list[dict[str, tuple]]]:
    """The rows' cached feature tables, one per (modality, encoder, its options, sequences) and shared by the rows
    that read it, and each row's keys into them."""
    tables: dict[tuple, Any] = {}  # one table per (modality, encoder, its options, sequences), shared by the rows
    row_keys = []
    for r, cfg in zip(rows, cfgs):
        keys = {}
        for m in r.modalities:
            key = (m, encoder_name(cfg, m), tuple(sorted(encoder_kwargs(cfg, m).items())), reads_sequences(cfg))
            if key not in tables:
                tables[key] = load_features(cfg, dataset, (m,), FeatureSpec.from_config(cfg, progress=log is not None),
                                            sequences=key[3])[0][m]
                if log:
                    log(f"features {m:<5} <- {key[1]}: {tables[key].dim}-d, {tables[key].encoded_now:,} newly encoded")
            keys[m] = key
        row_keys.append(keys)
    return tables, row_keys


def _row_results(rows: Sequence[CVRow], tasks: list[tuple], plan: list[dict[str, Any]], out: Path, ratio: float,
                 ci: float) -> list[dict[str, Any]]:
    """Each row's fold scores (read back from the folds' saved predictions) and their summary intervals."""
    results = []
    for i, r in enumerate(rows):
        fold_rows = []
        for task, p in zip(tasks[i * len(plan):(i + 1) * len(plan)], plan):
            run_dir = task[3]
            fold_rows.append({"repeat": p["repeat"], "fold": p["fold"], "dir": run_dir.relative_to(out).as_posix(),
                              "n_train": len(p["train"]), "n_val": len(p["val"]), "n_test": len(p["test"]),
                              **fold_scores(run_dir)})
        summary = {k: cv_interval([f[k] for f in fold_rows], ratio, ci) for k in METRICS}
        summary["val_f1_macro"] = {"mean": float(np.mean([f["val_f1_macro"] for f in fold_rows]))}
        results.append({"row": r.name, "label": r.label(), "kind": r.kind, "model": r.model,
                        "encoders": {m: getattr(r, f"{m}_encoder") for m in r.modalities}, "folds": fold_rows,
                        "summary": summary})
    return results


def run_crossval(dataset: MovieDataset, rows: Sequence[CVRow], base: Config, out: str | Path, *, folds: int = 5,
                 repeats: int = 5, seed: int = 0, val_fraction: float = 0.15, ci: float = 0.95,
                 log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Cross-validate `rows` (see the module docstring) with the training recipe `base` (its model and encoders are
    the rows'; base.seed + r seeds repeat r's heads). Writes `out` and returns what crossval.json holds: "rows" (each
    with its "folds" scores and its "summary": cv_interval per metric), "differences" (paired_differences), "n_movies", the
    plan's parameters, the data's fingerprint and timings."""
    t0 = time.perf_counter()
    if base.mode != "features":
        raise ValueError("cross-validation trains heads over cached features: it needs mode=features")
    base = base.replace(modalities="both")  # what the movies are (cv_movies), as each fold's config records it
    if len({r.name for r in rows}) != len(rows) or not rows:
        raise ValueError(f"rows need distinct names, got {[r.name for r in rows]}")
    cfgs = [r.config(base) for r in rows]
    for r, cfg in zip(rows, cfgs):  # an encoder that cannot do what a row asks fails before any work
        check_encoders(cfg, r.modalities, reads_sequences(cfg))
    movies = cv_movies(dataset)
    plan = plan_folds(movies, folds, repeats, seed, val_fraction)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    tables, row_keys = _encode_rows(rows, cfgs, dataset, log)
    features_s = time.perf_counter() - t

    tasks, where = [], []
    for i, (r, cfg) in enumerate(zip(rows, cfgs)):
        for p in plan:
            run_dir = out / _slug(r.name) / f"repeat-{p['repeat']}" / f"fold-{p['fold']}"
            extra = {"crossval": {"row": r.name, "repeat": p["repeat"], "fold": p["fold"], "folds": folds,
                                  "repeats": repeats, "seed": seed, "val_fraction": val_fraction}}
            splits = {"train": p["train"], "dev": p["val"], "test": p["test"]}
            tasks.append((cfg.replace(seed=base.seed + p["repeat"]), row_keys[i], splits, run_dir, extra))
            where.append((r, p))

    def line(i: int, m: dict[str, Any]) -> None:
        r, p = where[i]
        if log:
            log(f"{r.label():<44} repeat {p['repeat']} fold {p['fold']}: F1 macro {m['f1_macro']:.4f}  "
                f"micro {m['f1_micro']:.4f}  (best epoch {m['best_epoch']})")

    n_workers = 1 if base.uses_fold_heads() else workers.plan(base.fold_workers, len(tasks), resolve_device(base.device))
    t = time.perf_counter()
    workers.run(_fold_task, (dataset, tables), tasks, n_workers, each=line)
    train_s = time.perf_counter() - t

    ratio = float(np.mean([len(p["test"]) / (len(p["train"]) + len(p["val"])) for p in plan]))
    results = _row_results(rows, tasks, plan, out, ratio, ci)
    result = {"data": base.data, "data_fingerprint": dataset.fingerprint(), "n_movies": len(movies), "folds": folds,
              "repeats": repeats, "seed": seed, "val_fraction": val_fraction, "ci": ci, "test_train_ratio": ratio,
              "threshold_mode": base.threshold_mode,
              "threshold_source": base.threshold_source if base.uses_fold_heads() else "val",
              "rows": results, "differences": paired_differences(results, ratio, ci), "config": base.to_dict(),
              "timings": {"features_s": features_s, "train_eval_s": train_s, "total_s": time.perf_counter() - t0}}
    tables_txt = format_crossval(result)
    runs.write_crossval(out, base, result, tables_txt)
    if log:
        log("")
        log(tables_txt)
        log(f"\nresults: {out}")
    return result


def run_grid_crossval(spec: GridSpec, folds: int, repeats: int, *, seed: int = 0, val_fraction: float = 0.15,
                      limit: int | None = None, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """The grid's rows cross-validated (`genrefusion grid --cv KxR`) instead of trained once on its split: the rows,
    the encoder slots, the fused pair, the preset, the overrides and the cache of `spec`, over every labelled movie
    of spec.data with a plot and a poster (its split, modalities and split_seed are not used: the folds replace
    them). `seed`, `val_fraction` as run_crossval's; `limit`: a random `limit` of the movies (load_cv_dataset).
    Writes spec.out (default <config out>/crossval-<preset>-<time>) and returns what its crossval.json holds."""
    if spec.seeds != 1:
        raise ValueError(f"seeds={spec.seeds}: cross-validation seeds each repeat's heads itself (seed + repeat)")
    if spec.track:
        raise ValueError("cross-validation is not tracked: leave track unset")
    if tuple(spec.fuse) == (AUTO,):
        raise ValueError("fuse=auto chooses the fused slots on one split's validation: name the slots to fuse")
    slots = resolve_slots(spec.encoders, list(spec.slot_overrides))
    rows = thesis_rows(list(spec.rows) if spec.rows else [r.name for r in ROWS], slots, tuple(spec.fuse))
    base = spec.base_config()
    out = Path(spec.out) if spec.out else Path(base.out) / f"crossval-{spec.preset}-{datetime.now():%Y%m%d-%H%M%S}"
    with atomic.exclusive(out, "cross-validation"):  # before any work: an unwritable or busy folder stops here
        dataset = load_cv_dataset(spec.data.path, spec.data.strict, spec.data.plot_mode, limit, seed)
        if log:
            log(f"cross-validation {folds} folds x {repeats} repeats of {[r.label() for r in rows]} over "
                f"{len(cv_movies(dataset)):,} movies -> {out}")
        return run_crossval(dataset, rows, base, out, folds=folds, repeats=repeats, seed=seed,
                            val_fraction=val_fraction, log=log)


def _cell(s: dict[str, float], signed: bool = False) -> str:
    fmt = "{:+.4f}" if signed else "{:.4f}"
    return f"{fmt.format(s['mean'])} [{fmt.format(s['ci_low'])}, {fmt.format(s['ci_high'])}]"


def format_crossval(result: dict[str, Any]) -> str:
    """The cross-validation tables: each row's mean [95% interval] over folds x repeats, then the paired
    differences."""
    j, shown = result["folds"] * result["repeats"], ("f1_macro", "f1_micro", "map_macro")
    head = (f"Cross-validation: {result['repeats']} x {result['folds']}-fold over {result['n_movies']:,} movies "
            f"(a plot and a poster each), mean [{result['ci']:.0%} interval] over the {j} held-out folds; thresholds "
            f"tuned inside the training folds ({result['threshold_mode']}, {result['threshold_source']})")
    names = ["row", "F1-Macro", "F1-Micro", "mAP-Macro", "val F1-Macro"]
    body = [[r["label"], *(_cell(r["summary"][k]) for k in shown), f"{r['summary']['val_f1_macro']['mean']:.4f}"]
            for r in result["rows"]]
    diff_names = ["fusion - text (paired by fold)", *names[1:4]]
    diffs = [[f"{d['row']} - {d['minus']}",
              *(f"{_cell(d[k], True)} wins {d[k]['wins']}/{d[k]['n']}" for k in shown)] for d in result["differences"]]
    parts = [head, _table(names, body)]
    if diffs:
        parts.append(_table(diff_names, diffs))
    return "\n\n".join(parts)


def _table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in [header, *body]]
    return "\n".join([lines[0], "-+-".join("-" * w for w in widths), *lines[1:]])


__all__ = ["CVRow", "DEFAULT_ROWS", "cv_movies", "format_crossval", "fold_scores", "load_cv_dataset",
           "paired_differences", "parse_cv", "plan_folds", "run_crossval", "run_grid_crossval", "thesis_rows"]
