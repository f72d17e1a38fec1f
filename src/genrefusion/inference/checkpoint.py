"""Saved models: a folder with the head's weights (model.safetensors) and model.json, enough to rebuild the exact
model on another machine and to know when it cannot be trusted.

model.json, format 2:
    format            2
    model             the head's constructor arguments (create_model(**model) rebuilds it)
    genres            the label vocabulary, in the order of the head's outputs
    thresholds        one decision threshold, or one per genre
    weights_sha256    SHA-256 of model.safetensors
    fields_sha256     the SHA-256 of each other key's value (integrity.py), so an edit to any of them is refused
                      naming the key (folders saved before it existed have none)
    encoders          per modality: name, kwargs, precision, fingerprint (the encoder's fingerprint dict) and
                      fingerprint_sha256 (fingerprints.encoder_record); the text encoder's also `languages`, the
                      ISO 639-1 codes it was trained for (null: not declared)
    config            the run's resolved config
    teacher           (a distilled model only, see distill.py) the teacher it learned from: its path, kind,
                      fingerprint, members and its own test metrics

Beside them, README.md is the folder's model card (modelcard.py), written in the same atomic step.

`load_head` verifies the folder before anything in it is used: model.json parses, every key matches its recorded
SHA-256 (without those, the genres must be the 23 MM-IMDb genres every such folder was trained on) and has the
right type, the weights file matches its recorded SHA-256, every tensor fits the model model.json describes and is
finite, and the thresholds fit the genres. A problem raises ModelFolderError (a ValueError) or FileNotFoundError,
naming the file and the problem. A folder in another format is refused with what wrote it and what reads it
(`format_error`): format 1 (no weights_sha256, another encoder record) was written by genrefusion 0.1.0 before
1 December 2026 and is no longer read.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

from ..atomic import save_safetensors, staging_dir
from ..config import Config
from ..data.labels import GENRES
from ..encoders import encoder_languages
from ..features import fingerprints
from ..files import read_json_object
from ..fusion import create_model
from ..version import __version__
from .integrity import FIELDS_KEY, check_fields, seal
from .modelcard import CARD_FILE, model_card

FORMAT_VERSION = 2
META_FILE, WEIGHTS_FILE = "model.json", "model.safetensors"
REQUIRED = ("model", "genres", "thresholds", "encoders", "weights_sha256", "config")
# The formats this release no longer reads: (what wrote them, the last genrefusion that reads them).
OLD_FORMATS = {1: ("genrefusion 0.1.0 before 1 December 2026",
                   "genrefusion 0.1.0 as of commit f350d09 (7 December 2026)")}


class ModelFolderError(ValueError):
    """A model folder that cannot be used; the message names the file and the problem."""


def save_model(directory: str | Path, model: torch.nn.Module, cfg: Config, threshold: Any,
               encoders: dict[str, dict[str, Any]], metrics: dict[str, Any] | None = None,
               extra: dict[str, Any] | None = None) -> Path:
    """Write atomically: everything goes to a sibling temp folder which is then renamed into place, the model card
    (README.md, modelcard.py) included. `encoders`: per modality the record of fingerprints.encoder_record, what
    load_model rebuilds and checks; `metrics`: the run's metrics.json content, which the card reports (None: a
    folder saved outside a run, whose card says that no evaluation was recorded). `extra`: further JSON-able
    entries for model.json that loading does not need (a distilled model's "teacher"); they may not replace one
    of the format's own keys."""
    for m, record in encoders.items():
        fingerprints.check_record(record, f"save_model: the {m} encoder record")
    clash = sorted(set(extra or {}) & {"format", "model", "genres", "thresholds", "weights_sha256", "encoders",
                                       "config", FIELDS_KEY})
    if clash:
        raise ValueError(f"save_model: extra entries {clash} would replace model.json's own keys")
    encoders = {m: _with_languages(m, r) for m, r in encoders.items()}
    directory = Path(directory)
    with staging_dir(directory) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_safetensors(state, tmp / WEIGHTS_FILE)
        meta = seal({
            "format": FORMAT_VERSION,
            "model": model.config,
            "genres": list(GENRES),
            "thresholds": np.asarray(threshold).tolist(),
            "weights_sha256": hashlib.sha256((tmp / WEIGHTS_FILE).read_bytes()).hexdigest(),
            "encoders": encoders,
            "config": cfg.to_dict(),
            **(extra or {}),
        })
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        (tmp / CARD_FILE).write_text(model_card(meta, metrics, folder=str(directory)), encoding="utf-8")
    return directory


def _with_languages(modality: str, record: dict[str, Any]) -> dict[str, Any]:
    """A text encoder's record also says which languages it was trained for (null: not declared), so the model's
    users (its card, GET /model, the script warnings) can read it from the folder alone."""
    if modality != "text" or "languages" in record:
        return record

    return {**record, "languages": encoder_languages(record["name"])}


def load_head(directory: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained fusion/head model (over encoder features) and its metadata, verified (see the docstring)."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such model folder")
    if not meta_path.is_file():
        raise FileNotFoundError(f"{directory}: not a saved genrefusion model (no {META_FILE})")
    meta = read_meta(meta_path)
    model = _build(meta, meta_path)
    state = _read_weights(directory / WEIGHTS_FILE, meta)
    _load_state(model, state, directory / WEIGHTS_FILE, meta["model"]["name"])
    _check_labels(meta, model, meta_path)
    _check_encoder_records(meta, model, meta_path)
    model.eval()
    return model, meta


def format_error(path: Path, fmt: Any) -> ModelFolderError:
    """The error for a model.json in a format this release does not read: who wrote it and what to do."""
    if fmt in OLD_FORMATS:
        writer, reader = OLD_FORMATS[fmt]
        return ModelFolderError(f"{path}: written by {writer} in format {fmt}; this release ({__version__}) reads "
                                f"format {FORMAT_VERSION}: retrain the model, or load it with {reader}")
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > FORMAT_VERSION:
        return ModelFolderError(f"{path}: written in format {fmt} by a newer genrefusion; this release "
                                f"({__version__}) reads format {FORMAT_VERSION}: upgrade genrefusion")
    return ModelFolderError(f"{path}: unsupported format {fmt!r} (this release reads format {FORMAT_VERSION})")


def read_meta(path: Path) -> dict[str, Any]:
    """model.json parsed, with its keys and their types checked."""
    meta = read_json_object(path, ModelFolderError)
    fmt = meta.get("format")
    if fmt != FORMAT_VERSION or isinstance(fmt, bool):
        raise format_error(path, fmt)
    sealed = check_fields(meta, path, ModelFolderError)
    missing = sorted(k for k in REQUIRED if k not in meta)
    if missing:
        raise ModelFolderError(f"{path}: missing key(s) {', '.join(map(repr, missing))}")
    for key, kind in (("model", dict), ("genres", list), ("encoders", dict), ("config", dict)):
        if not isinstance(meta[key], kind):
            raise ModelFolderError(f"{path}: '{key}' must be a JSON {kind.__name__.replace('dict', 'object')}, "
                                   f"got {type(meta[key]).__name__}")
    if not isinstance(meta["model"].get("name"), str):
        raise ModelFolderError(f"{path}: 'model' names no model ('name')")
    genres = meta["genres"]
    if not genres or not all(isinstance(g, str) for g in genres) or len(set(genres)) != len(genres):
        raise ModelFolderError(f"{path}: 'genres' must be distinct genre names")
    if not sealed and genres != list(GENRES):
        raise ModelFolderError(f"{path}: 'genres' is not the list of the {len(GENRES)} MM-IMDb genres, in their "
                               f"order, that every folder saved without '{FIELDS_KEY}' holds: it was edited")
    if not (isinstance(meta["weights_sha256"], str) and len(meta["weights_sha256"]) == 64):
        raise ModelFolderError(f"{path}: 'weights_sha256' is not a SHA-256 hex digest")
    return meta


def _build(meta: dict, path: Path) -> torch.nn.Module:
    cfg = dict(meta["model"])
    name = cfg.pop("name")
    if isinstance(cfg.get("head_dropout"), list):
        cfg["head_dropout"] = tuple(cfg["head_dropout"])
    try:
        return create_model(name, **cfg)
    except Exception as e:  # an unknown model, a missing or mistyped argument: the file is what is wrong
        raise ModelFolderError(f"{path}: cannot build the {name!r} model it describes ({e})") from None


def _read_weights(path: Path, meta: dict) -> dict[str, torch.Tensor]:
    """The weights, read once (the checksum and the parse see the same bytes), verified."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (the model folder holds no weights)") from None
    except OSError as e:
        raise ModelFolderError(f"{path}: unreadable ({e})") from None
    if hashlib.sha256(data).hexdigest() != meta["weights_sha256"]:
        raise ModelFolderError(f"{path}: its SHA-256 is not the one {META_FILE} records (the file is damaged, "
                               "truncated or was replaced)")
    try:
        state = load_safetensors(data)
    except Exception as e:  # safetensors' own error type: a damaged header, truncated data
        raise ModelFolderError(f"{path}: unreadable ({e})") from None
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelFolderError(f"{path}: tensor {name!r} holds non-finite values (NaN or inf)")
    return state


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    want = model.state_dict()
    problems = [f"missing {k!r}" for k in sorted(set(want) - set(state))]
    problems += [f"unexpected {k!r}" for k in sorted(set(state) - set(want))]
    problems += [f"shape of {k!r} is {tuple(state[k].shape)}, the model's {tuple(want[k].shape)}"
                 for k in sorted(set(want) & set(state)) if state[k].shape != want[k].shape]
    if problems:
        raise ModelFolderError(f"{path}: its tensors do not fit the {name!r} model {META_FILE} describes ("
                               + "; ".join(problems[:4]) + (f"; {len(problems) - 4} more" if len(problems) > 4 else "")
                               + ")")
    model.load_state_dict(state)


def _check_labels(meta: dict, model: torch.nn.Module, path: Path) -> None:
    genres, thresholds = meta["genres"], meta["thresholds"]
    n_out = getattr(model, "num_labels", len(genres))
    if len(genres) != n_out:
        raise ModelFolderError(f"{path}: {len(genres)} genres, but the model predicts {n_out}")
    values = thresholds if isinstance(thresholds, list) else [thresholds]
    if isinstance(thresholds, list) and len(thresholds) != len(genres):
        raise ModelFolderError(f"{path}: {len(thresholds)} thresholds for {len(genres)} genres (expected one, or "
                               "one per genre)")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
            raise ModelFolderError(f"{path}: threshold {v!r} is not a number between 0 and 1")


def _check_encoder_records(meta: dict, model: torch.nn.Module, path: Path) -> None:
    """Every modality the model reads has a well-formed encoder record (the Predictor compares it with the
    encoder it rebuilds)."""
    for m in model.modalities:
        record = meta["encoders"].get(m)
        where = f"{path}: the {m} encoder record"
        if record is None:
            raise ModelFolderError(f"{path}: no encoder recorded for the {m} input the "
                                   f"{meta['model']['name']!r} model reads")
        try:
            fingerprints.check_record(record, where)
        except ValueError as e:
            raise ModelFolderError(str(e)) from None
        languages = record.get("languages")
        if languages is not None and not (isinstance(languages, list)
                                          and all(isinstance(x, str) and 0 < len(x) <= 16 for x in languages)):
            raise ModelFolderError(f"{where}: 'languages' must be null or a list of language codes")
