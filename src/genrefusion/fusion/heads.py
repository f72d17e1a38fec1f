"""The classifier head every genre model ends in.

One class so that all nine models of the thesis grid differ only in how they build the vector the head
sees: the thesis used the same MLP (512 -> 256, dropout 0.3 / 0.2) on top of every encoder and fusion.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

HEAD_HIDDEN = (512, 256)
HEAD_DROPOUT = (0.3, 0.2)


class ClassifierHead(nn.Sequential):
    """[Linear -> ReLU -> Dropout] per hidden size, then Linear to `num_labels` logits (no sigmoid:
    training uses BCEWithLogitsLoss). `dropout` is one rate per hidden layer, or a single float for all."""

    def __init__(
        self,
        in_dim: int,
        num_labels: int,
        hidden: Sequence[int] = HEAD_HIDDEN,
        dropout: float | Sequence[float] = HEAD_DROPOUT,
    ):
        hidden = tuple(int(h) for h in hidden)
        rates = (float(dropout),) * len(hidden) if isinstance(dropout, (int, float)) else tuple(map(float, dropout))
        if len(rates) != len(hidden):
            raise ValueError(f"head_dropout has {len(rates)} rates for {len(hidden)} hidden layers {hidden}")
        if any(h <= 0 for h in hidden) or not all(0.0 <= p < 1.0 for p in rates):
            raise ValueError(f"bad head config: hidden={hidden} (need > 0), dropout={rates} (need in [0, 1))")
        layers: list[nn.Module] = []
        dims = (in_dim, *hidden)
        for d_in, d_out, p in zip(dims, hidden, rates):
            layers += [nn.Linear(d_in, d_out), nn.ReLU(), nn.Dropout(p)]
        layers.append(nn.Linear(dims[-1], num_labels))
        super().__init__(*layers)
