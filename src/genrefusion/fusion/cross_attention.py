"""Cross-attention fusion: text attends to image and image attends to text, then one head on both directions.

Both modalities are projected to `d_model`; each direction is multi-head attention (Q from one modality,
K/V from the other) with a residual connection and LayerNorm; each direction is mean-pooled over its
queries (padding excluded) and the two pooled vectors are concatenated for the head.

variant="pooled" (the thesis's form) feeds each side as a length-1 sequence of its pooled vector. The softmax
then runs over a single key, so every weight is 1 and the Q/K projections receive no gradient: each direction
reduces to LayerNorm(q + W_o W_v kv). It is kept because it is what the thesis reports.
variant="sequence" attends over the encoders' token / patch sequences ("<m>_seq" with "<m>_seq_mask"), where
the attention is real; an absent modality is a single learned token.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import GenreModel
from .registry import register_model

VARIANTS = ("pooled", "sequence")


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over dim 1 of (B, L, D), counting only positions where mask (B, L) is True."""
    if mask is None:
        return x.mean(dim=1)
    m = mask[..., None].to(x.dtype)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


@register_model("cross-attention", sequence_options={"variant": "sequence"},
                config_options=lambda cfg: {"variant": cfg.cross_attention})
class CrossAttentionFusion(GenreModel):
    def __init__(
        self,
        text_dim: int,
        image_dim: int,
        num_labels: int = 23,
        *,
        variant: str = "pooled",
        d_model: int = 512,
        num_heads: int = 8,
        attn_dropout: float = 0.0,
        **common,
    ):
        if variant not in VARIANTS:
            raise ValueError(f"cross-attention variant must be one of {VARIANTS}, got {variant!r}")
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        super().__init__(text_dim, image_dim, num_labels, **common)
        self.variant = variant
        self.uses_sequences = variant == "sequence"
        self.text_proj = nn.Linear(text_dim, d_model)
        self.image_proj = nn.Linear(image_dim, d_model)
        self.text_to_image = nn.MultiheadAttention(d_model, num_heads, dropout=attn_dropout, batch_first=True)
        self.image_to_text = nn.MultiheadAttention(d_model, num_heads, dropout=attn_dropout, batch_first=True)
        self.text_norm = nn.LayerNorm(d_model)
        self.image_norm = nn.LayerNorm(d_model)
        self.head = self.make_head(2 * d_model)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.prepare(batch)
        if self.uses_sequences:
            t, t_mask, v, v_mask = x["text_seq"], x["text_seq_mask"], x["image_seq"], x["image_seq_mask"]
        else:  # one position per side: nothing to mask
            t, t_mask, v, v_mask = x["text"][:, None], None, x["image"][:, None], None
        t, v = self.text_proj(t), self.image_proj(v)
        # key_padding_mask wants True where a key is padding, the opposite of our masks.
        t2v, w_t2v = self.text_to_image(t, v, v, key_padding_mask=None if v_mask is None else ~v_mask)
        v2t, w_v2t = self.image_to_text(v, t, t, key_padding_mask=None if t_mask is None else ~t_mask)
        t, v = self.text_norm(t + t2v), self.image_norm(v + v2t)
        fused = torch.cat([masked_mean(t, t_mask), masked_mean(v, v_mask)], dim=-1)
        return {"logits": self.head(fused), "attn_text_to_image": w_t2v, "attn_image_to_text": w_v2t}
