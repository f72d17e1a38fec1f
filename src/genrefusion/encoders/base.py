"""The one interface every encoder implements.

An encoder turns raw items (plot strings or PIL posters) into a pooled vector per item and, on
request, the token / patch sequence it pooled from (with a validity mask). Everything downstream
(feature cache, fusion heads, serving) talks to encoders only through this class.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch

from ..files import file_sha256, files_sha256  # noqa: F401  (public here: encoders fingerprint their weights)

Modality = Literal["text", "image"]


@dataclass
class EncoderOutput:
    pooled: torch.Tensor  # (B, dim) float32
    sequence: torch.Tensor | None = None  # (B, L, dim), only when asked for
    mask: torch.Tensor | None = None  # (B, L) bool, True where the token/patch is real


class Encoder(torch.nn.Module):
    """Base class. Subclasses set `name`, `modality`, `dim` and implement the three methods (an encoder joined
    from others also overrides `feature_parts` and `join`).

    Two optional capabilities have defaults here, so callers read them directly:
    * `fixed_precision`: the precision its features always have, whatever autocast is asked for ("fp32" for an
      encoder that runs outside torch); None (the default): the autocast it runs under decides.
    * `token_lengths(texts) -> list[int]`: a text encoder's token count of each text after its preprocessing and
      truncation, so batches can group texts of similar length; None (the default, e.g. a joined encoder): it
      cannot tell. A subclass that can defines it as a method."""

    name: str
    modality: Modality
    dim: int
    fixed_precision: str | None = None
    token_lengths: Callable[[list[str]], list[int]] | None = None

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

    def companions(self) -> tuple["Encoder", ...]:
        """Encoders whose pooled vectors come from this one's forward pass (a text encoder's other poolings). When
        the feature cache encodes this encoder it fills their cache folders in the same pass, so a second recipe
        over the same model (the thesis's CLS pooling, then the recommended mean pooling) costs no encoding.
        Empty (the default): none."""
        return ()

    def encode_with_companions(self, batch: dict[str, torch.Tensor], companions: tuple["Encoder", ...],
                               return_sequence: bool = False) -> tuple[EncoderOutput, list[torch.Tensor]]:
        """This encoder's output for `batch` and each companion's pooled vectors, from one forward pass; each is
        what that companion's own `encode` returns for the batch (bit for bit)."""
        if companions:
            raise NotImplementedError(f"{type(self).__name__} has no companions")
        return self.encode(batch, return_sequence=return_sequence), []

    def forward(self, batch: dict[str, torch.Tensor], return_sequence: bool = False) -> EncoderOutput:
        return self.encode(batch, return_sequence=return_sequence)

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")


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
