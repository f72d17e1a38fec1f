"""The one interface every encoder implements.

An encoder turns raw items (plot strings or PIL posters) into a pooled vector per item and, on
request, the token / patch sequence it pooled from (with a validity mask). Everything downstream
(feature cache, fusion heads, serving) talks to encoders only through this class.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import torch

Modality = Literal["text", "image"]


@dataclass
class EncoderOutput:
    pooled: torch.Tensor  # (B, dim) float32
    sequence: torch.Tensor | None = None  # (B, L, dim), only when asked for
    mask: torch.Tensor | None = None  # (B, L) bool, True where the token/patch is real


class Encoder(torch.nn.Module):
    """Base class. Subclasses set `name`, `modality`, `dim` and implement the three methods (an encoder joined
    from others also overrides `feature_parts` and `join`)."""

    name: str
    modality: Modality
    dim: int

    def preprocess(self, items: list[Any], train: bool = False) -> dict[str, torch.Tensor]:
        """Raw items -> model inputs. Text: list[str], padded to the batch's own longest item.
        Image: list[PIL.Image.Image] (RGB) -> {"pixel_values": (B, 3, H, W)}; `train` adds augmentation."""
        raise NotImplementedError

    def encode(self, batch: dict[str, torch.Tensor], return_sequence: bool = False) -> EncoderOutput:
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able identity of weights + preprocessing; the feature cache keys on it."""
        raise NotImplementedError

    def feature_parts(self) -> tuple["Encoder", ...]:
        """The encoders this one's pooled vector is joined from (`join`), when it is built from others: the feature
        cache then caches each part under its own fingerprint and joins their tables, so a combination of cached
        encoders costs nothing. Empty (the default): the encoder is cached as itself."""
        return ()

    def join(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        """The pooled vector (B, dim) from each of `feature_parts()`'s pooled vectors, in that order."""
        raise NotImplementedError(f"{type(self).__name__} is not joined from parts")

    def forward(self, batch: dict[str, torch.Tensor], return_sequence: bool = False) -> EncoderOutput:
        return self.encode(batch, return_sequence=return_sequence)

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")


# --- content hashes for fingerprints ------------------------------------------------------------------------------
# Fingerprints key the feature cache on what the weights *are*, not where they live, so a re-downloaded or edited
# checkpoint invalidates cached features. Hashing a few hundred MB takes seconds, so digests are cached per
# (path, size, mtime): an unchanged file is hashed once per process.
_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def check_texts(texts) -> list[str]:
    """A text encoder's input as a non-empty list of strings, or a TypeError/ValueError saying what it got."""
    if isinstance(texts, str):  # a bare string would otherwise be read character by character
        raise TypeError("expected a list of strings, got a single str")
    texts = list(texts)
    if not texts:
        raise ValueError("expected at least one text")
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"expected strings, got {bad[0]}")
    return texts


def file_sha256(path: str | PathLike) -> str:
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA256_CACHE:
        with open(p, "rb") as f:
            _SHA256_CACHE[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _SHA256_CACHE[key]


def files_sha256(paths: Iterable[str | PathLike]) -> str:
    """One digest over several files: each file's name and content digest, in name order."""
    h = hashlib.sha256()
    for p in sorted((Path(p) for p in paths), key=lambda p: p.name):
        h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()
