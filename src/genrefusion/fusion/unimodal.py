"""Unimodal baselines (thesis: BERT / RoBERTa on plots, ResNet50 / ViT on posters): the head on one pooled vector.

Which encoder it was (BERT or ViT, ...) is decided by the features fed in, so two registrations cover the four
unimodal rows of the grid. A poster-less movie gets the learned stand-in, i.e. a learned prior prediction.
"""
from __future__ import annotations

import torch

from .base import GenreModel
from .registry import register_model


class UnimodalModel(GenreModel):
    def __init__(self, modality: str, text_dim: int | None, image_dim: int | None, num_labels: int = 23, **common):
        super().__init__(text_dim, image_dim, num_labels, modalities=(modality,), **common)
        self.modality = modality
        self.head = self.make_head(self.dims[modality])

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"logits": self.head(self.prepare(batch)[self.modality])}


@register_model("text", modalities=("text",))
def text_only(text_dim: int, image_dim: int | None = None, num_labels: int = 23, **kwargs) -> UnimodalModel:
    return UnimodalModel("text", text_dim, image_dim, num_labels, **kwargs)


@register_model("image", modalities=("image",))
def image_only(text_dim: int | None, image_dim: int, num_labels: int = 23, **kwargs) -> UnimodalModel:
    return UnimodalModel("image", text_dim, image_dim, num_labels, **kwargs)
