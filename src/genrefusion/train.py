"""The one training loop used by every model: AdamW, a multi-label loss, LR schedule, early stopping.

A model never sees where its inputs come from: a `batch_fn(indices, train)` returns the batch dict. From cached
features (the default, frozen encoders as in the thesis code) it slices tensors; in end-to-end mode it runs the
encoders on raw posters and plots (with augmentation in training), so the same loop can fine-tune them.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .config import Config
from .features import FeatureTable

BatchFn = Callable[[torch.Tensor, bool], dict]


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class FeatureBatches:
    """Batches from cached features: pooled vectors, presence masks and (optionally) padded sequences."""

    def __init__(self, text: FeatureTable | None, image: FeatureTable | None, sequences: bool = False):
        self.text, self.image, self.sequences = text, image, sequences

    def __call__(self, idx: torch.Tensor, train: bool = False) -> dict:
        batch: dict = {}
        for name, table in (("text", self.text), ("image", self.image)):
            if table is None:
                continue
            batch[name] = table.pooled[idx]
            batch[f"{name}_present"] = table.present[idx]
            if self.sequences:
                batch[f"{name}_seq"], batch[f"{name}_seq_mask"] = pad_sequences(
                    [table.sequences[i] for i in idx.tolist()], table.dim)
        return batch


def pad_sequences(seqs: list[torch.Tensor | None], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the batch's longest sequence. An absent item gets one masked-out zero token (the model substitutes
    its learned stand-in for absent modalities, so the content does not matter)."""
    longest = max([len(s) for s in seqs if s is not None] + [1])
    out = torch.zeros(len(seqs), longest, dim, dtype=torch.float32)
    mask = torch.zeros(len(seqs), longest, dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s is not None and len(s):
            out[i, : len(s)] = s.float()
            mask[i, : len(s)] = True
    return out, mask


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


@torch.no_grad()
def predict(model: nn.Module, batch_fn: BatchFn, indices: Iterable[int], batch_size: int = 256,
            keep: tuple[str, ...] = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Probabilities (N, L) for `indices`, plus any analysis outputs named in `keep` (e.g. 'gate')."""
    model.eval()
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    probs, extras = [], {k: [] for k in keep}
    for b in _batches(idx, batch_size):
        out = model(batch_fn(b, False))
        probs.append(torch.sigmoid(out["logits"]).float().cpu())
        for k in keep:
            if k in out and out[k] is not None:
                v = out[k].float().cpu()
                extras[k].append(v.expand(len(b)) if v.dim() == 0 else v)  # a model-wide scalar, per movie
    return (torch.cat(probs).numpy() if probs else np.zeros((0, 0), np.float32),
            {k: torch.cat(v).numpy() for k, v in extras.items() if v})


def _val_loss_and_probs(model, batch_fn, idx, y, loss_fn, batch_size):
    model.eval()
    total, n, probs = 0.0, 0, []
    with torch.no_grad():
        for b in _batches(idx, batch_size):
            logits = model(batch_fn(b, False))["logits"]
            total += loss_fn(logits, y[b]).item() * len(b)
            n += len(b)
            probs.append(torch.sigmoid(logits))
    return total / max(n, 1), torch.cat(probs).numpy()


def fit(model: nn.Module, batch_fn: BatchFn, y: torch.Tensor, train_idx: Iterable[int], val_idx: Iterable[int],
        cfg: Config, loss_fn: nn.Module, extra_param_groups: list[dict] | None = None,
        log: Callable[[str], None] | None = None) -> TrainResult:
    """Train `model` in place; on return it holds the weights of the epoch with the lowest validation loss."""
    from sklearn.metrics import f1_score

    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    train_idx = torch.as_tensor(list(train_idx), dtype=torch.long)
    val_idx = torch.as_tensor(list(val_idx), dtype=torch.long)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError("training needs non-empty train and validation splits")
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr}]
    groups += extra_param_groups or []
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    if cfg.scheduler == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
        step_sched = None
    else:  # linear warm-up then cosine decay, stepped per batch
        total = steps_per_epoch * cfg.epochs
        warm = int(round(cfg.warmup_epochs * steps_per_epoch))
        lam = lambda s: (s + 1) / max(warm, 1) if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(total - warm, 1)))  # noqa: E731
        step_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lam)
        plateau = None
    generator = torch.Generator().manual_seed(cfg.seed)
    result = TrainResult()
    best_state, bad_epochs = None, 0
    y_val = y[val_idx].numpy()
    for epoch in range(1, cfg.epochs + 1):
        te = time.perf_counter()
        model.train()
        running, seen = 0.0, 0
        order = train_idx[torch.randperm(len(train_idx), generator=generator)]
        for b in _batches(order, cfg.batch_size):
            logits = model(batch_fn(b, True))["logits"]
            loss = loss_fn(logits, y[b])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step_sched is not None:
                step_sched.step()
            running += loss.item() * len(b)
            seen += len(b)
        val_loss, val_probs = _val_loss_and_probs(model, batch_fn, val_idx, y, loss_fn, 256)
        pred = (val_probs >= 0.5).astype(int)
        row = {
            "epoch": epoch, "train_loss": running / seen, "val_loss": val_loss,
            "val_f1_macro": float(f1_score(y_val, pred, average="macro", zero_division=0)),
            "val_f1_micro": float(f1_score(y_val, pred, average="micro", zero_division=0)),
            "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - te,
        }
        result.history.append(row)
        if log:
            log(f"epoch {epoch:>2}  train {row['train_loss']:.4f}  val {val_loss:.4f}  "
                f"val F1 macro {row['val_f1_macro']:.4f} micro {row['val_f1_micro']:.4f}")
        if plateau is not None:
            plateau.step(val_loss)
        if val_loss < result.best_val_loss:
            result.best_val_loss, result.best_epoch, bad_epochs = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.early_stopping_patience:
                result.stopped_early = True
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - t0
    return result
