"""The fusion registry: one `ModelSpec` per model name, declaring what the rest of the project needs to know about a
model without building one: the modalities it reads, whether it reads token/patch sequences, and which of its
options come from a run's config.

    @register_model("gmu")                                   # reads text and image, pooled vectors
    class GMUFusion(GenreModel): ...

    @register_model("text", modalities=("text",))
    def text_only(text_dim, image_dim=None, num_labels=23, **kwargs): ...

    create_model("gmu", text_dim=768, image_dim=2048)        # num_labels=23 by default
    get_model_spec("cross-attention").reads_sequences({"variant": "sequence"})   # True
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .base import MODALITIES, GenreModel


def _no_options(cfg: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class ModelSpec:
    """What a registered model is.

    constructor:      called as `constructor(text_dim, image_dim, num_labels, **kwargs)`.
    modalities:       the inputs it reads, ("text",), ("image",) or ("text", "image").
    sequence_options: the constructor options under which it reads "<m>_seq" / "<m>_seq_mask" instead of the
                      pooled vectors (cross-attention: {"variant": "sequence"}); None = never.
    config_options:   its own constructor options as a function of a run config (anything with the config's
                      attributes), e.g. late fusion's per_genre from `late_weights`.
    """

    name: str
    constructor: Callable[..., GenreModel]
    modalities: tuple[str, ...] = MODALITIES
    sequence_options: Mapping[str, Any] | None = None
    config_options: Callable[[Any], dict[str, Any]] = field(default=_no_options)

    def reads_sequences(self, kwargs: Mapping[str, Any]) -> bool:
        """Whether the model built with these constructor options reads token/patch sequences."""
        return self.sequence_options is not None and all(kwargs.get(k) == v for k, v in self.sequence_options.items())


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, modalities: tuple[str, ...] = MODALITIES,
                   sequence_options: Mapping[str, Any] | None = None,
                   config_options: Callable[[Any], dict[str, Any]] = _no_options):
    """Decorator registering a model class (or factory) under `name` with its spec (see ModelSpec)."""
    modalities = tuple(modalities)
    if not modalities or any(m not in MODALITIES for m in modalities) or len(set(modalities)) != len(modalities):
        raise ValueError(f"model {name!r}: modalities must be a non-empty subset of {MODALITIES}, got {modalities}")

    def deco(fn: Callable[..., GenreModel]) -> Callable[..., GenreModel]:
        if name in _REGISTRY:
            owner = _REGISTRY[name].constructor
            raise ValueError(f"model {name!r} is already registered (by {owner.__module__}.{owner.__qualname__})")
        _REGISTRY[name] = ModelSpec(name, fn, modalities, sequence_options, config_options)
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, text_dim: int | None, image_dim: int | None, num_labels: int = 23, **kwargs) -> GenreModel:
    """Build a registered model. `model.config` keeps the arguments, so `create_model(**model.config)` rebuilds it."""
    spec = get_model_spec(name)
    try:
        model = spec.constructor(text_dim, image_dim, num_labels, **kwargs)
    except TypeError as e:  # typically an option this model does not take; say which model was asked for
        raise TypeError(f"create_model({name!r}, ...): {e}") from e
    # The spec is what the rest of the project reads without building a model; it must describe the model built.
    if tuple(model.modalities) != spec.modalities or bool(model.uses_sequences) != spec.reads_sequences(kwargs):
        raise TypeError(f"model {name!r} reads {tuple(model.modalities)} (sequences: {model.uses_sequences}), but "
                        f"its registration declares {spec.modalities} (sequences: {spec.reads_sequences(kwargs)})")
    model.config = {"name": name, "text_dim": text_dim, "image_dim": image_dim, "num_labels": num_labels, **kwargs}
    return model
