"""What identifies the features an encoder produces, in one place: the cache, experiment, checkpoint and the
Predictor all build, hash and compare it here.

An encoder's `fingerprint()` is a JSON-able dict of its weights' content hash and its preprocessing. Features also
depend on the autocast precision they were computed under (bf16 features differ from fp32 ones by ~1e-2), so the
identity of a set of features is `{**fingerprint, "precision": p}`, and its hash is `identity_sha256`. A saved
model (model.json format 2) records, per modality, the fingerprint dict, the precision and that hash
(`encoder_record`); the loader (predictor.Predictor) rebuilds the encoder and compares. Where the weights are
installed is not part of it: a local folder's path is left out (encoders.registry.portable_source), and a record
that still has one is compared by `content` (`same_features`).

The feature cache's folder key (`cache_key`) is the identity hash, except that fp32 leaves the precision out: the
form the cache has named its folders by since before precisions existed, so every existing cache is found.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any, Iterable

from ..config import PRECISIONS
from .precision import choose


def sha256_json(obj: Any) -> str:
    """The hash of a JSON-able value, independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def resolve_precision(precision: str | None, device, encoders: Iterable[str] = ()) -> str:
    """A precision request (None, 'auto' or one of PRECISIONS, checked where it was made: Config.validate,
    FeatureSpec) made concrete. None / 'auto': bf16 autocast on a GPU that supports it (else fp16); on the CPU,
    what precision.choose picks for `encoders` (their names) from the measured evidence: fp32 unless a reduced
    precision is native to this CPU, measured faster and measured to keep downstream quality for every one of
    them. An explicit precision is kept. FeatureSpec.precision_for calls it once per encoder."""
    import torch

    if precision not in (None, "auto"):
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    encoders = list(encoders)
    if not encoders:
        return "fp32"

    return choose(encoders)


def autocast(device, precision: str):
    """The autocast context features of `precision` are computed under (none for fp32)."""
    import torch

    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def identity(fingerprint: dict, precision: str) -> dict:
    return {**fingerprint, "precision": precision}


def identity_sha256(fingerprint: dict, precision: str) -> str:
    return sha256_json(identity(fingerprint, precision))


def cache_key(fingerprint: dict, precision: str) -> str:
    """The feature cache's folder key: the identity hash, except that fp32 leaves the precision out (the form of
    the releases before precisions existed, so their cache folders are still found; changing it would orphan
    every cache)."""
    return sha256_json(fingerprint) if precision == "fp32" else identity_sha256(fingerprint, precision)


def encoder_record(name: str, kwargs: dict, fingerprint: dict, precision: str) -> dict[str, Any]:
    """What model.json (format 2) records for one modality's encoder: enough to rebuild it and to check it."""
    return {"name": name, "kwargs": dict(kwargs), "precision": precision, "fingerprint": fingerprint,
            "fingerprint_sha256": identity_sha256(fingerprint, precision)}


def check_record(record: Any, where: str) -> None:
    """ValueError unless `record` is a well-formed, self-consistent format-2 encoder record."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object, got {type(record).__name__}")
    missing = sorted({"name", "kwargs", "precision", "fingerprint", "fingerprint_sha256"} - set(record))
    if missing:
        raise ValueError(f"{where}: missing {', '.join(map(repr, missing))}")
    if not isinstance(record["name"], str) or not isinstance(record["kwargs"], dict):
        raise ValueError(f"{where}: 'name' must be a string and 'kwargs' an object")
    if record["precision"] not in PRECISIONS:
        raise ValueError(f"{where}: precision {record['precision']!r} is not one of {PRECISIONS}")
    if not isinstance(record["fingerprint"], dict):
        raise ValueError(f"{where}: 'fingerprint' must be an object")
    if record["fingerprint_sha256"] != identity_sha256(record["fingerprint"], record["precision"]):
        raise ValueError(f"{where}: fingerprint_sha256 is not the hash of the recorded fingerprint and precision "
                         "(the file was edited or damaged)")


def content(fingerprint: Any) -> Any:
    """What in a fingerprint decides the features: all of it but the "source" of weights that carry their content
    hash. Releases before 2 December 2026 recorded a local folder's path there (this venv's site-packages, this
    user's cache: encoders.registry.portable_source), so a model folder saved by one installation records where its
    weights were, which another installation of the same weights does not share."""
    if isinstance(fingerprint, dict):
        hashed = "weights_sha256" in fingerprint
        return {k: content(v) for k, v in fingerprint.items() if not (k == "source" and hashed)}
    if isinstance(fingerprint, list):
        return [content(v) for v in fingerprint]
    return fingerprint


def same_features(recorded: dict, actual: dict) -> bool:
    """Whether a recorded fingerprint and an encoder's own describe the same features: equal, or equal but for
    where the same weights (by content hash) were installed."""
    return recorded == actual or content(recorded) == content(actual)


def differences(recorded: dict, actual: dict) -> list[str]:
    """The top-level fields in which two fingerprints differ (what an error message names), where the weights'
    install location does not count (see `content`)."""
    recorded, actual = content(recorded), content(actual)
    return sorted(k for k in set(recorded) | set(actual) if recorded.get(k) != actual.get(k))
