"""What both readers (the MM-IMDb folder in data.py, users' catalogs in catalog.py) share: the movie and dataset
types, the problems found in input, and the checks every file, id and field goes through.

Nothing here trusts its input: a field of the wrong type is named and its movie skipped, an id that is not a plain
file name is refused, an id listed twice is used once, and an id listed in two splits reaches neither. Ids are
compared by `id_key` (Unicode NFKC, case folded), so a duplicate cannot hide behind a normalisation form.
"""
from __future__ import annotations

import hashlib
import json
import re
import stat
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .labels import GENRES, canonical_genre, multi_hot
from .posters import PosterError, decode_poster
from .visible import is_blank

SPLITS = ("train", "dev", "test")
CATALOG_COLUMNS = {"id", "plot", "genres", "poster", "split", "title", "year"}
MAX_ID_CHARS = 200  # longer is no movie id (and near the 255-byte file-name limit once '.json' is added)
MAX_POSTER_BYTES = 64 * 2**20  # a poster file larger than this is refused before it is read into memory

# Problem kinds. Each one skips an entry (a movie, a catalog row, or one listing of an id) and is counted, except
# the notices, which name something ignored while nothing was skipped.
#   missing_file  unreadable  file_too_large  empty_file  not_utf8  malformed_json   (the file itself)
#   bad_field (a field's type or value)  bad_id (not a plain file name)  no_split (catalog row without a split)
#   duplicate_id (an id listed again in the same split)  ambiguous_split (an id listed in two splits)
#   bad_poster  poster_too_large  poster_outside (a catalog's poster outside the catalog's folder, see catalog.py)
NOTICE_KINDS = frozenset({"unknown_column", "unknown_key"})


class DataError(ValueError):
    """Bad input in strict mode (or input so broken that nothing can be read)."""


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str
    message: str
    movie_id: str | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    @property
    def skipped(self) -> bool:
        return self.kind not in NOTICE_KINDS


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
        return Counter(p.kind for p in self.problems if p.skipped)


@dataclass
class MovieDataset:
    movies: list[Movie]
    splits: dict[str, list[int]]  # split name -> indices into movies
    report: LoadReport
    root: Path
    split_mode: str = "official"

    def __post_init__(self) -> None:
        self.check_invariants()

    def __len__(self) -> int:
        return len(self.movies)

    def check_invariants(self) -> None:
        """No movie twice (ids compared by id_key: Unicode NFKC, case-insensitively), none listed twice in a split,
        none in two splits: a movie in train and test would leak into the test score. Raises AssertionError (a bug,
        not bad input)."""
        counts = Counter(id_key(m.id) for m in self.movies)
        twice = next((k for k, n in counts.items() if n > 1), None)
        if twice is not None:
            raise AssertionError(f"movie id {twice!r} appears {counts[twice]} times in the dataset")
        where: dict[int, str] = {}
        for split, idx in self.splits.items():
            for i in idx:
                if not isinstance(i, (int, np.integer)) or not 0 <= i < len(self.movies):
                    raise AssertionError(f"split {split!r} holds {i!r}, not the index of one of {len(self)} movies")
                if i in where:
                    mid = self.movies[i].id
                    raise AssertionError(f"movie {mid} is listed twice in {split}" if where[i] == split
                                         else f"movie {mid} is in both {where[i]} and {split}")
                where[i] = split

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


