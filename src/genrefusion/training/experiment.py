"""One experiment = one model trained and evaluated: data -> features -> model -> fit -> thresholds -> metrics.

Writes a run folder through runs.write_run: `config.yaml` (resolved), `metrics.json` (every metric, config, data
fingerprint, encoders, seed, wall time per phase, training history), `test_predictions.safetensors` (test
probabilities and labels, so every number can be recomputed), `val_predictions.safetensors` (to re-tune thresholds)
and `model/` (weights + what is needed to rebuild the model).
"""
from __future__ import annotations

import io
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..atomic import check_writable
from ..config import Config
from ..data.labels import GENRES
from ..data.loader import DataSpec, MovieDataset
from ..data.modalities import MODALITIES, spec
from ..data.summary import data_summary, format_data_line, skipped_record
from ..distributed import is_main, resolve_device
from ..encoders import check_encoder_use
from ..evaluation.metrics import compute_metrics, tune_thresholds
from ..evaluation.runs import (
    Predictions,
    save_predictions,  # noqa: F401  (public here since before runs.py)
    write_run,
)
from ..features import fingerprints
from ..features.cache import FeatureTable, dataset_features
from ..features.spec import FeatureSpec
from ..fusion import create_model, get_model_spec
from ..fusion.batching import FeatureBatches
from ..fusion.losses import create_loss, pos_weight_from_labels
from ..version import __version__
from . import workers
from .train import TrainResult, encoder_precision, fit, predict, seed_everything

ANALYSIS_KEYS = ("gate", "modality_weights", "alpha")  # GMU image share, attention weights, late-fusion a


def model_modalities(name: str) -> tuple[str, ...]:
    """Which modalities a registered model reads (its registry spec says)."""
    return get_model_spec(name).modalities


def reads_sequences(cfg: Config) -> bool:
    """Whether the configured model reads token/patch sequences rather than pooled vectors."""
    return get_model_spec(cfg.model).reads_sequences(model_kwargs(cfg))


def encoder_kwargs(cfg: Config, modality: str) -> dict[str, Any]:
    """Encoder options that change features (part of the cache key); the device is applied with .to()."""
    return spec(modality).encoder_kwargs(cfg)


def encoder_name(cfg: Config, modality: str) -> str:
    return spec(modality).encoder_name(cfg)


def check_encoders(cfg: Config, modalities: tuple[str, ...], sequences: bool) -> None:
    """Refuse, before any data is read or encoded, a run that asks an encoder for what it cannot give: a token
    sequence (cross_attention=sequence) or gradients (finetune=true), e.g. the frozen multilingual encoders."""
    finetune = cfg.mode == "end-to-end" and cfg.finetune
    for m in modalities:
        check_encoder_use(encoder_name(cfg, m), m, sequences=sequences, finetune=finetune)


def build_encoder(cfg: Config, modality: str, features: FeatureSpec | None = None):
    """The configured encoder of `modality`, with its feature-changing options, built by `features` (default:
    FeatureSpec.from_config(cfg)): on its device, offline weights under its cache root."""
    features = FeatureSpec.from_config(cfg) if features is None else features
    return features.create_encoder(encoder_name(cfg, modality), modality, **encoder_kwargs(cfg, modality))


def model_kwargs(cfg: Config) -> dict[str, Any]:
    """The configured model's constructor options: the ones every model takes, modality dropout for models that
    read two modalities, and the model's own options as its registry spec derives them from the config."""
    spec = get_model_spec(cfg.model)
    kw: dict[str, Any] = {"head_dropout": tuple(cfg.head_dropout), "input_norm": cfg.input_norm}
    if len(spec.modalities) > 1:
        kw["modality_dropout"] = cfg.modality_dropout
    return {**kw, **spec.config_options(cfg)}


def build_model(cfg: Config, dims: dict[str, int]):
    """The configured genre model for encoders of these output sizes ({"text": D_t, "image": D_i})."""
    return create_model(cfg.model, **{f"{m}_dim": dims.get(m) for m in MODALITIES}, num_labels=len(GENRES),
                        **model_kwargs(cfg))


def build_loss(cfg: Config, train_labels: torch.Tensor):
    """The configured loss; pos_weight (bce-posweight) comes from the TRAINING labels only."""
    pos_weight = pos_weight_from_labels(train_labels) if cfg.loss == "bce-posweight" else None
    return create_loss(cfg.loss, pos_weight=pos_weight)


