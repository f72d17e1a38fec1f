"""Reading movies: the official MM-IMDb layout and users' own CSV / JSONL catalogs.

Every movie keeps whatever modalities it has (a plot, a poster, or both); what is missing is explicit, never
silently dropped. Input that cannot be read is reported as a `Problem` naming the file: by default the movie is
skipped and counted, with `strict=True` the first problem raises `DataError`.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .labels import GENRES, canonical_genre, multi_hot

SPLITS = ("train", "dev", "test")
CATALOG_COLUMNS = {"id", "plot", "genres", "poster", "split", "title", "year"}
POSTER_SUFFIXES = (".jpeg", ".jpg", ".png")


class DataError(ValueError):
    """Bad input in strict mode (or input so broken that nothing can be read)."""


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str  # malformed_json | not_utf8 | bad_poster | empty_file | missing_file | bad_field | unknown_column
    message: str
    movie_id: str | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Movie:
    id: str
    plot: str | None  # None when the movie has no (non-empty) plot
    genres: tuple[str, ...]  # benchmark genres only
    poster: Path | None  # None when the movie has no readable poster
    poster_sha256: str | None = None  # content hash: keys the image feature cache
    title: str | None = None

    @property
    def has_plot(self) -> bool:
        return self.plot is not None

    @property
    def has_poster(self) -> bool:
        return self.poster is not None

    @property
    def text_key(self) -> str | None:
        return hashlib.sha256(self.plot.encode("utf-8")).hexdigest() if self.plot is not None else None


@dataclass
class LoadReport:
    """What reading a dataset found besides the movies: problems, dropped labels, excluded movies."""

    source: str
    problems: list[Problem] = field(default_factory=list)
    dropped_genres: Counter = field(default_factory=Counter)  # non-benchmark genre -> occurrences
    excluded_no_label: list[str] = field(default_factory=list)  # ids left with no benchmark genre
    unlisted_files: int = 0  # dataset/*.json not named in split.json (not loaded)

    def skipped_by_kind(self) -> Counter:
        return Counter(p.kind for p in self.problems if p.kind != "unknown_column")


@dataclass
class MovieDataset:
    movies: list[Movie]
    splits: dict[str, list[int]]  # split name -> indices into movies
    report: LoadReport
    root: Path
    split_mode: str = "official"

    def __len__(self) -> int:
        return len(self.movies)

    def labels(self, indices: Iterable[int] | None = None) -> np.ndarray:
        idx = range(len(self.movies)) if indices is None else indices
        return multi_hot(self.movies[i].genres for i in idx)

    def subset(self, keep: Iterable[int]) -> "MovieDataset":
        """A dataset of the kept movies, splits remapped (used by the modality filter)."""
        keep = sorted(set(keep))
        remap = {old: new for new, old in enumerate(keep)}
        splits = {s: [remap[i] for i in idx if i in remap] for s, idx in self.splits.items()}
        return MovieDataset([self.movies[i] for i in keep], splits, self.report, self.root, self.split_mode)

    def fingerprint(self) -> str:
        """Hash of everything a model sees: ids, plots, labels, poster bytes and the split assignment."""
        h = hashlib.sha256()
        for m in self.movies:
            h.update(f"{m.id}\0{m.text_key}\0{'|'.join(m.genres)}\0{m.poster_sha256}\n".encode())
        for s in sorted(self.splits):
            h.update(f"{s}:{','.join(self.movies[i].id for i in self.splits[s])}\n".encode())
        return h.hexdigest()


class _Collector:
    """Collects problems; raises at once in strict mode."""

    def __init__(self, report: LoadReport, strict: bool):
        self.report, self.strict = report, strict

    def __call__(self, path: Path | str, kind: str, message: str, movie_id: str | None = None) -> None:
        problem = Problem(str(path), kind, message, movie_id)
        if self.strict:
            raise DataError(str(problem))
        self.report.problems.append(problem)


def read_poster(path: Path) -> str:
    """Check a poster with the one poster decoder (images.decode_poster: format, size limit, every byte decoded)
    and return the sha256 of its bytes, which keys the image feature cache. Raises PosterError with the reason.

    The check decodes JPEGs at reduced scale (draft mode still walks the whole entropy-coded stream, so truncation
    is caught at a fraction of the cost of a full decode)."""
    from .posters import decode_poster

    data = path.read_bytes()
    decode_poster(data, str(path), max_side=64)
    return hashlib.sha256(data).hexdigest()


def _plot_text(raw: Any, plot_mode: str) -> str | None:
    """MM-IMDb stores `plot` as a list of paragraphs or summaries. 'join' keeps all of them; 'longest' keeps only
    the longest one, as Arevalo et al.'s make_dataset.py did."""
    if raw is None:
        return None
    parts = [raw] if isinstance(raw, str) else list(raw)
    if not all(isinstance(p, str) for p in parts):
        raise ValueError("`plot` must be a string or a list of strings")
    parts = [p.strip() for p in parts if p and p.strip()]
    if not parts:
        return None
    return max(parts, key=len) if plot_mode == "longest" else " ".join(parts)


