"""Gated Multimodal Unit (Arevalo et al. 2017, arXiv:1702.01992), the thesis's gate-based fusion:

    h_v = tanh(W_v x_v),  h_t = tanh(W_t x_t),  z = sigmoid(W_z [x_v; x_t]),  h = z * h_v + (1 - z) * h_t

z is a per-feature gate, so z is the image's share of each hidden unit; it is returned as "gate" for analysis.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import GenreModel
from .registry import register_model


@register_model("gmu")
class GMUFusion(GenreModel):
    def __init__(self, text_dim: int, image_dim: int, num_labels: int = 23, *, hidden: int = 512, **common):
        super().__init__(text_dim, image_dim, num_labels, **common)
        self.text_proj = nn.Linear(text_dim, hidden)
        self.image_proj = nn.Linear(image_dim, hidden)
        self.gate = nn.Linear(image_dim + text_dim, hidden)
        self.head = self.make_head(hidden)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.prepare(batch)
        h_t, h_v = torch.tanh(self.text_proj(x["text"])), torch.tanh(self.image_proj(x["image"]))
        z = torch.sigmoid(self.gate(torch.cat([x["image"], x["text"]], dim=-1)))
        return {"logits": self.head(z * h_v + (1 - z) * h_t), "gate": z}
