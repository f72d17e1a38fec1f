"""Several encoders of one modality read side by side: `create_encoder("efficientnet-lite0+dinov2-vits14")`.

The pooled vector is the concatenation of the parts' pooled vectors, in the order named. Different backbones see
a poster differently (a CNN's textures and colours, a self-supervised ViT's layout and objects), and on a few
hundred training movies two frozen views give a fusion head more to work with than either alone. Each part keeps
its own preprocessing (size, normalisation), so `preprocess` returns one input dict per part under prefixed keys.
It declares its parts (`feature_parts`), so the feature cache stores each part under its own fingerprint (see
features.dataset_features) and a combination costs nothing once its parts are cached.
"""
from __future__ import annotations

from typing import Any

import torch

from .base import Encoder, EncoderOutput

SEPARATOR = "+"


def split_name(name: str) -> list[str]:
    """'a+b' -> ['a', 'b']; an empty part ('a+', '+b', 'a++b') is an error naming the whole name."""
    parts = [p.strip() for p in str(name).split(SEPARATOR)]
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"encoder name {name!r}: expected two or more encoder names joined by {SEPARATOR!r}")
    return parts


class ConcatEncoder(Encoder):
    def __init__(self, parts: list[Encoder]):
        super().__init__()
        if len(parts) < 2:
            raise ValueError("ConcatEncoder needs at least two encoders")
        modalities = {p.modality for p in parts}
        if len(modalities) != 1:
            raise ValueError("ConcatEncoder parts must share one modality, got "
                             + ", ".join(f"{p.name} ({p.modality})" for p in parts))
        self.parts = torch.nn.ModuleList(parts)
        self.modality = parts[0].modality
        self.name = SEPARATOR.join(p.name for p in parts)
        self.dim = sum(p.dim for p in parts)

    def preprocess(self, items: list[Any], train: bool = False) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for i, part in enumerate(self.parts):
            batch.update({f"{i}.{k}": v for k, v in part.preprocess(items, train=train).items()})
        return batch

    def encode(self, batch: dict[str, torch.Tensor], return_sequence: bool = False) -> EncoderOutput:
        if return_sequence:  # the parts' sequences differ in length and grid; there is no one sequence to give
            raise ValueError(f"encoder {self.name!r} concatenates pooled vectors only; token/patch sequences "
                             "(cross-attention variant 'sequence') need a single encoder")
        pooled = []
        for i, part in enumerate(self.parts):
            inputs = {k.split(".", 1)[1]: v for k, v in batch.items() if k.startswith(f"{i}.")}
            pooled.append(part.encode(inputs).pooled.float())
        return EncoderOutput(self.join(pooled))

    def feature_parts(self) -> tuple[Encoder, ...]:
        return tuple(self.parts)

    def join(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        """The joined pooled vector from each part's own pooled vector (B, part.dim), in `parts` order: what
        `encode` returns. Lets a caller vary one part's vector with the others held fixed (Grad-CAM per part)."""
        if len(pooled) != len(self.parts):
            raise ValueError(f"encoder {self.name!r} joins {len(self.parts)} parts, got {len(pooled)} vectors")
        return torch.cat([p.float() for p in pooled], dim=-1)

    def fingerprint(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "parts": [p.fingerprint() for p in self.parts]}
