"""The MM-IMDb label vocabulary: the 23 benchmark genres, in the benchmark's order (most to least frequent)."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

GENRES: tuple[str, ...] = (
    "Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror", "Mystery",
    "Documentary", "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History", "Music", "Animation",
    "Musical", "Western", "Sport", "Short", "Film-Noir",
)

# IMDb spells a few genres differently across sources; map them onto the benchmark's spelling.
_ALIASES = {"science fiction": "Sci-Fi", "sci fi": "Sci-Fi", "scifi": "Sci-Fi", "film noir": "Film-Noir",
            "noir": "Film-Noir", "biopic": "Biography", "musicals": "Musical"}
_CANONICAL = {g.lower(): g for g in GENRES}


def canonical_genre(name: str) -> str | None:
    """The benchmark spelling of `name`, or None when it is not one of the 23 genres."""
    key = name.strip().lower()
    return _CANONICAL.get(key) or _ALIASES.get(key)


def multi_hot(genres_per_movie: Iterable[Iterable[str]], vocab: tuple[str, ...] = GENRES) -> np.ndarray:
    index = {g: i for i, g in enumerate(vocab)}
    rows = list(genres_per_movie)
    y = np.zeros((len(rows), len(vocab)), dtype=np.float32)
    for r, genres in enumerate(rows):
        for g in genres:
            y[r, index[g]] = 1.0
    return y
