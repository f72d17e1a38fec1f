"""The inference-time preprocessing that needs no torch: the thesis's text normalisation and a poster's eval
pixels. The torch encoders (encoders/text.py, images.PosterTransform) and the exported ONNX runtime (exported.py)
both call these, so an exported model sees exactly the inputs the torch model saw.

numpy and PIL only: imported by the torch-free serving path.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from PIL import Image

# The thesis' text normalisation: keep letters, digits, whitespace and basic punctuation; everything else
# (including '_') becomes a space.
_NOT_KEPT = re.compile(r"[^\w\s.,!?'\-]|_")


def normalise_text(text: str) -> str:
    """Lower-case, replace anything but letters/digits/whitespace/.,!?'- with a space, collapse whitespace."""
    return " ".join(_NOT_KEPT.sub(" ", text.lower()).split())


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
