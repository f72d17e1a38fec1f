"""Knowledge distillation: a light student head learns a heavy teacher's genre probabilities.

    genrefusion distill --teacher runs/grid/late --text-encoder minilm-l6 --image-encoder efficientnet-lite0 \\
        --unlabelled ../shared/data/mmimdb-sample --seeds 5

The teacher (teacher.py: a run, a grid row whose seeds are ensembled, or a model folder) predicts every training
movie and every unlabelled movie from its own encoders' cached features. The student, a head over the student's
(cheaper) encoders, is trained by the one training loop (train.fit, through experiment.run_experiment) on

    loss = alpha * hard_loss(z, labels) + (1 - alpha) * T^2 * BCE(sigmoid(z / T), sigmoid(z_teacher / T))

for labelled training movies, and the soft term alone for unlabelled ones (a plot alone is still a teacher signal:
a movie without a poster counts). `hard_loss` is the config's loss (ASL in the recommended preset); T^2 keeps the
soft term's gradient comparable across temperatures (Hinton et al., 2015). Validation (early stopping, thresholds)
and test are the labelled dev and test splits, scored against the true labels and never distilled on: unlabelled
movies that are dev or test movies, by id or by the content hash of their plot or poster, are dropped and counted,
as are those already in the training split, listed twice, or that the teacher cannot predict.

The student starts from the teacher's own config (recipe, data, split, fusion), with the student's encoders and
any key=value override (e.g. model=gmu). The result is an ordinary run folder (runs.write_run; seed-<n>/ runs for
several seeds), loadable by load_model and servable, whose model.json and metrics.json name the teacher under
"teacher" (path, kind, fingerprint, members, its own recorded test metrics and its metrics on the student's test
split); metrics.json also keeps "distillation" (alpha, temperature, unlabelled counts, agreement with the teacher).
"""
from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..config import Config, apply_overrides, parse_override
from ..data.loader import DataError, DataSpec, Movie, MovieDataset, load_catalog, load_mmimdb
from ..data.modalities import spec
from ..data.records import id_key
from ..data.summary import data_summary, format_data_line

DEFAULT_ALPHA = 0.5
DEFAULT_TEMPERATURE = 1.0
_CLIP = 1e-6  # teacher probabilities are clipped to [1e-6, 1 - 1e-6] before their logit is taken


# -- the loss ---------------------------------------------------------------------------------------------------
def pack_targets(labels: np.ndarray, teacher_probs: np.ndarray, hard_weight: np.ndarray,
                 soft_weight: np.ndarray):
    """One row per movie, what DistillLoss reads: [labels (G) | teacher logits (G) | hard weight | soft weight]."""
    import torch

    p = np.clip(np.asarray(teacher_probs, dtype=np.float64), _CLIP, 1 - _CLIP)
    logits = np.log(p) - np.log1p(-p)
    return torch.as_tensor(np.concatenate([labels, logits, np.asarray(hard_weight, dtype=np.float64)[:, None],
                                           np.asarray(soft_weight, dtype=np.float64)[:, None]], axis=1),
                           dtype=torch.float32)


