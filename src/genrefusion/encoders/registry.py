"""Encoder registry: `create_encoder(name)` for registered names, Hugging Face ids and local folders."""
from __future__ import annotations

import inspect
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .base import Encoder, Modality, files_sha256
from .probe_scores import MEASURED

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    modality: Modality
    factory: Callable[..., Encoder]
    description: str
    offline: bool  # True when the weights ship with an installed package (runs without internet)
    # Text encoders: the languages (ISO 639-1) it was trained for; None = not declared (see languages.py).
    languages: tuple[str, ...] | None = None
    sequences: bool = True  # gives a token / patch sequence (cross_attention=sequence reads it)
    trainable: bool = True  # has weights that gradients reach (finetune=true trains them)
    source: str | None = None  # the Hub id behind a registered name, when it has one
    # Its factory takes `cache_root`: the cache root its offline weights are built into (offline_weights.py)
    takes_cache_root: bool = False
    # What a probe of its features measured on the MM-IMDb sample (benchmarks/probe.py, evaluation/probe.py):
    # {"linear", "knn", "chance" (macro-AP), "n" (movies), "genres" (how many scored), "command", "date"}; only
    # numbers a run produced (probe_scores.py keeps them), None where the encoder has not been probed.
    probe: dict[str, Any] | None = None
    options: frozenset[str] | None = None  # the keyword options create_encoder passes on (None: not declared)


_REGISTRY: dict[str, EncoderSpec] = {}


class EncoderOptionError(ValueError):
    """An option (keyword argument) the encoder does not take; the message names it and the ones it takes."""


def constructor_options(cls: type, fixed: tuple[str, ...] = ()) -> frozenset[str]:
    """The keyword options `cls(...)` takes, less `fixed` (those its factory sets itself): the named parameters of
    its __init__, and, where that __init__ passes **kwargs on, those of its parent's."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]  # less self
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return frozenset(names - set(fixed))


def check_options(name: str, options: frozenset[str] | None, kwargs: dict[str, Any]) -> None:
    """EncoderOptionError when `kwargs` holds an option encoder `name` does not take (`options`; None: unchecked)."""
    unknown = sorted(set(kwargs) - options) if options is not None else []
    if unknown:
        raise EncoderOptionError(f"encoder {name!r} has no option {', '.join(map(repr, unknown))} (its options: "
                                 f"{', '.join(sorted(options)) or 'none'})")


def register_encoder(name: str, modality: Modality, description: str, offline: bool = False, *,
                     languages: tuple[str, ...] | None = None, sequences: bool = True, trainable: bool = True,
                     source: str | None = None, takes_cache_root: bool = False,
                     probe: dict[str, Any] | None = None, options: frozenset[str] | None = None):
    """Register `factory(**options)` under `name`. `options`: the keyword options it takes (default: a class's
    constructor_options; a function that passes **kwargs on must say which)."""
    def deco(factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
        if name in _REGISTRY:
            raise ValueError(f"encoder {name!r} registered twice")
        known = options if options is not None or not isinstance(factory, type) else constructor_options(factory)
        _REGISTRY[name] = EncoderSpec(name, modality, factory, description, offline, languages, sequences,
                                      trainable, source, takes_cache_root,
                                      MEASURED.get(name) if probe is None else probe, known)
        return factory

    return deco


def list_encoders(modality: Modality | None = None) -> list[EncoderSpec]:
    return [s for s in _REGISTRY.values() if modality is None or s.modality == modality]


def encoder_spec(name: str) -> EncoderSpec | None:
    return _REGISTRY.get(name)


def _specs_of(name: str) -> list[EncoderSpec | None]:
    """The registered spec of `name`, or of each part of a joined name ("a+b"); None for a part that is not a
    registered name (a Hub id may still be one's source: "FacebookAI/roberta-base")."""
    parts = [p.strip() for p in str(name).split("+")] if "+" in str(name) else [str(name)]
    by_source = {s.source: s for s in _REGISTRY.values() if s.source}
    return [_REGISTRY.get(p) or by_source.get(p) for p in parts]


def encoder_languages(name: str) -> list[str] | None:
    """The languages a text encoder was trained for (a joined encoder: every language one of its parts reads);
    None when any part declares none (a local folder, an unregistered Hub id: unknown, so nothing is warned)."""
    specs = _specs_of(name)
    if any(s is None or s.languages is None for s in specs):
        return None
    return list(dict.fromkeys(lang for s in specs for lang in s.languages))


def check_encoder_use(name: str, modality: str, *, sequences: bool = False, finetune: bool = False) -> None:
    """ValueError, before anything is loaded or encoded, when a registered encoder cannot do what a run asks of
    it: give a token sequence (cross_attention=sequence) or be trained (finetune=true)."""
    parts = [p.strip() for p in str(name).split("+")] if "+" in str(name) else [str(name)]
    if sequences and len(parts) > 1:
        raise ValueError(f"the {modality} encoder {name!r} joins pooled vectors and has no token sequence, which "
                         "cross_attention=sequence reads; use cross_attention=pooled or a single encoder")
    for spec in _specs_of(name):
        if spec is None:
            continue
        if sequences and not spec.sequences:
            raise ValueError(f"cross_attention=sequence (and features --sequences) needs a token sequence from "
                             f"the {modality} encoder, and {spec.name!r} gives one pooled vector per item; use "
                             "cross_attention=pooled (or another encoder)")
        if finetune and not spec.trainable:
            raise ValueError(f"finetune=true trains the encoders, and {spec.name!r} is frozen (it runs outside "
                             "torch: no gradients reach it); use finetune=false, or mode=features")


# --- Hugging Face ids and local folders ---------------------------------------------------------------------------
# A source is either an existing local folder (loaded with local_files_only=True: it never touches the network)
# or a Hub id (loaded the normal way; a first-time download is announced with a warning, never hidden).

# model_type values whose checkpoints are image models. A full CLIP checkpoint ("clip") holds both towers and
# defaults to the vision tower; pass modality="text" for the text tower.
VISION_MODEL_TYPES = frozenset({
    "vit", "deit", "beit", "dinov2", "dinov2_with_registers", "resnet", "convnext", "convnextv2", "swin", "swinv2",
    "regnet", "efficientnet", "mobilenet_v2", "mobilevit", "levit", "clip_vision_model", "clip",
    "siglip_vision_model",
})

# Files that decide what an encoder computes: config, weights (whichever one transformers loads), tokenizer and
# image-processor files. Their content hash is the encoder fingerprint's "weights_sha256".
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                 "pytorch_model.bin", "pytorch_model.bin.index.json")
_SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
               "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "preprocessor_config.json")