def _genres(raw: Any, report: LoadReport) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [g for g in raw.split("|")]
    if not isinstance(raw, list) or not all(isinstance(g, str) for g in raw):
        raise ValueError("`genres` must be a list of strings or a '|'-separated string")
    kept: list[str] = []
    for g in raw:
        if not g.strip():
            continue
        c = canonical_genre(g)
        if c is None:
            report.dropped_genres[g.strip()] += 1
        elif c not in kept:
            kept.append(c)
    return tuple(sorted(kept, key=GENRES.index))


def _make_movie(mid: str, record: dict, poster: Path | None, path: Path, report: LoadReport, problem: _Collector,
                plot_mode: str, require_labels: bool) -> Movie | None:
    try:
        plot = _plot_text(record.get("plot"), plot_mode)
        if "genres" in record and record["genres"] not in (None, ""):
            genres = _genres(record["genres"], report)
        elif require_labels:
            raise ValueError("no `genres` field")
        else:
            genres = ()
    except ValueError as exc:
        problem(path, "bad_field", str(exc), mid)
        return None
    poster_sha = None
    if poster is not None:
        if not poster.exists():
            problem(poster, "missing_file", "poster file named by the catalog does not exist", mid)
            return None
        try:
            poster_sha = read_poster(poster)
        except ValueError as exc:  # PosterError: its message already names the file
            kind = {"empty": "empty_file", "too_large": "poster_too_large"}.get(getattr(exc, "kind", ""), "bad_poster")
            problem(poster, kind, getattr(exc, "reason", str(exc)), mid)
            return None
    if require_labels and not genres:
        report.excluded_no_label.append(mid)
        return None
    if plot is None and poster is None:
        problem(path, "bad_field", "movie has neither a plot nor a poster", mid)
        return None
    return Movie(mid, plot, genres, poster, poster_sha, record.get("title"))


