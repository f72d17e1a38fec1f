"""Reading the files genrefusion writes: one torch-free place for the two things every folder reader needs.

- `read_json_object`: a JSON object from a file, with a bad file turned into one error that names the file and the
  problem (missing, unreadable, not UTF-8, not JSON, not an object). Each folder kind raises its own error class
  (run folders RunFolderError, model folders ModelFolderError, exported folders ExportFolderError), so callers pass
  theirs in.
- `sha256_file` / `file_sha256` / `files_sha256`: content digests of files (weights, archives, exported graphs).

Torch-free on purpose: the exported (onnxruntime) predictor and `download` use it without importing torch.
"""
from __future__ import annotations

import hashlib
import json
from os import PathLike
from pathlib import Path
from typing import Any, Iterable


def read_text(path: str | PathLike, error: type[Exception], hint: str = "",
              missing: type[Exception] | None = None) -> str:
    """`path` as UTF-8 text. A missing file raises `missing` (default `error`) with `hint` after "missing"."""
    path = Path(path)
    if not path.exists():
        raise (missing or error)(f"{path}: missing{hint}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e.reason} at byte {e.start:,})") from None
    except OSError as e:  # a directory, no permission
        raise error(f"{path}: unreadable ({e.strerror or e})") from None


def read_json_object(path: str | PathLike, error: type[Exception], hint: str = "",
                     missing: type[Exception] | None = None) -> dict[str, Any]:
    """The JSON object in `path`; anything else raises `error` naming the file (see read_text for `missing`)."""
    text = read_text(path, error, hint, missing)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise error(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def sha256_file(path: str | PathLike) -> str:
    """SHA-256 of a file's bytes, read afresh (for files just written or downloaded)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | PathLike) -> str:
    """SHA-256 of a file that rarely changes (model weights), remembered per (path, size, mtime) for the process.

    Fingerprints key the feature cache on what the weights *are*, not where they live, so a re-downloaded or
    edited checkpoint invalidates cached features; hashing a few hundred MB takes seconds, hence the memo."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA256_CACHE:
        _SHA256_CACHE[key] = sha256_file(p)
    return _SHA256_CACHE[key]


def files_sha256(paths: Iterable[str | PathLike]) -> str:
    """One digest over several files: each file's name and content digest, in name order."""
    h = hashlib.sha256()
    for p in sorted((Path(p) for p in paths), key=lambda p: p.name):
        h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()