def distill_loss(hard_loss, num_labels: int, temperature: float):
    """The loss of the module docstring over pack_targets rows; a row's weights say which terms it has."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class DistillLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.hard, self.num_labels, self.temperature = hard_loss, num_labels, float(temperature)

        def forward(self, logits: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
            g, t = self.num_labels, self.temperature
            labels, teacher, w_hard, w_soft = packed[:, :g], packed[:, g:2 * g], packed[:, 2 * g], packed[:, 2 * g + 1]
            total = logits.new_zeros(())
            # The configured loss averages over its rows, so rows are grouped by weight (a few distinct values).
            for w in torch.unique(w_hard[w_hard > 0]).tolist():
                rows = w_hard == w
                total = total + w * self.hard(logits[rows], labels[rows]) * rows.sum()
            soft = w_soft > 0
            if bool(soft.any()):
                target = torch.sigmoid(teacher[soft] / t)
                per_row = F.binary_cross_entropy_with_logits(logits[soft] / t, target, reduction="none").mean(1)
                total = total + t * t * (w_soft[soft] * per_row).sum()
            return total / len(logits)

    return DistillLoss()


def agreement(student: np.ndarray, teacher: np.ndarray, student_thr, teacher_thr) -> dict[str, float]:
    """How close a student's probabilities are to its teacher's on the same movies: the cross-entropy against the
    teacher's probabilities (BCE, the soft loss at T=1), the mean absolute difference, and the share of
    (movie, genre) decisions, each at its own thresholds, that agree."""
    from ..evaluation.metrics import binarize  # lazy: keeps training.distill free of scipy, sklearn

    s = np.clip(np.asarray(student, dtype=np.float64), _CLIP, 1 - _CLIP)
    t = np.asarray(teacher, dtype=np.float64)
    bce = -(t * np.log(s) + (1 - t) * np.log1p(-s)).mean()
    same = binarize(student, student_thr) == binarize(teacher, teacher_thr)
    return {"bce_to_teacher": float(bce), "mean_abs_diff": float(np.abs(s - t).mean()),
            "decision_agreement": float(same.mean())}


# -- unlabelled movies ------------------------------------------------------------------------------------------
def _read_source(path: Path, strict: bool, plot_mode: str) -> MovieDataset:
    if not path.exists():
        raise DataError(f"{path}: unlabelled data does not exist (expected an MM-IMDb folder or a .csv/.tsv/.jsonl "
                        "catalog)")
    if path.is_dir():
        return load_mmimdb(path, strict, plot_mode, require_labels=False)
    return load_catalog(path, strict, plot_mode, require_labels=False)


def _keys(movie: Movie) -> set[str]:
    return {k for k in (movie.text_key, movie.poster_sha256) if k is not None}


def unlabelled_movies(paths: Sequence[str | Path], labelled: MovieDataset,
                      reading: DataSpec | None = None) -> tuple[list[Movie], dict[str, Any]]:
    """The movies of `paths` (MM-IMDb folders or catalogs; labels and splits ignored), read as the labelled data
    (`reading`, its DataSpec: strict and plot_mode; default: not strict, plots joined), that may be distilled on:
    none of the labelled dataset's movies (a dev or test movie would leak into validation or test, a training
    movie would count twice), each compared by id (case-insensitively) and by the content hash of its plot and
    poster, and each movie once. Returns the movies and what was read, dropped (by reason) and kept."""
    by_split = {s: [labelled.movies[i] for i in idx] for s, idx in labelled.splits.items()}
    order = ("test", "dev", "train")  # a movie matching several is counted under the most serious
    ids = {s: {id_key(m.id) for m in by_split.get(s, [])} for s in order}
    keys = {s: set().union(*(_keys(m) for m in by_split.get(s, []))) for s in order}
    dropped: Counter = Counter()
    sources, kept, seen_ids, seen_keys = [], [], set(), set()
    strict, plot_mode = (reading.strict, reading.plot_mode) if reading is not None else (False, "join")
    for path in map(Path, paths):
        ds = _read_source(path, strict, plot_mode)
        skipped = dict(ds.report.skipped_by_kind())
        sources.append({"path": str(path), "read": len(ds.movies), "skipped_by_reader": skipped})
        for movie in ds.movies:
            mid, mkeys = id_key(movie.id), _keys(movie)
            reason = next((f"{s}_id" for s in order if mid in ids[s]), None) or \
                next((f"{s}_content" for s in order if mkeys & keys[s]), None)
            if reason is None and (mid in seen_ids or mkeys & seen_keys):
                reason = "duplicate"
            if reason is not None:
                dropped[reason] += 1
                continue
            seen_ids.add(mid)
            seen_keys |= mkeys
            kept.append(dataclasses.replace(movie, genres=()))  # its labels are not used: it is unlabelled here
    return kept, {"sources": sources, "read": sum(s["read"] for s in sources), "dropped": dict(dropped),
                  "kept": len(kept)}


# -- the command ------------------------------------------------------------------------------------------------
def student_config(teacher_config: dict[str, Any], text_encoder: str, image_encoder: str,
                   overrides: Sequence[str] | dict[str, Any] = (), data: str | None = None):
    """The teacher's config (its recipe, data and split) with the student's encoders and data, then the
    overrides."""
    fields = {f.name for f in dataclasses.fields(Config)}
    base = apply_overrides(Config(), {k: v for k, v in teacher_config.items() if k in fields}, "the teacher's config")
    # threshold_source=val: out-of-fold heads would learn the labels, not the teacher (experiment.run_experiment)
    base = dataclasses.replace(base, text_encoder=text_encoder, image_encoder=image_encoder, name=None,
                               mode="features", finetune=False, seed=0, threshold_source="val")
    if data is not None:
        base = dataclasses.replace(base, data=str(data))
    if not isinstance(overrides, dict):
        overrides = dict(parse_override(o) for o in overrides)
    cfg = apply_overrides(base, overrides, "overrides").validate()
    if cfg.mode != "features":
        raise ValueError("distill trains a head over cached features; mode=end-to-end is not supported")
    if cfg.uses_fold_heads():
        raise ValueError("distill: threshold_source=oof would tune the student's thresholds on fold heads trained on "
                         "the labels, not on its teacher; use threshold_source=val")
    if not cfg.data:
        raise ValueError("no data: the teacher's config names none; pass --data PATH")
    return cfg


def _labelled_data(tch, cfg, log) -> MovieDataset:
    """The labelled dataset of the student's config; it must be the data the teacher was trained and tested on
    (its runs' data fingerprint), else the student's test movies could be ones the teacher trained on and the two
    test scores would not be comparable."""
    ds = DataSpec.from_config(cfg).load()
    log(format_data_line(data_summary(ds), cfg.modalities))
    recorded = tch.data_fingerprints()
    if recorded and recorded != {ds.fingerprint()}:
        raise ValueError(f"{tch.path}: the teacher was trained on other data than {cfg.data} with split={cfg.split} "
                         f"modalities={cfg.modalities} (its data fingerprint differs), so the student's test movies "
                         "may be ones the teacher trained on; distil on the teacher's data (omit --data and the "
                         "data keys)")
    if not recorded:
        log(f"teacher: {tch.path} records no data fingerprint (a bare model folder): make sure it never trained on "
            f"{cfg.data}'s validation or test movies")
    return ds


def _teacher_scores(tch, cfg, labels: np.ndarray, probs: np.ndarray, splits: dict[str, list[int]]) -> dict:
    """The teacher's thresholds and test metrics on the student's splits: a single model's own thresholds; an
    ensemble's tuned, in its runs' threshold mode, on its mean VALIDATION probabilities (as compare --ensemble)."""
    # lazy: keeps training.distill free of scipy, sklearn
    from ..evaluation.metrics import compute_metrics, tune_thresholds
    from .teacher import RECORD_METRICS  # lazy: keeps training.distill free of safetensors, torch

    if len(tch.members) == 1:
        thr = np.asarray(tch.members[0].meta["thresholds"], dtype=np.float64)
        how = "the model's own"
    else:
        mode = tch.config.get("threshold_mode", cfg.threshold_mode)
        thr = np.asarray(tune_thresholds(labels[splits["dev"]], probs[splits["dev"]], mode))
        how = f"tuned ({mode}) on the ensemble's validation probabilities"
    test = compute_metrics(labels[splits["test"]], probs[splits["test"]], thr)
    return {"thresholds": thr, "how": how, "test": {k: test[k] for k in RECORD_METRICS if k in test}}


@dataclass
class _Lesson:
    """What the students learn from (run_distill): every movie (the labelled ones, then the unlabelled), the
    labelled splits, the targets packed for DistillLoss (pack_targets), the unlabelled rows used, the teacher's
    probabilities and thresholds, and what the students' metrics.json records (`record`, `distillation`)."""

    movies: MovieDataset
    splits: dict[str, list[int]]
    labels: np.ndarray
    y: Any  # torch.Tensor, pack_targets' rows
    used: list[int]
    teacher_probs: np.ndarray
    teacher_thresholds: np.ndarray
    record: dict[str, Any]
    distillation: dict[str, Any]

    def evaluate(self, test_rows, test_probs, thresholds) -> dict[str, Any]:
        """Targets.evaluate: the student's agreement with the teacher on its test movies."""
        return {"distillation": {**self.distillation, "test_vs_teacher": agreement(
            test_probs, self.teacher_probs[test_rows], thresholds, self.teacher_thresholds)}}


def run_distill(teacher: str | Path, text_encoder: str = "minilm-l6", image_encoder: str = "efficientnet-lite0",
                unlabelled: Sequence[str | Path] = (), data: str | None = None, alpha: float = DEFAULT_ALPHA,
                temperature: float = DEFAULT_TEMPERATURE, overrides: Sequence[str] | dict[str, Any] = (),
                seeds: int = 1, out: str | Path | None = None, cache_dir: str | None = None,
                log: Callable[[str], None] | None = print, progress: bool = True) -> dict[str, Any]:
    """Distil `teacher` into a student (see the module docstring). `data` and `cache_dir` set the student
    config's keys of the same name (before `overrides`). `out` is the student's run folder (one seed) or holds
    its seed-<n>/ run folders. Returns a summary: the teacher's record and each seed's run and metrics."""
    from ..features.spec import FeatureSpec  # here: it imports torch
    from .experiment import load_features, model_modalities  # here: the CLI parser imports this module
    from .teacher import load_teacher  # here: it imports torch

    log = log or (lambda _: None)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: the weight of the true labels must be in [0, 1]")
    if not (temperature > 0 and np.isfinite(temperature)):
        raise ValueError(f"temperature={temperature}: must be a positive number")
    if seeds < 1:
        raise ValueError(f"seeds={seeds}: must be at least 1")
    t0 = time.perf_counter()
    tch = load_teacher(teacher)
    overrides = overrides if isinstance(overrides, dict) else dict(parse_override(o) for o in overrides)
    cfg = student_config(tch.config, text_encoder, image_encoder,
                         {**({"cache_dir": str(cache_dir)} if cache_dir is not None else {}), **overrides}, data)
    features = FeatureSpec.from_config(cfg, progress=progress)  # how every feature here is made
    lesson = _lesson(tch, cfg, unlabelled, alpha, temperature, features, log)
    feats, features_s = load_features(cfg, lesson.movies, model_modalities(cfg.model), features)
    out = Path(out) if out else Path(cfg.out) / f"distill-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    results = [_train_student(cfg.replace(seed=cfg.seed + s), lesson, feats, temperature,
                              out if seeds == 1 else out / f"seed-{cfg.seed + s}", log) for s in range(seeds)]
    summary = {"out": str(out), "teacher": lesson.record, "distillation": lesson.distillation,
               "config": cfg.to_dict(), "runs": results,
               "timings": {"teacher_s": lesson.distillation["teacher_s"], "features_s": features_s,
                           "total_s": time.perf_counter() - t0}}
    log(format_summary(summary))
    return summary


