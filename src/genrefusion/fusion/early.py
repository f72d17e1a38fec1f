"""Early fusion: concatenate the pooled text and image vectors, one head on top."""
from __future__ import annotations

import torch

from .base import GenreModel
from .registry import register_model


@register_model("early")
class EarlyFusion(GenreModel):
    def __init__(self, text_dim: int, image_dim: int, num_labels: int = 23, **common):
        super().__init__(text_dim, image_dim, num_labels, **common)
        self.head = self.make_head(text_dim + image_dim)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.prepare(batch)
        return {"logits": self.head(torch.cat([x["text"], x["image"]], dim=-1))}
