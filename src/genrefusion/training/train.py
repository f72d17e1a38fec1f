"""The one training loop used by every model: AdamW, a multi-label loss, LR schedule, early stopping.

A model never sees where its inputs come from: a `batch_fn(indices, train)` returns the batch dict. From cached
features (the default, frozen encoders as in the thesis code) it slices tensors; in end-to-end mode it runs the
encoders on raw posters and plots (with augmentation in training), so the same loop can fine-tune them.

The loop runs on `cfg.device` ('auto': the GPU when there is one). Under torchrun (see distributed.py) the model
is wrapped in DistributedDataParallel and every rank computes a contiguous slice of each global batch of
`cfg.batch_size`; the loss of a slice is weighted by its share of the batch, so the averaged gradient is the
gradient one process would compute on the whole batch, also for an uneven last batch.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from .. import distributed
from ..config import Config
from ..features.fingerprints import autocast
from ..fusion.batching import FeatureBatches, pad_sequences  # noqa: F401  (public here since before batching.py)

BatchFn = Callable[[torch.Tensor, bool], dict]
AUX_LOGITS = ("text_logits", "image_logits")  # per-modality logits a model may return besides "logits"


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False
    seconds: float = 0.0


def _batches(indices: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    for start in range(0, len(indices), batch_size):
        yield indices[start:start + batch_size]


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def encoder_precision(device: torch.device) -> str:
    """The precision end-to-end encoders run at on `device` (what a saved model records): bf16 autocast on a GPU
    that supports it, fp32 otherwise."""
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def _encoder_autocast(device: torch.device):
    """bf16 autocast around `batch_fn` on a GPU: end-to-end encoders run in mixed precision (slicing cached
    features is unaffected). The heads themselves always train in fp32."""
    return autocast(device, encoder_precision(device))


def _local_slice(b: torch.Tensor, world: int, rank: int) -> tuple[torch.Tensor, float, int]:
    """This rank's contiguous slice of the global batch `b`, the weight of its (mean) loss and its real size.

    DDP averages gradients over ranks, so weighting slice r's mean loss by n_r * world / N makes the result
    sum_r (n_r / N) * grad(mean loss of r) = the gradient of the mean loss over the whole batch. A batch smaller
    than the world leaves some ranks empty: they still run one row (every rank must join DDP's all-reduce) and
    give it weight 0."""
    if world == 1:
        return b, 1.0, len(b)
    lo, hi = distributed.shard_bounds(len(b), rank, world)
    if hi > lo:
        return b[lo:hi], (hi - lo) * world / len(b), hi - lo
    return b[:1], 0.0, 0


@torch.no_grad()
def predict(model: nn.Module, batch_fn: BatchFn, indices: Iterable[int], batch_size: int = 256,
            keep: tuple[str, ...] = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Probabilities (N, L) for `indices`, plus any analysis outputs named in `keep` (e.g. 'gate').

    Under torchrun every rank must call this: each predicts a contiguous share of `indices` and all of them
    return every row, in order."""
    model.eval()
    device = _model_device(model)
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    lo, hi = distributed.shard_bounds(len(idx))
    probs, extras = [], {k: [] for k in keep}
    for b in _batches(idx[lo:hi], batch_size):
        with _encoder_autocast(device):
            batch = batch_fn(b, False)
        out = model(_to_device(batch, device))
        probs.append(torch.sigmoid(out["logits"]).float().cpu())
        for k in keep:
            if k in out and out[k] is not None:
                v = out[k].float().cpu()
                extras[k].append(v.expand(len(b)) if v.dim() == 0 else v)  # a model-wide scalar, per movie
    parts = distributed.all_gather_objects(
        (torch.cat(probs).numpy() if probs else None, {k: torch.cat(v).numpy() for k, v in extras.items() if v}))
    gathered = [p for p, _ in parts if p is not None]
    return (np.concatenate(gathered) if gathered else np.zeros((0, 0), np.float32),
            {k: np.concatenate([e[k] for _, e in parts if k in e]) for k in keep if any(k in e for _, e in parts)})


def _val_loss_and_probs(model, batch_fn, idx, y, loss_fn, batch_size):
    """Mean validation loss and probabilities; under torchrun each rank scores a share and all get the result."""
    model.eval()
    device = _model_device(model)
    lo, hi = distributed.shard_bounds(len(idx))
    total, n, probs = 0.0, 0, []
    with torch.no_grad():
        for b in _batches(idx[lo:hi], batch_size):
            with _encoder_autocast(device):
                batch = batch_fn(b, False)
            logits = model(_to_device(batch, device))["logits"]
            total += loss_fn(logits, y[b]).item() * len(b)
            n += len(b)
            probs.append(torch.sigmoid(logits).float().cpu())
    parts = distributed.all_gather_objects((total, n, torch.cat(probs).numpy() if probs else None))
    total, n = sum(p[0] for p in parts), sum(p[1] for p in parts)
    return total / max(n, 1), np.concatenate([p[2] for p in parts if p[2] is not None])


def fit(model: nn.Module, batch_fn: BatchFn, y: torch.Tensor, train_idx: Iterable[int], val_idx: Iterable[int],
        cfg: Config, loss_fn: nn.Module, extra_param_groups: list[dict] | None = None,
        log: Callable[[str], None] | None = None, on_epoch: Callable[[dict], None] | None = None,
        val_labels: torch.Tensor | None = None) -> TrainResult:
    """Train `model` in place; on return it holds the weights of the epoch with the lowest validation loss.

    `on_epoch` (e.g. an experiment tracker) is called after every epoch with a copy of that epoch's history row
    (epoch, train_loss, val_loss, val_f1_macro, val_f1_micro, lr, seconds); under torchrun on rank 0 only.
    `y` holds what `loss_fn` reads for every row, normally the multi-hot labels. When it holds more than the labels
    (distillation packs the teacher's logits and per-row weights beside them, see distill.py), `val_labels` gives
    the labels the per-epoch validation F1 is computed against.

    The model, the loss and (when they can move, like FeatureBatches) the batches go to `cfg.device`. Under
    torchrun, call it on every rank with the same arguments; `extra_param_groups` (encoders trained end to end,
    outside `model`) have their gradients averaged like DDP's."""
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    loop = _Loop.setup(model, batch_fn, y, train_idx, val_idx, cfg, loss_fn, extra_param_groups, val_labels)
    generator = torch.Generator().manual_seed(cfg.seed)
    result = TrainResult()
    best_state, bad_epochs = None, 0
    log = log if distributed.is_main() else None
    on_epoch = on_epoch if distributed.is_main() else None
    for epoch in range(1, cfg.epochs + 1):
        te = time.perf_counter()
        train_loss = loop.train_epoch(cfg, generator)
        row = {"epoch": epoch, "train_loss": train_loss, **loop.validate(), "lr": loop.optimizer.param_groups[0]["lr"],
               "seconds": time.perf_counter() - te}
        result.history.append(row)
        _check_finite(row, cfg)
        if on_epoch:
            on_epoch(dict(row))
        if log:
            log(f"epoch {epoch:>2}  train {row['train_loss']:.4f}  val {row['val_loss']:.4f}  "
                f"val F1 macro {row['val_f1_macro']:.4f} micro {row['val_f1_micro']:.4f}")
        if loop.plateau is not None:
            loop.plateau.step(row["val_loss"])
        if row["val_loss"] < result.best_val_loss:
            result.best_val_loss, result.best_epoch, bad_epochs = row["val_loss"], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.early_stopping_patience:
                result.stopped_early = True
                break
    loop.net = None  # drops DDP's hooks on the model's parameters
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - t0
    return result


class TrainingDiverged(ValueError):
    """The losses stopped being finite numbers: the weights blew up, and every later number would be noise."""


def _check_finite(row: dict[str, Any], cfg: Config) -> None:
    """Stop at the first epoch whose loss is not a finite number, saying so and what to try, rather than training
    on and failing later in threshold tuning with a message about probabilities."""
    bad = [k for k in ("train_loss", "val_loss") if not math.isfinite(row[k])]
    if bad:
        what = " and ".join(f"the {k.replace('_', ' ')} is {row[k]}" for k in bad)
        raise TrainingDiverged(f"training diverged at epoch {row['epoch']}: {what}. Try a lower learning rate "
                               f"(lr={cfg.lr:g} now; e.g. lr={cfg.lr / 10:g}), or scheduler=cosine with warmup_epochs=1")


@dataclass
class _Loop:
    """One training loop's working set (fit): the model (and `net`, the DDP wrapper under torchrun), batches,
    targets and indices on the device, the optimizer and its schedule."""

    model: nn.Module
    net: nn.Module | None
    batch_fn: BatchFn
    y: torch.Tensor  # on the device: what loss_fn reads
    y_val: np.ndarray  # the validation labels the per-epoch F1 is computed against
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    plateau: Any  # ReduceLROnPlateau, stepped per epoch (scheduler=plateau)
    step_sched: Any  # warm-up + cosine, stepped per batch (scheduler=cosine)
    device: torch.device
    extra_params: list[torch.nn.Parameter]
    aux_loss_weight: float
    batch_size: int

    @classmethod
    def setup(cls, model, batch_fn, y, train_idx, val_idx, cfg: Config, loss_fn, extra_param_groups,
              val_labels) -> "_Loop":
        train_idx = torch.as_tensor(list(train_idx), dtype=torch.long)
        val_idx = torch.as_tensor(list(val_idx), dtype=torch.long)
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise ValueError("training needs non-empty train and validation splits")
        device = distributed.resolve_device(cfg.device)
        world, rank = distributed.world_size(), distributed.rank()
        model.to(device)
        if isinstance(loss_fn, nn.Module):
            loss_fn.to(device)  # pos_weight is a buffer
        if hasattr(batch_fn, "to"):
            batch_fn = batch_fn.to(device)
        y_val = (y if val_labels is None else val_labels)[val_idx].cpu().numpy()
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr}]
        groups += extra_param_groups or []
        net = model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel  # here: only under torchrun

            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
            # Same initial weights (DDP broadcasts rank 0's) and batch order everywhere, but dropout must draw
            # different masks on each rank's slice; rank 0 keeps the single-process random stream.
            if rank > 0:
                torch.manual_seed(cfg.seed + 1_000_003 * rank)
        # The fused kernel updates each parameter in one pass instead of a dozen tensor ops: on a GPU it saves
        # launches, on a CPU memory traffic: benchmarks/fused_adamw.py measured x0.70 of the default's training
        # time for the image and GMU heads on the 2-core development machine, with the same validation scores.
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                      fused=True if device.type in ("cuda", "cpu") else None)
        plateau, step_sched = _schedule(optimizer, cfg, math.ceil(len(train_idx) / cfg.batch_size))
        return cls(model, net, batch_fn, y.to(device), y_val, train_idx, val_idx, loss_fn, optimizer, plateau,
                   step_sched, device, [p for g in extra_param_groups or [] for p in g["params"]],
                   cfg.aux_loss_weight, cfg.batch_size)

    def train_epoch(self, cfg: Config, generator: torch.Generator) -> float:
        """One pass over the training rows in a seeded random order; the mean training loss."""
        world, rank = distributed.world_size(), distributed.rank()
        self.model.train()
        running, seen = 0.0, 0
        order = self.train_idx[torch.randperm(len(self.train_idx), generator=generator)]
        for b in _batches(order, self.batch_size):
            local, weight, n_local = _local_slice(b, world, rank)
            with _encoder_autocast(self.device):
                batch = self.batch_fn(local, True)
            out = self.net(_to_device(batch, self.device))
            loss = self.loss_fn(out["logits"], self.y[local])
            if self.aux_loss_weight > 0:  # each modality's own logits also learn the genres (late fusion)
                for key in AUX_LOGITS:
                    if key in out:
                        loss = loss + self.aux_loss_weight * self.loss_fn(out[key], self.y[local])
            self.optimizer.zero_grad(set_to_none=True)
            (loss * weight if world > 1 else loss).backward()
            if world > 1 and self.extra_params:
                distributed.sync_gradients(self.extra_params)
            self.optimizer.step()
            if self.step_sched is not None:
                self.step_sched.step()
            running = running + loss.detach().double() * n_local  # a tensor: no GPU sync per step
            seen += len(b)
        return distributed.all_reduce_sum(float(running)) / seen

    def validate(self) -> dict[str, float]:
        """The validation loss and the macro / micro F1 at 0.5."""
        val_loss, val_probs = _val_loss_and_probs(self.model, self.batch_fn, self.val_idx, self.y, self.loss_fn, 256)
        pred = (val_probs >= 0.5).astype(int)
        return {"val_loss": val_loss,
                "val_f1_macro": float(f1_score(self.y_val, pred, average="macro", zero_division=0)),
                "val_f1_micro": float(f1_score(self.y_val, pred, average="micro", zero_division=0))}


def _schedule(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int) -> tuple[Any, Any]:
    """(the plateau schedule stepped per epoch, the schedule stepped per batch): one of them, as configured."""
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience), None
    # linear warm-up from 0, then cosine decay to 0 at the last step; stepped per batch
    from transformers import get_cosine_schedule_with_warmup  # here: transformers is slow to import

    return None, get_cosine_schedule_with_warmup(
        optimizer, num_warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)),
        num_training_steps=steps_per_epoch * cfg.epochs)