def _lesson(tch, cfg, unlabelled: Sequence[str | Path], alpha: float, temperature: float, features,
            log: Callable[[str], None]) -> _Lesson:
    """The movies, the teacher's probabilities for every one the student trains on or is scored on (dev / test:
    its own scores), and the targets: for labelled training movies alpha of the labels' loss and 1 - alpha of the
    soft loss (the labels alone where the teacher cannot predict), the soft loss alone for unlabelled ones."""
    labelled = _labelled_data(tch, cfg, log)
    extras, unl = unlabelled_movies(unlabelled, labelled, DataSpec.from_config(cfg))
    everything = MovieDataset(labelled.movies + extras, labelled.splits, labelled.report, labelled.root,
                              labelled.split_mode)
    splits = {s: list(labelled.splits.get(s, [])) for s in ("train", "dev", "test")}
    extra_rows = list(range(len(labelled.movies), len(everything.movies)))
    log(f"teacher: {tch.kind} {tch.path} ({tch.fusion} over {' + '.join(tch.encoders.values())}"
        + (f", {len(tch.members)} seeds ensembled" if len(tch.members) > 1 else "") + ")")
    t = time.perf_counter()
    rows = splits["train"] + extra_rows + splits["dev"] + splits["test"]
    probs, can = tch.probabilities(everything, rows, features)
    teacher_probs = np.zeros((len(everything.movies), probs.shape[1]), dtype=np.float32)
    teacher_ok = np.zeros(len(everything.movies), dtype=bool)
    teacher_probs[rows], teacher_ok[rows] = probs, can
    teacher_s = time.perf_counter() - t
    used = _usable_unlabelled(cfg, everything, extra_rows, teacher_ok, unl)
    if unlabelled:
        log(format_unlabelled(unl))
    labels = everything.labels()
    train = np.asarray(splits["train"], dtype=np.int64)
    hard, soft = np.zeros(len(labels)), np.zeros(len(labels))
    hard[train] = np.where(teacher_ok[train], alpha, 1.0)  # where the teacher cannot predict, the labels alone
    soft[train] = np.where(teacher_ok[train], 1.0 - alpha, 0.0)
    soft[used] = 1.0
    hard[splits["dev"]] = 1.0  # the validation loss (early stopping) is the true labels' loss, no teacher in it
    scores = _teacher_scores(tch, cfg, labels, teacher_probs, splits)
    record = {**tch.record(), "test_on_student_split": scores["test"], "thresholds_on_student_split": scores["how"]}
    distillation = {"alpha": alpha, "temperature": temperature, "unlabelled": unl,
                    "soft_targets": {"labelled": int((soft[train] > 0).sum()), "unlabelled": len(used)},
                    "teacher_s": teacher_s}
    log(f"teacher test F1 macro {scores['test']['f1_macro']:.4f}  micro {scores['test']['f1_micro']:.4f} (thresholds: "
        f"{scores['how']}); soft targets for {int((soft > 0).sum()):,} movies ({len(used):,} unlabelled)")
    return _Lesson(everything, splits, labels, pack_targets(labels, teacher_probs, hard, soft), used, teacher_probs,
                   scores["thresholds"], record, distillation)