# The feature tables an experiment reads, by modality name (shared across the models of a grid).
Features = dict[str, FeatureTable]


@dataclass
class Targets:
    """What the training loop fits instead of the dataset's labels (distillation, see distill.py).

    y:           (N, K), one row per dataset movie: what `loss_fn` reads (for distillation the labels, the
                 teacher's logits and per-row weights, packed); the labels still score validation and test
    loss_fn:     the loss minimised, called as loss_fn(logits, y[rows]); also the validation loss (early stopping)
    extra_train: dataset rows outside every split that are trained on too (unlabelled movies)
    evaluate:    (test rows, test probabilities, thresholds) -> entries added to metrics.json (e.g. agreement with a
                 teacher)
    """

    y: torch.Tensor
    loss_fn: torch.nn.Module
    extra_train: list[int] = field(default_factory=list)
    evaluate: Callable[[list[int], np.ndarray, Any], dict[str, Any]] | None = None


def load_features(cfg: Config, dataset: MovieDataset, modalities: tuple[str, ...],
                  features: FeatureSpec | None = None, sequences: bool = False) -> tuple[Features, float]:
    """The feature tables of the configured encoders of `modalities` over `dataset`, made as `features` says
    (default: FeatureSpec.from_config(cfg)), and the seconds it took."""
    features = FeatureSpec.from_config(cfg) if features is None else features
    t0 = time.perf_counter()
    feats = {m: dataset_features(dataset, build_encoder(cfg, m, features), features, sequences=sequences)
             for m in modalities}
    return feats, time.perf_counter() - t0


@dataclass
class FinalFit:
    """The model whose thresholds the fold heads tune, handed to oof_probabilities so that it can train as one more
    task beside them: train.fit's arguments, and on return `result` (its TrainResult), `model` holding the trained
    weights and `workers` the processes it trained among (1: in this process, before the fold heads)."""

    model: torch.nn.Module
    train_idx: list[int]
    val_idx: list[int]
    loss_fn: torch.nn.Module
    log: Callable[[str], None] | None = None
    on_epoch: Callable[[dict], None] | None = None
    result: TrainResult | None = None
    workers: int = 1


FINAL = "final"  # the task that trains the FinalFit among the fold tasks 0..folds-1


def _fold_task(job: tuple, task: int | str) -> Any:
    """One task of oof_probabilities. Fold f: a fresh head trained on the other folds, early-stopped on this one,
    predicting it. FINAL: the final model trained as `fit` would in the caller (its log lines and epoch rows sent
    to the caller as they come, its weights returned). A module-level function, so that a worker process
    (workers.py) can run it."""
    cfg, batch_fn, dims, y, pool_arr, fold_of, final = job
    if task == FINAL:  # its epoch lines and rows reach the caller as they come (workers.send -> relay)
        result = fit(final.model, batch_fn, y, final.train_idx, final.val_idx, cfg, final.loss_fn,
                     log=(lambda line: workers.send(("log", line))) if final.log else None,
                     on_epoch=(lambda row: workers.send(("epoch", row))) if final.on_epoch else None, val_labels=y)
        if not workers.in_worker():
            return None, result  # trained in place
        # as bytes: a pickled tensor would travel through shared memory that the worker owns
        buffer = io.BytesIO()
        torch.save(final.model.state_dict(), buffer)
        return buffer.getvalue(), result
    held, rest = pool_arr[fold_of == task].tolist(), pool_arr[fold_of != task].tolist()
    # Its own initialisation, whatever ran before it in this process (folds may run in any order, in any worker).
    seed_everything(cfg.seed + 1000 * (task + 1))
    model = build_model(cfg, dims)
    fit(model, batch_fn, y, rest, held, cfg, build_loss(cfg, y[rest]), log=None)
    return predict(model, batch_fn, held)[0]


