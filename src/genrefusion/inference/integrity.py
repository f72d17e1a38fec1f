"""What protects a saved model's description: model.json (and an exported folder's export.json) records under
`fields_sha256` the SHA-256 of every one of its other keys, so an edit to anything that changes a prediction (the
genres, the thresholds, the head's arguments, the encoders and their options, the config) is refused, naming the
key. With the weights' own SHA-256 this covers everything in the folder a prediction depends on. Like that
checksum it catches damage and edits, not someone who recomputes the digests.

A folder written before `fields_sha256` existed has none; its loader checks what it can without it (checkpoint.py,
onnx_predictor.py: the genres must be the vocabulary every such folder was trained on).

Standard library only: the torch-free ONNX runtime uses it too.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

FIELDS_KEY = "fields_sha256"


def field_digests(meta: dict[str, Any]) -> dict[str, str]:
    """Per key of `meta` but FIELDS_KEY, the SHA-256 of its value as canonical JSON (sorted keys)."""
    return {key: hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
            for key, value in sorted(meta.items()) if key != FIELDS_KEY}


def seal(meta: dict[str, Any]) -> dict[str, Any]:
    """`meta` as it reads back from JSON (tuples become lists), with the digests of its keys under FIELDS_KEY."""
    meta = {k: v for k, v in json.loads(json.dumps(meta)).items() if k != FIELDS_KEY}
    return {**meta, FIELDS_KEY: field_digests(meta)}


def check_fields(meta: dict[str, Any], path, error: type[Exception]) -> bool:
    """Raise `error` naming the first key of `meta` (read from `path`) edited, added or removed since it was sealed.
    True when every key checks out; False when `meta` has no digests (written before they existed)."""
    recorded = meta.get(FIELDS_KEY)
    if recorded is None:
        return False
    if not (isinstance(recorded, dict) and all(isinstance(v, str) for v in recorded.values())):
        raise error(f"{path}: '{FIELDS_KEY}' must map each key to the SHA-256 of its value")
    actual = field_digests(meta)
    for key in sorted(set(recorded) | set(actual)):
        if key not in actual:
            raise error(f"{path}: '{key}' was removed after the folder was saved ({FIELDS_KEY} records it)")
        if key not in recorded:
            raise error(f"{path}: '{key}' was added after the folder was saved ({FIELDS_KEY} does not record it)")
        if recorded[key] != actual[key]:
            raise error(f"{path}: '{key}' was edited after the folder was saved (its SHA-256 is not the one "
                        f"{FIELDS_KEY} records)")
    return True