def _read_json(path: Path) -> dict:
    data = path.read_bytes()
    if not data:
        raise _ReadError("empty_file", "zero-byte file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _ReadError("not_utf8", f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _ReadError("malformed_json", f"malformed JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    if not isinstance(record, dict):
        raise _ReadError("malformed_json", "expected a JSON object")
    return record


class _ReadError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


def load_mmimdb(root: str | Path, strict: bool = False, plot_mode: str = "join") -> MovieDataset:
    """Read `root/split.json` + `root/dataset/<id>.json|.jpeg` (the official MM-IMDb layout).

    The movies are those named in split.json (its `dev` key may be called `val`); without split.json every
    `dataset/*.json` is read and only the stratified split is available.
    """
    root = Path(root)
    ds_dir = root / "dataset"
    if not ds_dir.is_dir():
        raise DataError(f"{root}: not an MM-IMDb folder (no dataset/ subfolder)")
    report = LoadReport(str(root))
    problem = _Collector(report, strict)
    split_file = root / "split.json"
    listed: dict[str, list[str]] | None = None
    if split_file.exists():
        try:
            raw = _read_json(split_file)
        except _ReadError as exc:
            raise DataError(f"{split_file}: {exc.message}") from None
        if "dev" not in raw and "val" in raw:
            raw["dev"] = raw.pop("val")
        missing = [s for s in SPLITS if s not in raw]
        if missing:
            raise DataError(f"{split_file}: missing split(s) {missing}; expected keys train/dev/test (or val)")
        listed = {s: [str(i) for i in raw[s]] for s in SPLITS}
        ids = [i for s in SPLITS for i in listed[s]]
        report.unlisted_files = len({p.stem for p in ds_dir.glob("*.json")} - set(ids))
    else:
        ids = sorted(p.stem for p in ds_dir.glob("*.json"))

    movies: list[Movie] = []
    index: dict[str, int] = {}
    for mid in ids:
        if mid in index:
            problem(split_file, "bad_field", f"id {mid} listed more than once", mid)
            continue
        path = ds_dir / f"{mid}.json"
        if not path.exists():
            problem(path, "missing_file", "listed in split.json but the file does not exist", mid)
            continue
        try:
            record = _read_json(path)
        except _ReadError as exc:
            problem(path, exc.kind, exc.message, mid)
            continue
        poster = next((ds_dir / f"{mid}{s}" for s in POSTER_SUFFIXES if (ds_dir / f"{mid}{s}").exists()), None)
        movie = _make_movie(mid, record, poster, path, report, problem, plot_mode, require_labels=True)
        if movie is not None:
            index[mid] = len(movies)
            movies.append(movie)

    splits = {s: [index[i] for i in listed[s] if i in index] for s in SPLITS} if listed else {}
    return MovieDataset(movies, splits, report, root, "official" if listed else "none")


def load_catalog(path: str | Path, strict: bool = False, plot_mode: str = "join",
                 require_labels: bool = True) -> MovieDataset:
    """Read a user's CSV or JSONL catalog: columns `id`, `plot`, `genres` (list or '|'-separated), optional
    `poster` (path relative to the catalog file) and `split` (train/dev/test)."""
    path = Path(path)
    report = LoadReport(str(path))
    problem = _Collector(report, strict)
    if not path.exists():
        raise DataError(f"{path}: catalog file does not exist")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None

    rows: list[tuple[str, dict]] = []  # (location for messages, record)
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        columns = set(reader.fieldnames or [])
        for col in sorted(columns - CATALOG_COLUMNS):
            problem(path, "unknown_column", f"unknown column {col!r} (known: {sorted(CATALOG_COLUMNS)}); ignored")
        for n, rec in enumerate(reader, start=2):
            rows.append((f"{path}:{n}", dict(rec)))
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        unknown: set[str] = set()
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("expected a JSON object")
            except (json.JSONDecodeError, ValueError) as exc:
                problem(f"{path}:{n}", "malformed_json", f"malformed JSON line ({exc})")
                continue
            for col in set(rec) - CATALOG_COLUMNS - unknown:
                unknown.add(col)
                problem(f"{path}:{n}", "unknown_column", f"unknown field {col!r} (known: {sorted(CATALOG_COLUMNS)}); ignored")
            rows.append((f"{path}:{n}", rec))
    else:
        raise DataError(f"{path}: unsupported catalog type {path.suffix!r} (use .csv or .jsonl)")

    movies: list[Movie] = []
    split_of: dict[int, str] = {}
    seen: set[str] = set()
    for loc, rec in rows:
        mid = str(rec.get("id") or "").strip()
        if not mid:
            problem(loc, "bad_field", "row has no `id`")
            continue
        if mid in seen:
            problem(loc, "bad_field", f"duplicate id {mid}", mid)
            continue
        poster_rel = (rec.get("poster") or "").strip() if isinstance(rec.get("poster"), str) else None
        poster = (path.parent / poster_rel) if poster_rel else None
        movie = _make_movie(mid, rec, poster, Path(loc), report, problem, plot_mode, require_labels)
        if movie is None:
            continue
        seen.add(mid)
        split = str(rec.get("split") or "").strip().lower()
        if split:
            split = "dev" if split == "val" else split
            if split not in SPLITS:
                problem(loc, "bad_field", f"unknown split {split!r} (use train/dev/test)", mid)
                continue
            split_of[len(movies)] = split
        movies.append(movie)
    splits = {s: [i for i, sp in split_of.items() if sp == s] for s in SPLITS} if split_of else {}
    return MovieDataset(movies, splits, report, path.parent, "official" if splits else "none")


def load_dataset(path: str | Path, split: str = "official", modalities: str = "any", strict: bool = False,
                 plot_mode: str = "join", seed: int = 1234) -> MovieDataset:
    """The one entry point: read a folder (MM-IMDb layout) or a catalog, choose the split, filter modalities.

    split: 'official' (split.json / the catalog's `split` column) or 'stratified' (Arevalo et al.'s sampling).
    modalities: 'any' keeps every movie; 'both' keeps only movies with a poster and a plot. The filter is applied
    before a stratified split is drawn, so the split is balanced over the movies actually used.
    """
    from .splits import stratified_split

    path = Path(path)
    ds = load_mmimdb(path, strict, plot_mode) if path.is_dir() else load_catalog(path, strict, plot_mode)
    if modalities not in ("any", "both"):
        raise ValueError(f"modalities must be 'any' or 'both', not {modalities!r}")
    if modalities == "both":
        ds = ds.subset(i for i, m in enumerate(ds.movies) if m.has_plot and m.has_poster)
    if split == "stratified":
        ds.splits = stratified_split(ds.labels(), seed=seed)
        ds.split_mode = "stratified"
    elif split == "official":
        if not ds.splits:
            raise DataError(f"{path}: no official split (no split.json / `split` column); use split='stratified'")
    else:
        raise ValueError(f"split must be 'official' or 'stratified', not {split!r}")
    return ds