def oof_probabilities(cfg: Config, batch_fn, dims: dict[str, int], y: torch.Tensor, pool: list[int],
                      folds: int, final: FinalFit | None = None) -> np.ndarray:
    """Out-of-fold probabilities over the movies `pool` (threshold_source=oof): the pool is cut at random (seeded
    by cfg.seed) into `folds` folds; for each, a fresh model of the configured kind is trained by train.fit on the
    other folds, early-stopped on this one, and predicts it. Row i is pool[i]'s prediction by the model that never
    trained on it. The folds are independent: on a CPU they train side by side in cfg.fold_workers processes
    (workers.py; 0 = one per thread torch may use).

    `final`, when given, is trained too, as the first task: in this process before the folds when they train here,
    else as one more task of the same workers, so that no worker waits for it (with six threads, the model and five
    fold heads in one round instead of two). Its log lines and epoch rows reach final.log and final.on_epoch as its
    epochs end, wherever it trains."""
    pool_arr = np.asarray(pool)
    if len(pool_arr) < 2 * folds:
        raise ValueError(f"threshold_source=oof: {len(pool_arr)} movies cannot be cut into {folds} folds")
    fold_of = np.empty(len(pool_arr), dtype=int)
    fold_of[np.random.default_rng(cfg.seed).permutation(len(pool_arr))] = np.arange(len(pool_arr)) % folds
    # The final model first: the caller needs it whatever the thresholds turn out to be.
    tasks: list[int | str] = ([FINAL] if final is not None else []) + list(range(folds))
    n_workers = workers.plan(cfg.fold_workers, len(tasks), resolve_device(cfg.device))
    relay = None
    if final is not None:
        final.workers = n_workers
        if final.log:  # the fold heads train silently: say what the wait after the model's last epoch line is
            final.log(f"threshold_source=oof: training the model and {folds} fold heads over the {len(pool_arr):,} "
                      "train + dev movies, " + (f"side by side in {n_workers} worker processes" if n_workers > 1
                                                 else "one after the other"))
        if final.log or final.on_epoch:
            relay = lambda m: (final.log if m[0] == "log" else final.on_epoch)(m[1])  # noqa: E731
    job = (cfg, batch_fn, dims, y, pool_arr, fold_of, final)
    probs = np.zeros((len(pool_arr), y.shape[1]), dtype=np.float32)
    for task, out in zip(tasks, workers.run(_fold_task, job, tasks, n_workers, relay=relay)):
        if task == FINAL:
            state, final.result = out
            if state is not None:  # trained in a worker
                final.model.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
        else:
            probs[fold_of == task] = out
    return probs


def _subgroup_metrics(y, probs, thr, presence: dict[str, np.ndarray], test_idx, modalities) -> dict[str, Any]:
    """Test scores for movies with both modalities and with one only (missing-modality robustness)."""
    if len(modalities) < 2:
        return {}
    tp, ip = presence["text"][test_idx], presence["image"][test_idx]
    out = {}
    for name, sel in (("both", tp & ip), ("text_only", tp & ~ip), ("image_only", ip & ~tp)):
        if sel.sum() >= 2:
            m = compute_metrics(y[sel], probs[sel], thr, GENRES)
            out[name] = {"n": int(sel.sum()), **{k: v for k, v in m.items() if k != "per_genre"}}
    return out


@dataclass
class RunInputs:
    """What one run trains on and is scored on (prepare_inputs): the movies and the splits of those the model can
    score, the batches it reads (slices of cached feature tables, or encoders in the loop), the encoders' records
    for model.json and metrics.json, and the labels."""

    dataset: MovieDataset
    modalities: tuple[str, ...]
    batch_fn: Any
    dims: dict[str, int]
    encoders_meta: dict[str, dict[str, Any]]
    presence: dict[str, np.ndarray]  # per modality, which movies have it
    train_idx: list[int]
    val_idx: list[int]
    test_idx: list[int]
    y: torch.Tensor  # the labels, one row per dataset movie
    extra_groups: list[dict] | None = None  # encoders trained end to end: their parameter group


@dataclass
class FittedModel:
    """A trained model and its thresholds (fit_with_thresholds): the training's result, the movies it was trained
    on (the labelled training split, plus targets' extra rows), its validation probabilities, and, with fold
    heads, what they record (metrics.json's `oof`)."""

    model: torch.nn.Module
    result: TrainResult
    train_idx: list[int]
    val_probs: np.ndarray
    threshold: Any
    oof: dict[str, Any] | None = None


