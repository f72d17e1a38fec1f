"""The inference-time preprocessing that needs no torch: the thesis's text normalisation and a poster's eval
pixels. The torch encoders (encoders/text.py, images.PosterTransform) and the exported ONNX runtime (exported.py)
both call these, so an exported model sees exactly the inputs the torch model saw.

numpy and PIL only: imported by the torch-free serving path.
"""
from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image

@lru_cache(maxsize=1)
def _not_kept():
    import regex

    # The thesis' text normalisation keeps letters, digits, whitespace and basic punctuation; everything else
    # (including '_') becomes a space. Its regex ([^\w\s.,!?'\-]|_) dropped combining marks, which are not \w:
    # Devanagari and Thai vowel signs, Hangul or accents typed as a base letter + a combining mark. By Unicode
    # category instead: letters (L), marks (M), numbers (N), whitespace, the thesis' .,!?'- and the sentence ends
    # of other scripts (Sentence_Terminal: 。！？؟। ..., whose ASCII members are exactly . ! ?), so a Japanese
    # plot keeps its full stops as an English one does.
    return regex.compile(r"[^\p{L}\p{M}\p{N}\s.,!?'\-\p{Sentence_Terminal}]")


def normalise_text(text: str) -> str:
    """Lower-case, replace anything but letters, marks, digits, whitespace, .,!?'- and sentence ends with a
    space, collapse whitespace. Unicode-aware: Hangul, kana, kanji and accented letters are kept.

    The text is put in NFC first (lower-casing can decompose: 'İ' -> 'i' + U+0307), so an accent typed as a
    combining mark and its precomposed letter give the same output. NFC, not NFKC: canonical composition changes
    no character's meaning or look, whereas NFKC's compatibility folding (full-width forms, '½' -> '1⁄2', Hangul
    compatibility jamo -> conjoining jamo) is each tokenizer's own business (XLM-R applies it, BERT does not).
    English text comes out exactly as under the thesis' regex (checked on every plot of the MM-IMDb sample)."""
    return " ".join(_not_kept().sub(" ", unicodedata.normalize("NFC", text.lower())).split())


def eval_pixels(img: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The eval transform: RGB, resized to size x size (bilinear, antialiased; posters are squashed, not cropped),
    scaled to [0, 1] and normalised per channel -> float32 (3, size, size)."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    img = img.resize((int(size), int(size)), Image.BILINEAR)
    x = (np.asarray(img, dtype=np.float32) / np.float32(255.0)).transpose(2, 0, 1)
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return (x - m) / s
