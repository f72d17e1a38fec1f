"""The two modalities, declared once: for each, which Movie field holds it, what keys its features in the cache,
what a person calls it, which config keys name and configure its encoder.

Data, the feature cache, training batches, the experiment and the Predictor iterate over `MODALITIES` and read
these entries instead of branching on "text" / "image". The bimodal heads (GMU, attention, cross-attention, late
fusion) still name their two inputs: they are defined over exactly these two.

Imported by the CLI parser's modules, so nothing heavy is imported here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MODALITIES: tuple[str, ...] = ("text", "image")


def _plot(movie) -> str:
    return movie.plot


def _poster(movie):
    from .posters import load_poster  # PIL only; the one poster decoder

    return load_poster(movie.poster)


@dataclass(frozen=True)
class ModalitySpec:
    """One modality. `name` is its key everywhere (batches "<name>", "<name>_present", model.json, metrics)."""

    name: str
    field: str  # the Movie attribute holding the raw item (None: the movie lacks it)
    key_field: str  # the Movie attribute holding its content hash, the feature cache's key
    display: str  # what a person calls it: "plot", "poster" (CLI, errors, the service's form field)
    encoder_config: str  # the Config key naming its encoder
    encoder_options: tuple[str, ...]  # Config keys passed to its encoder (they change the features)
    cpu_batch_size: int  # encoding batch on a CPU (no gain from larger ones there)
    load_raw: Callable[[Any], Any]  # movie -> the item its encoder reads (a plot string, a decoded PIL poster)

    def present(self, movie) -> bool:
        return getattr(movie, self.field) is not None

    def key(self, movie) -> str | None:
        return getattr(movie, self.key_field)

    @property
    def article(self) -> str:  # "a plot", "a poster"
        return f"a {self.display}"

    def encoder_name(self, cfg) -> str:
        return getattr(cfg, self.encoder_config)

    def encoder_kwargs(self, cfg) -> dict[str, Any]:
        return {k: getattr(cfg, k) for k in self.encoder_options}


SPECS: dict[str, ModalitySpec] = {s.name: s for s in (
    ModalitySpec("text", "plot", "text_key", "plot", "text_encoder", ("pooling",), 32, _plot),
    ModalitySpec("image", "poster", "poster_sha256", "poster", "image_encoder", (), 16, _poster),
)}
assert tuple(SPECS) == MODALITIES


def spec(name: str) -> ModalitySpec:
    if name not in SPECS:
        raise ValueError(f"unknown modality {name!r}; modalities: {', '.join(MODALITIES)}")
    return SPECS[name]