def resolve_source(name: str | os.PathLike) -> tuple[str, Path | None]:
    """-> (source string for from_pretrained, local folder or None when `name` is a Hub id).

    Anything that exists on disk, or looks like a path (absolute, ./, ../, ~, more than one '/'), is a local
    folder and must hold a config.json; anything else is treated as a Hub id ("bert-base-uncased", "org/model").
    """
    path = Path(name).expanduser()
    text = str(name)
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{path}: expected a model folder holding config.json, got a file")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json here, so it is not a Hugging Face model folder")
        path = path.resolve()
        return str(path), path
    if isinstance(name, os.PathLike) or text.startswith(("/", "./", "../", "~")) or text.count("/") > 1 or "\\" in text:
        raise FileNotFoundError(f"model folder {text} does not exist")
    return text, None


def is_cached(source: str, filename: str = "config.json") -> bool:
    from transformers.utils import cached_file

    return cached_file(source, filename, local_files_only=True, _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False) is not None


def load_config(source: str, folder: Path | None):
    from transformers import AutoConfig

    if folder is None and not is_cached(source):
        logger.warning("%s is not a local folder or in the Hugging Face cache: downloading it from the Hub", source)
    return AutoConfig.from_pretrained(source, local_files_only=folder is not None)


def detect_modality(config: Any) -> Modality:
    if config.model_type in VISION_MODEL_TYPES:
        return "image"
    # Unlisted architectures: image models describe pixels (num_channels) and have no vocabulary.
    if hasattr(config, "num_channels") and not hasattr(config, "vocab_size"):
        return "image"
    return "text"


def read_json_file(source: str, folder: Path | None, filename: str) -> dict | None:
    """A small JSON side file (e.g. preprocessor_config.json) of a checkpoint, or None when it has none."""
    if folder is not None:
        path = folder / filename
    else:
        from transformers.utils import cached_file

        path = cached_file(source, filename, _raise_exceptions_for_missing_entries=False)
    if path is None or not Path(path).is_file():
        return None
    with open(path) as f:
        return json.load(f)


def load_pretrained(model_cls: Any, source: str, folder: Path | None, config: Any = None) -> torch.nn.Module:
    """from_pretrained in float32 that refuses to hand back silently random-initialised weights.

    Unexpected keys are fine (a classification head, the other CLIP tower); missing or shape-mismatched keys mean
    part of the encoder would be random, which would quietly ruin every feature computed from it.
    """
    kwargs: dict[str, Any] = {"dtype": torch.float32, "local_files_only": folder is not None,
                              "output_loading_info": True}
    if config is not None:
        kwargs["config"] = config
    # The dense+tanh "pooler" of BERT-style / ViT models is not what we pool with (we read the first token's
    # hidden state) and is often absent from checkpoints, so do not build it at all.
    if "add_pooling_layer" in inspect.signature(model_cls.__init__).parameters:
        kwargs["add_pooling_layer"] = False
    # transformers prints a load report for every unexpected key (e.g. the pooler we skip); the keys that matter
    # are checked below and raise, so silence the report rather than train users to ignore it.
    from transformers.utils import logging as hf_logging

    previous, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # a bar per weight tensor, for a load that takes a second
    try:
        model, info = model_cls.from_pretrained(source, **kwargs)
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()
    missing, mismatched = sorted(info["missing_keys"]), list(info["mismatched_keys"])
    if missing or mismatched:
        raise ValueError(f"{source}: checkpoint does not match {model_cls.__name__}; "
                         f"missing weights {missing[:8]}, shape mismatches {mismatched[:8]}")
    return model


def portable_source(source: str, folder: Path | None) -> dict[str, str]:
    """The "source" entry of a fingerprint: the Hub id, or nothing for a local folder. A folder's path says where
    this installation keeps the weights (site-packages of this venv, this user's cache), not what they are; their
    content hash (checkpoint_sha256) does. With the path in it, the same weights in another venv, checkout or
    machine made other cache keys (everything encoded again) and refused every saved model."""
    return {"source": source} if folder is None else {}


def checkpoint_sha256(source: str, folder: Path | None) -> str:
    """Content hash of a checkpoint's config, weights and tokenizer/processor files (see _WEIGHT_FILES)."""
    if folder is None:  # a Hub id: hash the snapshot from_pretrained resolved in the local cache
        from transformers.utils import cached_file

        folder = Path(cached_file(source, "config.json", local_files_only=True)).parent
    files = [folder / n for n in _SIDE_FILES if (folder / n).is_file()]
    weights = next((folder / n for n in _WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder}: no model weights ({', '.join(_WEIGHT_FILES)})")
    files.append(weights)
    if weights.name.endswith(".index.json"):  # sharded: hash every shard the index points at
        with open(weights) as f:
            files += [folder / shard for shard in sorted(set(json.load(f)["weight_map"].values()))]
    return files_sha256(files)