def printable(text: str) -> str:
    """Text safe to print and to write as UTF-8: control characters and the unpaired surrogates that a file name
    which is not UTF-8 decodes to are shown escaped (a NUL or an escape sequence never reaches the terminal)."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Collector:
    """Collects problems; raises at once in strict mode."""

    def __init__(self, report: LoadReport, strict: bool):
        self.report, self.strict = report, strict

    def __call__(self, path: Path | str, kind: str, message: str, movie_id: str | None = None) -> None:
        problem = Problem(printable(str(path)), kind, printable(message), movie_id)
        if self.strict:
            raise DataError(str(problem))
        self.report.problems.append(problem)


def nothing_loaded(source: str | Path, report: LoadReport) -> DataError:
    """The error for input in which every movie was skipped: the counts per reason and the first problem, instead
    of a later, unrelated failure (an empty split, no labels)."""
    reasons = [f"{kind} {n:,}" for kind, n in report.skipped_by_kind().most_common()]
    if report.excluded_no_label:
        reasons.append(f"no benchmark genre {len(report.excluded_no_label):,}")
    first = next((p for p in report.problems if p.skipped), None)
    return DataError(f"{source}: no usable movies, every movie was skipped ({', '.join(reasons) or 'no reason'})"
                     + (f"; first: {first}" if first else ""))


def assemble(found: list[tuple[Movie, str | None]], with_split: bool, report: LoadReport, source: str | Path,
             root: Path) -> MovieDataset:
    """The dataset a reader found: its movies with the split each was listed in (its official split when the
    input gives one). Input in which every movie was skipped is an error naming the reasons."""
    if not found:
        raise nothing_loaded(source, report)
    splits = {s: [i for i, (_, sp) in enumerate(found) if sp == s] for s in SPLITS} if with_split else {}
    return MovieDataset([m for m, _ in found], splits, report, root, "official" if with_split else "none")


# -- reading files -----------------------------------------------------------------------------------------------
class ReadError(Exception):
    """A file that cannot be used; `kind` is a problem kind."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


def describe(value: Any) -> str:
    """A wrong value as a message shows it: its type (JSON's null for None) and a short repr, control
    characters escaped."""
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def read_bytes(path: Path, max_bytes: int | None = None) -> bytes:
    """A regular file's bytes (symlinks followed). A directory, device or FIFO is refused before it is opened:
    /dev/zero would never end and a FIFO would block."""
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(st.st_mode):
            raise ReadError("unreadable", "not a regular file (a device, FIFO or socket)")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ReadError("file_too_large", f"file is {st.st_size:,} bytes, over the limit of {max_bytes:,}")
        return path.read_bytes()
    except FileNotFoundError:
        raise ReadError("missing_file", "does not exist" + (" (a broken symlink)" if path.is_symlink() else "")
                        ) from None
    except IsADirectoryError:
        raise ReadError("unreadable", "is a directory, not a file") from None
    except OSError as exc:  # permission denied, I/O error, a name the OS rejects ...
        raise ReadError("unreadable", f"cannot be read ({exc.strerror or exc})") from None
    except ValueError:  # the only one os.stat raises: a NUL in the path
        raise ReadError("unreadable", "cannot be read (the path holds a NUL character)") from None


