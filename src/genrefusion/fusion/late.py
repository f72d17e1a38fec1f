"""Late fusion: one head per modality, logits mixed by a learned weight a = sigmoid(s):
logits = a * image_logits + (1 - a) * text_logits. No head after the mix (the thesis's weighted average)."""
from __future__ import annotations

import torch
from torch import nn

from .base import GenreModel
from .registry import register_model


# late_weights=per_genre: one image share per genre instead of one for the whole model
@register_model("late", config_options=lambda cfg: {"per_genre": cfg.late_weights == "per_genre"})
class LateFusion(GenreModel):
    def __init__(self, text_dim: int, image_dim: int, num_labels: int = 23, *, per_genre: bool = False, **common):
        super().__init__(text_dim, image_dim, num_labels, **common)
        self.text_head = self.make_head(text_dim)
        self.image_head = self.make_head(image_dim)
        # starts at a = 0.5: both modalities equal
        self.alpha_logit = nn.Parameter(torch.zeros(num_labels if per_genre else ()))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.prepare(batch)
        text_logits, image_logits = self.text_head(x["text"]), self.image_head(x["image"])
        alpha = torch.sigmoid(self.alpha_logit)
        return {
            "logits": alpha * image_logits + (1 - alpha) * text_logits,
            "alpha": alpha if alpha.dim() == 0 else alpha.expand_as(text_logits),  # image share (per genre)
            "text_logits": text_logits,
            "image_logits": image_logits,
        }
