"""Attention fusion: per-sample softmax weights over the two modalities.

Each modality is projected to `hidden` (Linear + ReLU) so the two live in one space; a small MLP on the
concatenated projections scores them, softmax turns the two scores into weights, and the weighted sum
goes to the head. Unlike GMU the weight is one scalar per modality, not one per feature.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import GenreModel
from .registry import register_model


@register_model("attention")
class AttentionFusion(GenreModel):
    def __init__(
        self, text_dim: int, image_dim: int, num_labels: int = 23, *, hidden: int = 512, score_hidden: int = 128, **common
    ):
        super().__init__(text_dim, image_dim, num_labels, **common)
        self.text_proj = nn.Sequential(nn.Linear(text_dim, hidden), nn.ReLU())
        self.image_proj = nn.Sequential(nn.Linear(image_dim, hidden), nn.ReLU())
        self.scorer = nn.Sequential(nn.Linear(2 * hidden, score_hidden), nn.Tanh(), nn.Linear(score_hidden, 2))
        self.head = self.make_head(hidden)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.prepare(batch)
        h = torch.stack([self.text_proj(x["text"]), self.image_proj(x["image"])], dim=1)  # (B, 2, H)
        weights = torch.softmax(self.scorer(h.flatten(1)), dim=-1)  # (B, 2): text, image
        fused = (weights[..., None] * h).sum(dim=1)
        return {"logits": self.head(fused), "modality_weights": weights}