def decode_utf8(data: bytes) -> str:
    if not data:
        raise ReadError("empty_file", "empty file (zero bytes)")
    try:
        return data.decode("utf-8-sig")  # a byte-order mark is harmless: drop it
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ReadError("not_utf8", f"not valid UTF-8 ({exc.reason} at byte {exc.start}, line {line})") from None


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:  # json.loads would silently keep the last value
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_json_object(text: str) -> dict:
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise ReadError("malformed_json", f"malformed JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    except _DuplicateKey as exc:
        raise ReadError("malformed_json", f"key {exc.args[0]!r} appears more than once in an object "
                                          "(which value counts is ambiguous)") from None
    except RecursionError:
        raise ReadError("malformed_json", "JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise ReadError("malformed_json", f"expected a JSON object {{...}}, got {describe(value)}")
    return value


# -- ids and splits ------------------------------------------------------------------------------------------------
def id_problem(mid: str) -> str | None:
    """Why `mid` cannot be a movie id, or None. An id names a file (dataset/<id>.json), so only a plain file name
    passes: no path separator, no leading '.' (hidden files, '.', '..'), no control or invisible formatting
    characters, no surrounding whitespace, at most MAX_ID_CHARS characters."""
    if not mid:
        return "it is empty"
    if len(mid) > MAX_ID_CHARS:
        return f"it is {len(mid):,} characters long (at most {MAX_ID_CHARS})"
    if "/" in mid or "\\" in mid:
        return "it holds a path separator"
    if mid.startswith("."):
        return "it starts with '.'"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in mid):
        return "it holds control characters (or an unpaired surrogate)"
    if mid != mid.strip():
        return "it has leading or trailing whitespace"
    return None


def id_key(mid: str) -> str:
    """What two ids are compared by: the same key means the same movie. The id is stripped of surrounding
    whitespace, brought to Unicode NFKC (compatibility composition: 'é' written as one code point (NFC) or as 'e'
    plus a combining accent (NFD) become one; full-width digits and letters '１２３' become '123'; ligatures and
    other compatibility forms such as 'ﬁ' become 'fi'), then case folded ('TT01' is 'tt01', 'ß' is 'ss') and
    brought to NFKC again (folding can undo it). Only for comparing: a movie keeps its id as written, since on
    MM-IMDb's layout the id names its file, byte for byte."""
    key = unicodedata.normalize("NFKC", mid.strip()).casefold()
    return unicodedata.normalize("NFKC", key)


def show_id(mid: str) -> str:
    text = repr(mid)
    return text if len(text) <= 60 else text[:57] + "...'"


@dataclass
class Entry:
    """One listing of a movie: in split.json, a dataset/ file, or a catalog row."""

    id: str
    split: str | None
    where: str  # the file (and line) that lists it: the problem's path
    ref: str  # where inside it, for messages: "line 3", "`train` item 7"
    record: Any = None


def dedupe(entries: list[Entry], problem: Callable[..., None]) -> list[Entry]:
    """One entry per movie, ids compared by id_key: case-insensitively (tt01.json and TT01.json are one file on a
    case-insensitive file system) and after Unicode normalisation (NFKC: 'été' in NFC and in NFD, '１２３' and
    '123' are one movie; macOS file systems store names in a decomposed form). An id listed again in the same split
    is used once and each extra listing counted (duplicate_id). An id listed in two splits is ambiguous and would
    carry a training movie into the test score, so it is excluded from every split and counted once
    (ambiguous_split)."""
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        groups.setdefault(id_key(e.id), []).append(e)
    kept = []
    for group in groups.values():  # in order of first listing
        first = group[0]
        case = (" (ids that differ only by case or Unicode form are one movie: they name the same file on "
                "case-insensitive or normalising file systems)" if len({e.id for e in group}) > 1 else "")
        splits = list(dict.fromkeys(e.split for e in group))
        if len(splits) > 1:
            listed = ", ".join(f"{show_id(e.id)} in {e.split or 'no split'} ({e.ref})" for e in group)
            problem(first.where, "ambiguous_split", f"id listed in more than one split: {listed}{case}; "
                                                    "excluded from every split", first.id)
            continue
        for extra in group[1:]:
            problem(extra.where, "duplicate_id",
                    f"id {show_id(extra.id)} ({extra.ref}) is listed again in {extra.split or 'the same list'} "
                    f"(first: {first.ref}){case}; this entry is ignored, the movie is used once", extra.id)
        kept.append(first)
    return kept


# -- fields --------------------------------------------------------------------------------------------------------
class FieldError(ValueError):
    """A field of a record has the wrong type or value; the message names the field."""


def _encodable(texts: list[str], name: str) -> list[str]:
    """JSON's \\ud800 escapes decode to unpaired surrogates: valid JSON, but text that cannot be hashed, written
    or printed as UTF-8, so it fails here, named, instead of in the feature cache or on the console."""
    for t in texts:
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise FieldError(f"`{name}` holds an unpaired surrogate ({describe(t)}), not text") from None
    return texts


def _plot_text(raw: Any, plot_mode: str) -> str | None:
    """MM-IMDb stores `plot` as a list of paragraphs or summaries. 'join' keeps all of them; 'longest' keeps only
    the longest one, as Arevalo et al.'s make_dataset.py did. A paragraph with no visible character (whitespace,
    U+200B ..., see visible.py) is dropped, so a plot made only of them is a missing plot (None), counted as such."""
    if raw is None:
        return None
    if isinstance(raw, str):
        parts = [raw]
    elif isinstance(raw, list) and all(isinstance(p, str) for p in raw):
        parts = raw
    else:
        raise FieldError(f"`plot` must be a string or a list of strings, got {describe(raw)}")
    parts = [p.strip() for p in _encodable(parts, "plot") if not is_blank(p)]  # U+200B alone is no plot either
    if not parts:
        return None
    return max(parts, key=len) if plot_mode == "longest" else " ".join(parts)


def _genres(raw: Any) -> tuple[tuple[str, ...], list[str], bool]:
    """(benchmark genres in benchmark order, dropped non-benchmark names, whether any genre was given)."""
    if raw is None:
        return (), [], False
    if isinstance(raw, str):
        raw = raw.split("|")
    elif not isinstance(raw, list) or not all(isinstance(g, str) for g in raw):
        raise FieldError(f"`genres` must be a list of strings or a '|'-separated string, got {describe(raw)}")
    names = [g.strip() for g in _encodable(raw, "genres") if g.strip()]
    kept = {c for c in map(canonical_genre, names) if c is not None}
    dropped = [g for g in names if canonical_genre(g) is None]
    return tuple(sorted(kept, key=GENRES.index)), dropped, bool(names)


def _optional_text(raw: Any, name: str) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        text = _encodable([raw], name)[0].strip()
        return None if is_blank(text) else text
    raise FieldError(f"`{name}` must be a string, got {describe(raw)}")


def _check_year(raw: Any) -> None:
    """A year is only carried along, but a wrong one says the record is not what it claims to be."""
    if raw is None or (isinstance(raw, int) and not isinstance(raw, bool)):
        return
    if isinstance(raw, float) and raw.is_integer():  # pandas writes 1999.0 for an int column with gaps
        return
    if isinstance(raw, str) and re.fullmatch(r"\s*(\d+(\.0*)?)?\s*", raw):
        return
    raise FieldError(f"`year` must be a whole number, got {describe(raw)}")


def parse_split(raw: Any) -> str | None:
    """A catalog's `split` value: train, dev (or val), test, or empty."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str):
        raise FieldError(f"`split` must be a string (train, dev or test), got {describe(raw)}")
    split = raw.strip().lower()
    split = "dev" if split == "val" else split
    if split not in SPLITS:
        raise FieldError(f"unknown `split` {raw!r} (use train, dev or test)")
    return split


def read_poster(path: Path) -> str:
    """Check a poster with the one poster decoder (posters.decode_poster: format, size limit, every byte decoded)
    and return the sha256 of its bytes, which keys the image feature cache. Raises ReadError for a file that
    cannot be read and PosterError (with .kind) for one that is not a usable image.

    The check decodes JPEGs at reduced scale (draft mode still walks the whole entropy-coded stream, so truncation
    is caught at a fraction of the cost of a full decode)."""
    from PIL import Image

    data = read_bytes(path, MAX_POSTER_BYTES)
    with warnings.catch_warnings():  # PIL warns of sizes the decoder refuses anyway, by its own lower limit
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        decode_poster(data, str(path), max_side=64)
    return hashlib.sha256(data).hexdigest()


_POSTER_KINDS = {"empty": "empty_file", "too_large": "poster_too_large"}  # PosterError.kind -> problem kind


def make_movie(mid: str, record: dict, poster: Path | None, where: Path | str, report: LoadReport,
               problem: Collector, plot_mode: str, require_labels: bool) -> Movie | None:
    """A Movie from a record whose id and split were already checked, or None (the reason is reported)."""
    try:
        plot = _plot_text(record.get("plot"), plot_mode)
        genres, dropped, labelled = _genres(record.get("genres"))
        title = _optional_text(record.get("title"), "title")
        _check_year(record.get("year"))
    except FieldError as exc:
        problem(where, "bad_field", str(exc), mid)
        return None
    if require_labels and not labelled:
        problem(where, "bad_field", "no `genres` (a list of genre names, or 'Drama|Comedy' in a catalog)", mid)
        return None
    poster_sha = None
    if poster is not None:
        try:
            poster_sha = read_poster(poster)
        except ReadError as exc:
            problem(poster, exc.kind, exc.message, mid)
            return None
        except PosterError as exc:  # its reason already says what is wrong with the image
            problem(poster, _POSTER_KINDS.get(exc.kind, "bad_poster"), exc.reason, mid)
            return None
    if plot is None and poster is None:
        problem(where, "bad_field", "movie has neither a plot nor a poster", mid)
        return None
    report.dropped_genres.update(dropped)
    if require_labels and not genres:
        report.excluded_no_label.append(mid)
        return None
    return Movie(mid, plot, genres, poster, poster_sha, title)
