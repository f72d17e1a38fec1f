"""Shared base of every genre model: input checks, learned stand-ins for a missing modality,
optional per-modality LayerNorm, and modality dropout.

Every model reads the batch through `GenreModel.prepare`, so "a movie without a poster" means the same
thing for every fusion: the poster features are replaced by one learned vector (or, for models that read
token/patch sequences, by a one-token sequence holding that vector). One model then serves movies with
and without a poster, and nothing downstream needs to special-case them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..data.modalities import MODALITIES
from .heads import HEAD_DROPOUT, HEAD_HIDDEN, ClassifierHead
INPUT_NORMS = ("none", "layernorm")


class GenreModel(nn.Module):
    """Base class. Subclasses build their layers after `super().__init__` and implement `forward(batch) -> dict`
    with at least "logits" (B, num_labels), reading their inputs from `self.prepare(batch)`.

    `modalities`: which inputs the model reads ("text",), ("image",) or ("text", "image").
    `uses_sequences`: True when the model reads "<m>_seq" / "<m>_seq_mask" instead of the pooled "<m>" vectors.
    """

    modalities: tuple[str, ...] = MODALITIES
    uses_sequences: bool = False

    def __init__(
        self,
        text_dim: int | None,
        image_dim: int | None,
        num_labels: int = 23,
        *,
        modalities: Sequence[str] = MODALITIES,
        input_norm: str = "none",
        modality_dropout: float = 0.0,
        head_hidden: Sequence[int] = HEAD_HIDDEN,
        head_dropout: float | Sequence[float] = HEAD_DROPOUT,
    ):
        super().__init__()
        self.modalities = tuple(modalities)
        if not self.modalities or any(m not in MODALITIES for m in self.modalities):
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {self.modalities}")
        given = dict(zip(MODALITIES, (text_dim, image_dim)))
        for m in self.modalities:
            if not isinstance(given[m], int) or given[m] <= 0:
                raise ValueError(f"{type(self).__name__} reads {m!r}: {m}_dim must be a positive int, got {given[m]!r}")
        if not isinstance(num_labels, int) or num_labels <= 0:
            raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        if not 0.0 <= modality_dropout <= 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1], got {modality_dropout}")
        if modality_dropout > 0 and len(self.modalities) < 2:
            raise ValueError(f"modality_dropout needs two modalities; {type(self).__name__} reads {self.modalities}")

        self.dims = {m: given[m] for m in self.modalities}
        self.num_labels = num_labels
        self.modality_dropout = float(modality_dropout)
        self.head_hidden, self.head_dropout = tuple(head_hidden), head_dropout
        # Small random init (not zeros) so a stand-in never collides with an all-zero feature row.
        self.standins = nn.ParameterDict({m: nn.Parameter(0.02 * torch.randn(d)) for m, d in self.dims.items()})
        self.input_norms = nn.ModuleDict(
            {m: nn.LayerNorm(d) if input_norm == "layernorm" else nn.Identity() for m, d in self.dims.items()}
        )

    def make_head(self, in_dim: int) -> ClassifierHead:
        return ClassifierHead(in_dim, self.num_labels, self.head_hidden, self.head_dropout)

    # ----------------------------------------------------------------------------------------------------------
    def prepare(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checked, stand-in-filled, normalised inputs: {"<m>": (B, D)} per modality, or for sequence models
        {"<m>_seq": (B, L, D), "<m>_seq_mask": (B, L) bool}. Modality dropout applies in training mode only."""
        batch_size = None
        present: dict[str, torch.Tensor] = {}
        raw: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for m in self.modalities:
            if self.uses_sequences:
                x = self._tensor(batch, f"{m}_seq", (None, None, self.dims[m]))
                mask = self._tensor(batch, f"{m}_seq_mask", (x.shape[0], x.shape[1]), floating=False).bool()
                if x.shape[1] == 0:
                    raise ValueError(f"batch[{m + '_seq'!r}] has length 0; pad to at least one position")
            else:
                x, mask = self._tensor(batch, m, (None, self.dims[m])), None
            batch_size = x.shape[0] if batch_size is None else batch_size
            if x.shape[0] != batch_size:
                raise ValueError(f"batch size mismatch: {m!r} inputs have {x.shape[0]} rows, expected {batch_size}")
            if f"{m}_present" in batch:
                p = self._tensor(batch, f"{m}_present", (batch_size,), floating=False).bool()
            else:  # no flag means "all present" (convenient when serving complete movies)
                p = torch.ones(batch_size, dtype=torch.bool, device=x.device)
            if mask is not None and bool((p & ~mask.any(dim=1)).any()):
                raise ValueError(f"batch[{m + '_seq_mask'!r}] has a present sample with no real position (all False)")
            present[m], raw[m] = p, (x, mask)

        if self.training and self.modality_dropout > 0:
            present = self.drop_modalities(present)

        out: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            (x, mask), standin, norm = raw[m], self.standins[m].to(raw[m][0].dtype), self.input_norms[m]
            if mask is None:
                out[m] = norm(torch.where(present[m][:, None], x, standin))
            else:
                x, mask = _fill_absent_sequences(x, mask, present[m], standin)
                out[f"{m}_seq"], out[f"{m}_seq_mask"] = norm(x), mask
        return out

    def drop_modalities(self, present: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Modality dropout: each sample that has both modalities loses one of them (text or image, equally
        likely) with probability `modality_dropout`; samples that already miss one are left alone, so no
        sample ever loses both. Draws from torch's global RNG, so torch.manual_seed makes it reproducible."""
        text, image = present["text"], present["image"]
        drop = text & image & (torch.rand(text.shape, device=text.device) < self.modality_dropout)
        drop_image = torch.rand(text.shape, device=text.device) < 0.5
        return {"text": text & ~(drop & ~drop_image), "image": image & ~(drop & drop_image)}

    def _tensor(self, batch: Mapping[str, torch.Tensor], key: str, shape: tuple, floating: bool = True) -> torch.Tensor:
        """batch[key], checked against `shape` (None = any size) with a clear error naming the key."""
        if key not in batch:
            raise ValueError(f"{type(self).__name__} needs batch[{key!r}]; the batch has keys {sorted(batch)}")
        t = batch[key]
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"batch[{key!r}] must be a torch.Tensor, got {type(t).__name__}")
        if len(t.shape) != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"batch[{key!r}] has shape {tuple(t.shape)}, expected {want}")
        if floating and not t.is_floating_point():
            raise ValueError(f"batch[{key!r}] must be a float tensor, got {t.dtype}")
        return t


def _fill_absent_sequences(x: torch.Tensor, mask: torch.Tensor, present: torch.Tensor, token: torch.Tensor):
    """Absent rows become a one-token sequence [token, pad, pad, ...]; padded positions are zeroed so that
    nothing stored there (even NaN) can leak through attention."""
    first = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
    first[0] = True
    absent = ~present
    x = torch.where(absent[:, None, None], first[:, None].to(x.dtype) * token, x)
    # the same as torch.where(absent[:, None], first, mask), in logic ops: onnxruntime has no Where over booleans
    mask = (absent[:, None] & first) | (~absent[:, None] & mask)
    return x.masked_fill(~mask[..., None], 0.0), mask