def _usable_unlabelled(cfg, everything: MovieDataset, extra_rows: list[int], teacher_ok: np.ndarray,
                       unl: dict[str, Any]) -> list[int]:
    """The unlabelled rows the student can read (a modality its model reads) and the teacher can predict; the
    others are counted in unl["dropped"] by reason, and the rest in unl["used"]."""
    from .experiment import model_modalities  # here: the CLI parser imports this module

    modalities = model_modalities(cfg.model)
    readable = {r: any(spec(m).present(everything.movies[r]) for m in modalities) for r in extra_rows}
    used = [r for r in extra_rows if readable[r] and teacher_ok[r]]
    for reason, n in (("teacher_cannot_predict", sum(readable[r] and not teacher_ok[r] for r in extra_rows)),
                      ("student_cannot_read", sum(not readable[r] for r in extra_rows))):
        if n:
            unl["dropped"][reason] = int(n)
    unl["used"] = len(used)
    return used


def _train_student(cfg, lesson: _Lesson, feats, temperature: float, run_dir: Path,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """One student (one seed) trained by run_experiment on the lesson's targets; its summary entry."""
    import torch  # here: the CLI parser imports this module

    from .experiment import Targets, build_loss, run_experiment  # here: the CLI parser imports this module

    train = np.asarray(lesson.splits["train"], dtype=np.int64)
    loss = distill_loss(build_loss(cfg, torch.as_tensor(lesson.labels[train])), lesson.labels.shape[1], temperature)
    m = run_experiment(cfg, lesson.movies, feats, run_dir, log=None, extra={"teacher": lesson.record},
                       targets=Targets(lesson.y, loss, lesson.used, lesson.evaluate),
                       model_extra={"teacher": lesson.record})
    vs = m["distillation"]["test_vs_teacher"]
    log(f"student seed {cfg.seed}: test F1 macro {m['test']['f1_macro']:.4f}  micro "
        f"{m['test']['f1_micro']:.4f}  decisions agreeing with the teacher {vs['decision_agreement']:.1%}  "
        f"-> {run_dir}")
    return {"run": str(run_dir), "seed": cfg.seed, "test": m["test"], "val": m["val"], "test_vs_teacher": vs}


def format_unlabelled(unl: dict[str, Any]) -> str:
    dropped = ", ".join(f"{n:,} {k.replace('_', ' ')}" for k, n in sorted(unl["dropped"].items()))
    skipped = sum(sum(s["skipped_by_reader"].values()) for s in unl["sources"])
    return (f"unlabelled: {unl['read']:,} movies read from {len(unl['sources'])} source(s)"
            + (f" ({skipped:,} skipped by the reader)" if skipped else "") + f"; {unl.get('used', unl['kept']):,} used"
            + (f"; dropped: {dropped}" if dropped else ""))


def format_summary(summary: dict[str, Any]) -> str:
    from ..evaluation.stats import seed_summary  # lazy: keeps training.distill free of scipy, sklearn

    def show(v) -> str:
        return f"{v['mean']:.4f} ± {v['std']:.4f}" if isinstance(v, dict) else f"{v:.4f}"

    lines = []
    own = summary["teacher"].get("test")
    for key in ("f1_macro", "f1_micro"):
        student = seed_summary([r["test"][key] for r in summary["runs"]])
        s_mean = student["mean"] if isinstance(student, dict) else student
        teacher = own[key] if own and key in own else summary["teacher"]["test_on_student_split"][key]
        t_mean = teacher["mean"] if isinstance(teacher, dict) else teacher
        lines.append(f"{key}: student {show(student)}  teacher {show(teacher)}  student/teacher {s_mean / t_mean:.1%}")
    return f"results: {summary['out']}\n" + "\n".join(lines)
