"""A fusion head's input batch, built the same way for training (from cached feature tables) and for inference (the
Predictor, from encoders run on the spot): per modality m the pooled vectors "<m>" (B, D), the flags "<m>_present"
(B,) and, for heads that read token/patch sequences, "<m>_seq" (B, L, D) and "<m>_seq_mask" (B, L).

Both train.py and predictor.py import this module, so inference needs nothing from the training code.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from ..data.modalities import MODALITIES

if TYPE_CHECKING:
    from ..features.cache import FeatureTable


def pad_sequences(seqs: list[torch.Tensor | None], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the batch's longest sequence. An absent item gets one masked-out zero token (the model substitutes
    its learned stand-in for absent modalities, so the content does not matter)."""
    longest = max([len(s) for s in seqs if s is not None] + [1])
    out = torch.zeros(len(seqs), longest, dim, dtype=torch.float32)
    mask = torch.zeros(len(seqs), longest, dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s is not None and len(s):
            out[i, : len(s)] = s.float()
            mask[i, : len(s)] = True
    return out, mask


def modality_inputs(modality: str, pooled: torch.Tensor, present: torch.Tensor,
                    sequences: list[torch.Tensor | None] | None = None) -> dict[str, torch.Tensor]:
    """One modality's entries of a head batch; `sequences` (per item, None where absent) adds the padded
    sequence and its mask."""
    out = {modality: pooled, f"{modality}_present": present}
    if sequences is not None:
        out[f"{modality}_seq"], out[f"{modality}_seq_mask"] = pad_sequences(sequences, pooled.shape[1])
    return out


class FeatureBatches:
    """Batches from cached features: pooled vectors, presence masks and (optionally) padded sequences. Tables are
    given per modality by name (`FeatureBatches(text=t, image=i)`); a modality given None is not read."""

    def __init__(self, text: FeatureTable | None = None, image: FeatureTable | None = None, sequences: bool = False):
        given = dict(zip(MODALITIES, (text, image)))
        self.tables: dict[str, FeatureTable] = {m: t for m, t in given.items() if t is not None}
        self.sequences = sequences

    def to(self, device: torch.device | str) -> "FeatureBatches":
        """Batches sliced from pooled tables moved to `device` once, instead of copying every batch (token
        sequences stay on the CPU and are padded there)."""
        device = torch.device(device)
        if device.type == "cpu":
            return self
        moved = {m: dataclasses.replace(t, pooled=t.pooled.to(device), present=t.present.to(device))
                 for m, t in self.tables.items()}
        return FeatureBatches(**moved, sequences=self.sequences)

    def __call__(self, idx: torch.Tensor, train: bool = False) -> dict:
        batch: dict = {}
        for m, table in self.tables.items():
            seqs = [table.sequences[i] for i in idx.tolist()] if self.sequences else None
            batch.update(modality_inputs(m, table.pooled[idx], table.present[idx], seqs))
        return batch
