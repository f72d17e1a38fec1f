"""Corruptions of a plot or a poster, as MultiBench measures robustness (Liang et al., 2021): each one is a pure
function `apply(item, level, rng) -> item` of a level in [0, 1] (MultiBench's noise level), the identity at level 0
and stronger as the level grows.

    plot:   word_dropout  each word dropped with probability `level` (at least one word is kept)
            truncation    only the first ceil((1 - level) * n) of the plot's n words are kept (at least one)
            typos         each word of 3+ letters gets one typo with probability `level`: two adjacent letters
                          swapped, a letter replaced by a QWERTY neighbour, a letter doubled, or a letter dropped
                          (MultiBench's text noise, its shuffle of whole words left out)
            missing_plot  the plot removed with probability `level` (the movie then has no plot)
    poster: blur          Gaussian blur, standard deviation `level` x (shorter side / 25) pixels
            jpeg          re-compressed as a JPEG at quality round(100 x (1 - level)) (1 at least), decoded again by
                          posters.decode_poster
            crop          a random crop keeping 1 - 0.9 x `level` of the area, the poster's aspect ratio kept (the
                          encoder then resizes it, so the model sees a zoomed-in part)
            occlusion     a random rectangle covering `level` of the area, filled with the ImageNet mean grey
            greyscale     colour saturation reduced by `level` (1: fully grey)
            missing_poster the poster removed with probability `level`

Randomness: each call draws from the `rng` it is given (random.Random), always the same number of draws whatever
the level, so one movie's generator seeded the same way gives nested corruptions: the words dropped at level 0.2
are among those dropped at 0.4, the crop at 0.8 lies inside the crop at 0.4 around the same point. `movie_rng`
seeds one generator per (seed, corruption, movie), independent of the level, of the order movies come in and of
which other movies or corruptions are run, so a curve is reproducible from its seed alone.

PIL only (no torch): the CLI parser imports this module for the choices.
"""
from __future__ import annotations

import hashlib
import io
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageEnhance, ImageFilter

from ...data.posters import decode_poster

MEAN_GREY = (124, 116, 104)  # ImageNet's mean colour: an occluded patch normalises to about zero
TYPO_MIN_LETTERS = 3
_SPACE = re.compile(r"(\s+)")
# Neighbouring keys on a QWERTY keyboard (MultiBench's table).
QWERTY = {
    "q": "was", "w": "qesad", "e": "wrsdf", "r": "etdfg", "t": "ryfgh", "y": "tughj", "u": "yihjk", "i": "uojkl",
    "o": "ipkl", "p": "ol", "a": "qwsz", "s": "awedxz", "d": "serfcx", "f": "drtgvc", "g": "ftyhbv", "h": "gyujnb",
    "j": "huikmn", "k": "jiolm", "l": "kop", "z": "asx", "x": "zsdc", "c": "xdfv", "v": "cfgb", "b": "vghn",
    "n": "bhjm", "m": "njk",
}


def check_level(level: float) -> float:
    level = float(level)
    if not 0.0 <= level <= 1.0:  # also refuses NaN
        raise ValueError(f"a corruption level must lie in [0, 1], got {level!r}")
    return level


