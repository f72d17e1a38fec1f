"""Fusion models: the thesis grid as heads over pre-computed encoder features.

    model = create_model("gmu", text_dim=768, image_dim=2048)        # num_labels=23 by default
    out = model({"text": t, "image": v, "text_present": tp, "image_present": ip})
    out["logits"]  # (B, 23); plus per-model analysis extras ("gate", "alpha", ...)

Adding a fusion = one new module with a `GenreModel` subclass decorated by `@register_model("name")`,
imported at the bottom of this file.
"""
from __future__ import annotations

from typing import Callable

from .base import GenreModel
from .heads import ClassifierHead

_REGISTRY: dict[str, Callable[..., GenreModel]] = {}


def register_model(name: str):
    """Decorator registering a model class (or factory) called as `fn(text_dim, image_dim, num_labels, **kwargs)`."""

    def deco(fn: Callable[..., GenreModel]) -> Callable[..., GenreModel]:
        if name in _REGISTRY:
            owner = _REGISTRY[name]
            raise ValueError(f"model {name!r} is already registered (by {owner.__module__}.{owner.__qualname__})")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, text_dim: int | None, image_dim: int | None, num_labels: int = 23, **kwargs) -> GenreModel:
    """Build a registered model. `model.config` keeps the arguments, so `create_model(**model.config)` rebuilds it."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    try:
        model = _REGISTRY[name](text_dim, image_dim, num_labels, **kwargs)
    except TypeError as e:  # typically an option this model does not take; say which model was asked for
        raise TypeError(f"create_model({name!r}, ...): {e}") from e
    model.config = {"name": name, "text_dim": text_dim, "image_dim": image_dim, "num_labels": num_labels, **kwargs}
    return model


# Importing the model modules registers them.
from . import attention, cross_attention, early, gmu, late, unimodal  # noqa: E402,F401

__all__ = ["ClassifierHead", "GenreModel", "create_model", "list_models", "register_model"]