def run_experiment(cfg: Config, dataset: MovieDataset | None = None,
                   features: Mapping[str, FeatureTable] | None = None, run_dir: str | Path | None = None,
                   log: Callable[[str], None] | None = print, extra: dict[str, Any] | None = None,
                   on_epoch: Callable[[dict], None] | None = None, targets: Targets | None = None,
                   model_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train and evaluate one model; returns the metrics dict that is also written to `run_dir/metrics.json`.
    `on_epoch` is handed to train.fit (an experiment tracker's per-epoch logging, see tracking.py).

    In 'features' mode (default) the encoders are frozen and read through the feature cache (`features` may be
    passed in, by modality, to share it across models); in 'end-to-end' mode they run inside the loop (see
    endtoend.py). `targets` replaces the labels as what training fits (see Targets); `extra` adds entries to
    metrics.json and `model_extra` to the saved model's model.json.

    Three steps: prepare_inputs (data, features, splits), fit_with_thresholds (the model, and its fold heads with
    threshold_source=oof, then the thresholds) and assemble_metrics (test predictions and every score)."""
    timings: dict[str, float] = {}
    check_run(cfg, targets)
    if run_dir is not None and is_main():  # an output folder that cannot be written stops the run before any work
        check_writable(Path(run_dir).parent)
    inputs = prepare_inputs(cfg, dataset, features, log, timings)
    fitted = fit_with_thresholds(cfg, inputs, targets, log, on_epoch, timings)
    metrics, test_probs, analysis = assemble_metrics(cfg, inputs, fitted, targets, extra, timings)
    if run_dir is not None and is_main():  # under torchrun every rank has the same metrics; rank 0 writes
        y, movies = inputs.y, inputs.dataset.movies
        ids = lambda idx: [movies[i].id for i in idx]  # noqa: E731
        write_run(Path(run_dir), cfg, metrics, fitted.model, inputs.encoders_meta,
                  test=Predictions(ids(inputs.test_idx), test_probs, y[inputs.test_idx].numpy(), fitted.threshold,
                                   analysis=analysis),
                  # validation predictions: thresholds can be re-tuned from the run folder alone
                  val=Predictions(ids(inputs.val_idx), fitted.val_probs, y[inputs.val_idx].numpy(),
                                  fitted.threshold), model_extra=model_extra)
    return metrics


def check_run(cfg: Config, targets: Targets | None = None) -> None:
    """Refuse, before any work, a run that cannot be done: an encoder asked for what it cannot give, fold heads
    (threshold_source=oof) outside features mode or with targets other than the labels."""
    check_encoders(cfg, model_modalities(cfg.model), reads_sequences(cfg))
    if cfg.uses_fold_heads() and cfg.mode != "features":
        raise ValueError("threshold_source=oof trains threshold_folds extra heads over cached features: it "
                         "needs mode=features (add threshold_source=val to tune on validation instead)")
    if cfg.uses_fold_heads() and targets is not None:  # the fold heads learn the labels: their probabilities
        raise ValueError("threshold_source=oof: the fold heads are trained on the labels, not on these targets "
                         "(distillation); use threshold_source=val")


def prepare_inputs(cfg: Config, dataset: MovieDataset | None = None,
                   features: Mapping[str, FeatureTable] | None = None, log: Callable[[str], None] | None = None,
                   timings: dict[str, float] | None = None) -> RunInputs:
    """The run's inputs: its dataset (read as the config says when not given), the batches its model reads, and
    the splits of the movies it can score (those with at least one modality it reads). `timings` gets data_s and,
    when features are computed here, features_s."""
    timings = {} if timings is None else timings
    modalities = model_modalities(cfg.model)
    t = time.perf_counter()
    if dataset is None:
        dataset = DataSpec.from_config(cfg).load()
        if log:
            log(format_data_line(data_summary(dataset), cfg.modalities))
    timings["data_s"] = time.perf_counter() - t
    made = FeatureSpec.from_config(cfg)  # how this run's features (or encoders, end to end) are made
    if cfg.mode == "features":
        batch_fn, dims, encoders_meta, extra_groups = _cached_inputs(cfg, dataset, features, made, timings)
    else:
        batch_fn, dims, encoders_meta, extra_groups = _encoder_inputs(cfg, dataset, made)
    presence = {m: np.array([spec(m).present(movie) for movie in dataset.movies]) for m in MODALITIES}
    # Only movies that have at least one modality the model reads can be scored by it.
    usable = np.logical_or.reduce([presence[m] for m in modalities])
    train_idx, val_idx, test_idx = ([i for i in dataset.splits[s] if usable[i]] for s in ("train", "dev", "test"))
    return RunInputs(dataset, modalities, batch_fn, dims, encoders_meta, presence, train_idx, val_idx, test_idx,
                     torch.as_tensor(dataset.labels()), extra_groups)


def _cached_inputs(cfg: Config, dataset: MovieDataset, features: Mapping[str, FeatureTable] | None,
                   made: FeatureSpec, timings: dict[str, float]):
    """Features mode: (batches over the feature tables, dims, encoder records, no extra parameter groups); the
    tables are computed here (made as `made` says) unless given."""
    modalities, sequences = model_modalities(cfg.model), reads_sequences(cfg)
    if features is None:
        features, timings["features_s"] = load_features(cfg, dataset, modalities, made, sequences=sequences)
    lacking = [m for m in modalities if features.get(m) is None]
    if lacking:
        raise ValueError(f"model {cfg.model!r} reads {', '.join(lacking)} features, which were not given")
    # What model.json and metrics.json record per modality (format 2): the encoder to rebuild, the
    # precision its features were computed at, and the fingerprint the loader checks it against.
    encoders_meta = {m: fingerprints.encoder_record(encoder_name(cfg, m), encoder_kwargs(cfg, m),
                                                    features[m].encoder_fingerprint, features[m].precision)
                     for m in modalities}
    batch_fn = FeatureBatches(**{m: features[m] for m in modalities}, sequences=sequences)
    return batch_fn, {m: features[m].dim for m in modalities}, encoders_meta, None


def _encoder_inputs(cfg: Config, dataset: MovieDataset, made: FeatureSpec):
    """End-to-end mode: (batches running the encoders, built as `made` says, on raw items; dims; encoder
    records; the encoders' parameter group when they are fine-tuned)."""
    from .endtoend import EncoderBatches  # here: only end-to-end runs need it

    if reads_sequences(cfg):
        raise ValueError("end-to-end mode supports pooled fusion only (cross_attention=pooled)")
    encs = {m: build_encoder(cfg, m, made) for m in model_modalities(cfg.model)}
    for e in encs.values():
        e.requires_grad_(cfg.finetune)
    batch_fn = EncoderBatches(dataset, **{f"{m}_encoder": e for m, e in encs.items()}, finetune=cfg.finetune)
    extra_groups = [{"params": batch_fn.encoder_parameters(), "lr": cfg.encoder_lr}] if cfg.finetune else None
    precision = encoder_precision(resolve_device(cfg.device))  # the autocast train.fit runs them under
    encoders_meta = {m: fingerprints.encoder_record(encoder_name(cfg, m), encoder_kwargs(cfg, m), e.fingerprint(),
                                                    e.fixed_precision or precision)
                     for m, e in encs.items()}
    return batch_fn, {m: e.dim for m, e in encs.items()}, encoders_meta, extra_groups


def _training_targets(cfg: Config, inputs: RunInputs, targets: Targets | None):
    """(the rows trained on, the loss, what it fits): the labelled training split with the configured loss (its
    pos_weight from those labels), or with `targets` their loss and values, plus their extra rows."""
    if targets is None:
        return inputs.train_idx, build_loss(cfg, inputs.y[inputs.train_idx]), inputs.y
    dataset = inputs.dataset
    in_split = {i for idx in dataset.splits.values() for i in idx}
    if any(i in in_split for i in targets.extra_train):  # a validation or test movie must never be fitted
        raise ValueError("targets.extra_train names movies of the dataset's splits")
    if targets.y.shape[0] != len(dataset.movies):
        raise ValueError(f"targets.y has {targets.y.shape[0]} rows for {len(dataset.movies)} movies")
    usable = np.logical_or.reduce([inputs.presence[m] for m in inputs.modalities])
    return inputs.train_idx + [i for i in targets.extra_train if usable[i]], targets.loss_fn, targets.y


def fit_with_thresholds(cfg: Config, inputs: RunInputs, targets: Targets | None = None,
                        log: Callable[[str], None] | None = None, on_epoch: Callable[[dict], None] | None = None,
                        timings: dict[str, float] | None = None) -> FittedModel:
    """Train the configured model (train.fit; with threshold_source=oof beside its fold heads) and tune its
    thresholds: on its validation probabilities, or on the fold heads' out-of-fold probabilities over train +
    validation. `timings` gets train_s (and train_oof_s, oof_s) and the thresholds' share of eval_s."""
    timings = {} if timings is None else timings
    seed_everything(cfg.seed)
    model = build_model(cfg, inputs.dims)
    train_idx, loss_fn, y_fit = _training_targets(cfg, inputs, targets)
    oof_probs, pool, oof = None, None, None
    if cfg.uses_fold_heads():
        # The fold heads and the final model are independent trainings: they run as one set of tasks (the final
        # one beside the fold heads when they go to worker processes, see oof_probabilities).
        t_oof = time.perf_counter()
        pool = train_idx + inputs.val_idx  # never test
        final = FinalFit(model, train_idx, inputs.val_idx, loss_fn, log=log, on_epoch=on_epoch)
        oof_probs = oof_probabilities(cfg, inputs.batch_fn, inputs.dims, inputs.y, pool, cfg.threshold_folds,
                                      final=final)
        assert final.result is not None
        result, beside = final.result, final.workers > 1
        # train_oof_s: the wall time of all threshold_folds + 1 trainings; oof_s: what the fold heads added to the
        # final model's training (all of it when the final one trained beside them)
        timings["train_oof_s"] = time.perf_counter() - t_oof
        timings["oof_s"] = timings["train_oof_s"] - (0.0 if beside else result.seconds)
        if log:
            log(f"thresholds ({cfg.threshold_mode}) tuned on the out-of-fold predictions  "
                f"[{timings['train_oof_s']:.1f} s for all {cfg.threshold_folds + 1} trainings]")
        oof = {"folds": cfg.threshold_folds, "n": len(pool), "final_beside_folds": beside}
    else:
        result = fit(model, inputs.batch_fn, y_fit, train_idx, inputs.val_idx, cfg, loss_fn,
                     extra_param_groups=inputs.extra_groups, log=log, on_epoch=on_epoch, val_labels=inputs.y)
    timings["train_s"] = result.seconds
    t = time.perf_counter()
    val_probs, _ = predict(model, inputs.batch_fn, inputs.val_idx)
    threshold = tune_thresholds(inputs.y[inputs.val_idx].numpy(), val_probs, cfg.threshold_mode)  # validation only
    if oof is not None:
        oof["val_thresholds"] = np.asarray(threshold).tolist()  # what validation alone would have chosen
        threshold = tune_thresholds(inputs.y[pool].numpy(), oof_probs, cfg.threshold_mode)
    timings["eval_s"] = time.perf_counter() - t
    return FittedModel(model, result, train_idx, val_probs, threshold, oof)


def assemble_metrics(cfg: Config, inputs: RunInputs, fitted: FittedModel, targets: Targets | None = None,
                     extra: dict[str, Any] | None = None, timings: dict[str, float] | None = None):
    """(metrics.json's dict, test probabilities, the fusion's analysis outputs on test): the model's test
    predictions scored at its thresholds, every score and what the run was, and `extra`'s entries."""
    timings = {} if timings is None else timings
    t = time.perf_counter()
    y, val_idx, test_idx, threshold, result = inputs.y, inputs.val_idx, inputs.test_idx, fitted.threshold, fitted.result
    dataset, n_labelled_train = inputs.dataset, len(inputs.train_idx)
    test_probs, analysis = predict(fitted.model, inputs.batch_fn, test_idx, keep=ANALYSIS_KEYS)
    y_test = y[test_idx].numpy()
    metrics = {
        "model": cfg.model,
        "genrefusion_version": __version__,
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "data": {
            "source": str(dataset.report.source), "fingerprint": dataset.fingerprint(), "split": dataset.split_mode,
            "modalities": cfg.modalities,
            "n": {"train": n_labelled_train, "dev": len(val_idx), "test": len(test_idx),
                  **({"unlabelled": len(fitted.train_idx) - n_labelled_train} if targets is not None else {})},
            **skipped_record(dataset),  # what the reader skipped and why: counts per kind, the first problems
        },
        "encoders": inputs.encoders_meta,
        "threshold_mode": cfg.threshold_mode,
        "threshold_source": cfg.threshold_source if fitted.oof is not None else "val",
        "thresholds": np.asarray(threshold).tolist(),
        **({"oof": fitted.oof} if fitted.oof is not None else {}),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "val": compute_metrics(y[val_idx].numpy(), fitted.val_probs, threshold, GENRES),
        "test": compute_metrics(y_test, test_probs, threshold, GENRES),
        "test_at_0.5": compute_metrics(y_test, test_probs, 0.5, GENRES) if cfg.threshold_mode != "fixed" else None,
        "test_by_modality": _subgroup_metrics(y_test, test_probs, threshold, inputs.presence, test_idx,
                                              inputs.modalities),
        "analysis": {k: {"mean": v.mean(axis=0).tolist()} for k, v in analysis.items()},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads()},
        **(extra or {}),
        **(targets.evaluate(test_idx, test_probs, threshold) if targets is not None and targets.evaluate else {}),
    }
    timings["eval_s"] = timings.get("eval_s", 0.0) + time.perf_counter() - t
    metrics["timings"] = timings
    return metrics, test_probs, analysis