def movie_rng(seed: int, corruption: str, movie_id: str) -> random.Random:
    """The generator of one movie under one corruption: a stable hash (not Python's salted hash()) of the three."""
    digest = hashlib.sha256(f"{seed}\0{corruption}\0{movie_id}".encode("utf-8", "surrogatepass")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# -- plots --------------------------------------------------------------------------------------------------------
def word_dropout(plot: str, level: float, rng: random.Random) -> str:
    """Each whitespace-separated word is dropped with probability `level`; the kept words are joined by single
    spaces. When every word would go, the one that would go last is kept (a plot is never empty)."""
    level = check_level(level)
    words = plot.split()
    draws = [rng.random() for _ in words]
    if level == 0 or not words:
        return plot
    kept = [w for w, u in zip(words, draws) if u >= level]
    return " ".join(kept) if kept else words[max(range(len(words)), key=draws.__getitem__)]


def truncation(plot: str, level: float, rng: random.Random | None = None) -> str:
    """The first ceil((1 - level) x n) of the plot's n words (one at least), joined by single spaces; the plot
    itself when that is all of them."""
    level = check_level(level)
    words = plot.split()
    keep = max(1, math.ceil(round((1.0 - level) * len(words), 9)))  # round: 0.8 * 10 is 8.000000000000002
    return plot if keep >= len(words) else " ".join(words[:keep])


def _typo(word: str, op: int, u: float, v: float) -> str:
    """One typo in `word` (which has 3+ letters): `op` chooses the kind, `u` the letter, `v` the replacement. Always
    changes the word: a swap with no two different adjacent letters, or a letter without QWERTY neighbours,
    drops the letter instead."""
    letters = [i for i, ch in enumerate(word) if ch.isalpha()]
    pick = lambda seq: seq[min(int(u * len(seq)), len(seq) - 1)]  # noqa: E731
    if op == 0:  # swap two adjacent letters (that differ, or nothing would change)
        pairs = [(a, b) for a, b in zip(letters, letters[1:]) if b == a + 1 and word[a] != word[b]]
        if pairs:
            a, b = pick(pairs)
            return word[:a] + word[b] + word[a] + word[b + 1:]
        op = 3
    i = pick(letters)
    if op == 1:  # a QWERTY neighbour instead of the letter
        near = QWERTY.get(word[i].lower())
        if near:
            key = near[min(int(v * len(near)), len(near) - 1)]
            return word[:i] + (key.upper() if word[i].isupper() else key) + word[i + 1:]
        op = 3
    if op == 2:  # a sticky key: the letter doubled
        return word[:i + 1] + word[i] + word[i + 1:]
    return word[:i] + word[i + 1:]  # a letter left out


def typos(plot: str, level: float, rng: random.Random) -> str:
    """Each word of at least 3 letters gets one typo (see _typo) with probability `level`; the whitespace between
    words is kept as it was, so only the words with a typo differ."""
    level = check_level(level)
    parts = _SPACE.split(plot)
    out = []
    for part in parts:
        if not part or part.isspace():
            out.append(part)
            continue
        hit, op, u, v = rng.random(), rng.randrange(4), rng.random(), rng.random()
        letters = sum(ch.isalpha() for ch in part)
        out.append(_typo(part, op, u, v) if hit < level and letters >= TYPO_MIN_LETTERS else part)
    return plot if level == 0 else "".join(out)


def removed(item: Any, level: float, rng: random.Random) -> Any:
    """None (the modality missing) with probability `level`, else the item unchanged."""
    level = check_level(level)
    return None if rng.random() < level else item


# -- posters ------------------------------------------------------------------------------------------------------
def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def blur(img: Image.Image, level: float, rng: random.Random | None = None) -> Image.Image:
    """Gaussian blur with standard deviation `level` x (shorter side / 25) pixels (PIL's radius is the standard
    deviation): relative to the poster, so a level means the same at any resolution."""
    level = check_level(level)
    if level == 0:
        return img
    return _rgb(img).filter(ImageFilter.GaussianBlur(level * min(img.size) / 25))


def jpeg_quality(level: float) -> int:
    return max(1, round(100 * (1 - check_level(level))))


def jpeg(img: Image.Image, level: float, rng: random.Random | None = None) -> Image.Image:
    """The poster saved as a JPEG at quality `jpeg_quality(level)` and decoded again by the one poster decoder."""
    if check_level(level) == 0:
        return img
    buf = io.BytesIO()
    _rgb(img).save(buf, format="JPEG", quality=jpeg_quality(level))
    return decode_poster(buf.getvalue(), name="re-compressed poster")


def _box(size: tuple[int, int], area: float, fx: float, fy: float) -> tuple[int, int, int, int]:
    """A box of `area` (a fraction) of an image of `size`, with its aspect ratio, placed at (fx, fy) in [0, 1)."""
    w, h = size
    s = math.sqrt(area)
    bw, bh = max(1, round(w * s)), max(1, round(h * s))
    left, top = round(fx * (w - bw)), round(fy * (h - bh))
    return left, top, left + bw, top + bh


def crop(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    """A random crop keeping 1 - 0.9 x `level` of the area (10% at level 1), the aspect ratio kept."""
    level = check_level(level)
    fx, fy = rng.random(), rng.random()
    if level == 0:
        return img
    return _rgb(img).crop(_box(img.size, 1 - 0.9 * level, fx, fy))


def occlusion(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    """A rectangle of the poster's aspect ratio covering `level` of its area, at a random place, in mean grey."""
    level = check_level(level)
    fx, fy = rng.random(), rng.random()
    if level == 0:
        return img
    out = _rgb(img).copy()
    out.paste(MEAN_GREY, _box(img.size, level, fx, fy))
    return out


def greyscale(img: Image.Image, level: float, rng: random.Random | None = None) -> Image.Image:
    """Saturation reduced by `level`: a blend with the poster's greyscale version (ImageEnhance.Color)."""
    level = check_level(level)
    if level == 0:
        return img
    return ImageEnhance.Color(_rgb(img)).enhance(1.0 - level)


# -- the table ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Corruption:
    name: str
    modality: str  # "text" | "image"
    title: str  # a chart's title
    apply: Callable[[Any, float, random.Random], Any]
    describe: Callable[[float], str]  # what a level means, for tables

    @property
    def removes(self) -> bool:
        """Whether it takes the modality away (the movie then lacks it) rather than changing it."""
        return self.apply is removed


CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("word_dropout", "text", "Plot: word dropout", word_dropout,
               lambda s: "one word kept" if s == 1 else f"{s:.0%} of words dropped"),
    Corruption("truncation", "text", "Plot: truncated to its first words", truncation,
               lambda s: "the first word only" if s == 1 else f"first {1 - s:.0%} of words kept"),
    Corruption("typos", "text", "Plot: typos", typos, lambda s: f"{s:.0%} of words with a typo"),
    Corruption("missing_plot", "text", "Plot removed", removed, lambda s: f"{s:.0%} of plots removed"),
    Corruption("blur", "image", "Poster: Gaussian blur", blur, lambda s: f"σ = {s / 25:.3f} × shorter side"),
    Corruption("jpeg", "image", "Poster: JPEG re-compression", jpeg,
               lambda s: "original" if s == 0 else f"quality {jpeg_quality(s)}"),
    Corruption("crop", "image", "Poster: random crop", crop, lambda s: f"{1 - 0.9 * s:.0%} of the area kept"),
    Corruption("occlusion", "image", "Poster: random occlusion", occlusion, lambda s: f"{s:.0%} of the area covered"),
    Corruption("greyscale", "image", "Poster: greyscale", greyscale, lambda s: f"saturation −{s:.0%}"),
    Corruption("missing_poster", "image", "Poster removed", removed, lambda s: f"{s:.0%} of posters removed"),
)}
DEFAULT_LEVELS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def get_corruption(name: str) -> Corruption:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; corruptions: {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[name]
