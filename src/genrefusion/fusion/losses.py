"""Multi-label training losses on logits: `create_loss(name)`.

  bce            BCEWithLogits, the thesis's loss.
  bce-posweight  BCEWithLogits with pos_weight = N_neg / N_pos per genre (see `pos_weight_from_labels`).
  focal          sigmoid focal loss (Lin et al., 2017), gamma=2, optional alpha.
  asl            asymmetric loss (Ridnik et al., 2021), gamma_neg=4, gamma_pos=1, clip=0.05.

All losses take (logits, targets) of the same (B, L) shape and return the MEAN over all B*L
elements, like BCEWithLogitsLoss's default. The ASL reference code returns a sum; a mean keeps the
loss scale (and so the useful learning rate) comparable across the four losses.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def pos_weight_from_labels(labels) -> torch.Tensor:
    """Per-genre positive weight N_neg / N_pos from TRAINING labels (N, L) in {0, 1}.

    A genre with no positive in the training labels would get N_neg / 0 = inf; its N_pos is clamped
    to 1 instead. The weight only multiplies positive targets, and that genre has none in training,
    so the clamp just keeps the tensor finite (inf * 0 would turn the loss into NaN).
    """
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
    if y.ndim != 2 or y.shape[0] == 0:
        raise ValueError(f"pos_weight_from_labels: labels must be a non-empty (N, L) array, got shape {tuple(y.shape)}")
    if not ((y == 0) | (y == 1)).all():
        raise ValueError("pos_weight_from_labels: labels must contain only 0/1")
    n_pos = y.sum(dim=0)
    return (y.shape[0] - n_pos) / n_pos.clamp(min=1.0)


def _check_shapes(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.shape != targets.shape:
        raise ValueError(f"logits shape {tuple(logits.shape)} != targets shape {tuple(targets.shape)}")


class FocalLoss(nn.Module):
    """Sigmoid focal loss: FL = -alpha_t * (1 - p_t)^gamma * log(p_t), with p_t the probability given
    to the true outcome. Down-weights easy, confidently right elements (the many obvious negatives).
    alpha=None means no class weighting (alpha_t = 1); otherwise alpha_t = alpha for positives and
    1 - alpha for negatives, as in the paper."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = None):
        super().__init__()
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"focal alpha must be in [0, 1] or None, got {alpha}")
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_shapes(logits, targets)
        targets = targets.to(logits.dtype)
        ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # = -log(p_t), stable
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = ce * (1 - p_t) ** self.gamma
        if self.alpha is not None:
            loss = loss * (self.alpha * targets + (1 - self.alpha) * (1 - targets))
        return loss.mean()


class AsymmetricLoss(nn.Module):
    """Asymmetric loss, following the authors' reference implementation (Alibaba-MIIL/ASL):

        L+ = -(1 - p)^gamma_pos * log(p)                       for positives
        L- = -p_m^gamma_neg * log(1 - p_m),  p_m = max(p - clip, 0)   for negatives

    The probability shift `clip` discards very easy negatives entirely and the larger gamma_neg
    focuses less on negatives than on positives — suited to 23 genres with ~2.5 positives each.
    Logs are clamped at eps as in the reference. Mean over elements (the reference sums)."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 1.0, clip: float = 0.05, eps: float = 1e-8):
        super().__init__()
        if not 0.0 <= clip < 1.0:
            raise ValueError(f"asl clip must be in [0, 1), got {clip}")
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_shapes(logits, targets)
        y = targets.to(logits.dtype)
        p = torch.sigmoid(logits)
        p_neg = (1 - p + self.clip).clamp(max=1)  # = 1 - p_m
        loss = y * torch.log(p.clamp(min=self.eps)) * (1 - p) ** self.gamma_pos
        loss = loss + (1 - y) * torch.log(p_neg.clamp(min=self.eps)) * (1 - p_neg) ** self.gamma_neg
        return -loss.mean()


def _bce_posweight(pos_weight=None, **kw) -> nn.Module:
    if pos_weight is None:
        raise ValueError("loss 'bce-posweight' needs pos_weight (e.g. pos_weight_from_labels(train_labels))")
    pw = torch.as_tensor(np.asarray(pos_weight), dtype=torch.float32)
    if pw.ndim != 1 or not torch.isfinite(pw).all() or (pw < 0).any():
        raise ValueError(f"pos_weight must be a 1-D tensor of finite non-negative weights, got {pos_weight!r}")
    return nn.BCEWithLogitsLoss(pos_weight=pw, **kw)  # registered as a buffer: moves with .to(device)


def _no_pos_weight(name: str, cls: type[nn.Module]) -> Callable[..., nn.Module]:
    def factory(pos_weight=None, **kw) -> nn.Module:
        if pos_weight is not None:
            raise ValueError(f"loss {name!r} takes no pos_weight (only 'bce-posweight' does)")
        return cls(**kw)

    return factory


_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "bce": _no_pos_weight("bce", nn.BCEWithLogitsLoss),
    "bce-posweight": _bce_posweight,
    "focal": _no_pos_weight("focal", FocalLoss),
    "asl": _no_pos_weight("asl", AsymmetricLoss),
}


def list_losses() -> list[str]:
    return list(_LOSSES)


def create_loss(name: str, pos_weight=None, **kw) -> nn.Module:
    """Build a loss by name; kw go to its constructor (e.g. gamma=, alpha= for focal)."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {list_losses()}")
    return _LOSSES[name](pos_weight=pos_weight, **kw)


__all__ = ["AsymmetricLoss", "FocalLoss", "create_loss", "list_losses", "pos_weight_from_labels"]
