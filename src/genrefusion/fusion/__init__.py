"""Fusion models: the thesis grid as heads over pre-computed encoder features.

    model = create_model("gmu", text_dim=768, image_dim=2048)        # num_labels=23 by default
    out = model({"text": t, "image": v, "text_present": tp, "image_present": ip})
    out["logits"]  # (B, 23); plus per-model analysis extras ("gate", "alpha", ...)

Each model is registered with a ModelSpec (registry.py): the modalities it reads, when it reads sequences, and
which config keys set its options, so nothing else has to build a model to learn that. Adding a fusion = one new
module with a `GenreModel` subclass decorated by `@register_model("name")`, imported below; the fusion tests run
over every registered model.
"""
from __future__ import annotations

from . import attention, cross_attention, early, gmu, late, unimodal  # noqa: F401  (importing registers them)
from .base import GenreModel
from .heads import ClassifierHead
from .registry import ModelSpec, create_model, get_model_spec, list_models, register_model

__all__ = ["ClassifierHead", "GenreModel", "ModelSpec", "create_model", "get_model_spec", "list_models",
           "register_model"]
