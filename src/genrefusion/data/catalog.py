"""Users' own catalogs: a CSV (or TSV) with a header row, or JSONL with one JSON object per line.

Columns: `id`, `plot`, `genres` (a list or 'Drama|Comedy'), optional `poster` (a path relative to the catalog),
`split` (train/dev/test; filled on every row or on none; ignored when predicting), `title`, `year`. The CSV
separator is read from the header: ',' (the default), ';' (spreadsheets in many locales) or a tab, whichever
makes the header name an `id` column. Column names are matched without regard to case or surrounding spaces.

What makes the whole file unusable (no `id` or `genres` column, a column named twice, not UTF-8, no rows, every
row skipped) is a DataError; a bad row is a counted, named skip (see records.py).

A `poster` must be inside the catalog's folder (or a folder below it): a catalog is data, and data should not be
able to make a command open any file on the machine ('../../../etc/passwd', '/etc/hostname'). The path is
resolved first, so a symlink that leads out of the folder is outside too. A row whose poster is outside is
skipped, counted and named (problem kind `poster_outside`), unless the user opts in: `allow_outside_posters=True`,
the `--allow-outside-posters` option of every command that reads data, or GENREFUSION_ALLOW_OUTSIDE_POSTERS=1.
"""
from __future__ import annotations

import csv
import io
import os
from collections import Counter
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from .records import (CATALOG_COLUMNS, Collector, DataError, Entry, FieldError, LoadReport, Movie, MovieDataset,
                      ReadError, assemble, decode_utf8, dedupe, describe, id_problem, make_movie, parse_json_object,
                      parse_split, printable, read_bytes, show_id)

CSV_SUFFIXES = (".csv", ".tsv")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
DELIMITERS = (",", ";", "\t")
ALLOW_OUTSIDE_POSTERS_ENV = "GENREFUSION_ALLOW_OUTSIDE_POSTERS"
ALLOW_OUTSIDE_POSTERS_OPTION = "--allow-outside-posters"
_ALLOW_OUTSIDE_POSTERS: ContextVar[bool | None] = ContextVar("allow_outside_posters", default=None)


@contextmanager
def outside_posters_allowed(allow: bool = True):
    """Within this block, catalogs read without an explicit `allow_outside_posters` use `allow` (the CLI sets it
    from --allow-outside-posters for the whole command, whichever function ends up reading the catalog)."""
    token = _ALLOW_OUTSIDE_POSTERS.set(allow)
    try:
        yield
    finally:
        _ALLOW_OUTSIDE_POSTERS.reset(token)


def _outside_allowed(explicit: bool | None) -> bool:
    """The argument if given, else the enclosing outside_posters_allowed block, else the environment variable."""
    if explicit is not None:
        return explicit
    scoped = _ALLOW_OUTSIDE_POSTERS.get()
    if scoped is not None:
        return scoped
    return os.environ.get(ALLOW_OUTSIDE_POSTERS_ENV, "").strip().lower() in ("1", "true", "yes")


def _poster_outside(folder: Path, poster: Path) -> str | None:
    """Why `poster` is outside the catalog's `folder`, or None when it is inside. Both are resolved ('..',
    absolute paths and symlinks followed, as opening the file would), so a symlink inside the folder that leads
    out of it is outside."""
    try:
        base, target = folder.resolve(), poster.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL: the file cannot be opened either, and
        return None                              # read_bytes names why
    if target == base or base in target.parents:
        return None
    lexical = Path(os.path.normpath(poster.absolute()))
    via = " through a symlink" if folder.absolute() in lexical.parents else ""
    return f"it resolves to {printable(str(target))}{via}, outside the catalog's folder {printable(str(base))}"


def _header(path: Path, first_line: str, require_labels: bool) -> tuple[str, list[str]]:
    """The separator that makes the header name an `id` column (the one naming most known columns), and the
    normalised column names."""
    order = ("\t", ",", ";") if path.suffix.lower() == ".tsv" else DELIMITERS
    best: tuple[int, str, list[str]] | None = None
    for d in order:
        names = [n.strip().lower() for n in next(csv.reader([first_line], delimiter=d))]
        known = len(set(names) & CATALOG_COLUMNS)
        if "id" in names and (best is None or known > best[0]):
            best = (known, d, names)
    shown = ", ".join(repr(n.strip()) for n in next(csv.reader([first_line], delimiter=order[0])))
    if best is None:
        raise DataError(f"{path}: no `id` column (columns found: {shown}); the first line must name the columns "
                        "(id, plot, genres, poster, split, title, year) with ',', ';' or a tab as the separator")
    _, delimiter, names = best
    shown = ", ".join(repr(n.strip()) for n in next(csv.reader([first_line], delimiter=delimiter)))
    named = Counter(n for n in names if n)
    twice = next((n for n, c in named.items() if c > 1), None)
    if twice is not None:
        cols = [str(i + 1) for i, n in enumerate(names) if n == twice]
        raise DataError(f"{path}: column {twice!r} appears {named[twice]} times in the header (columns "
                        f"{', '.join(cols)}); which one holds the data is ambiguous")
    if require_labels and "genres" not in names:
        raise DataError(f"{path}: no `genres` column (columns found: {shown}); training and evaluation need each "
                        "movie's genres, e.g. 'Drama|Comedy'")
    if "plot" not in names and "poster" not in names:
        raise DataError(f"{path}: neither a `plot` nor a `poster` column (columns found: {shown})")
    return delimiter, names


def _csv_rows(path: Path, text: str, problem: Collector, require_labels: bool) -> tuple[list[tuple[int, dict]], int]:
    """(line, record) per data row, and how many non-blank rows the file has."""
    delimiter, names = _header(path, text.split("\n", 1)[0].rstrip("\r"), require_labels)
    for i, name in enumerate(names):
        if not name:
            problem(path, "unknown_column", f"column {i + 1} has no name; ignored")
        elif name not in CATALOG_COLUMNS:
            problem(path, "unknown_column", f"unknown column {name!r} (known: {sorted(CATALOG_COLUMNS)}); ignored")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows, seen = [], 0
    try:
        next(reader)
        start = reader.line_num + 1
        for fields in reader:
            line, start = start, reader.line_num + 1  # a quoted field may span lines: a row starts where it starts
            if not any(f.strip() for f in fields):
                continue
            seen += 1
            if len(fields) > len(names) and not any(f.strip() for f in fields[len(names):]):
                fields = fields[: len(names)]  # empty trailing fields, as spreadsheets write them, are harmless
            if len(fields) != len(names):
                hint = f" (is a field holding {delimiter!r} not quoted?)" if len(fields) > len(names) else ""
                problem(f"{path}:{line}", "bad_field", f"row has {len(fields)} fields, the header has {len(names)}"
                                                       f"{hint}; skipped")
                continue
            rows.append((line, {n: v for n, v in zip(names, fields) if n in CATALOG_COLUMNS}))
    except csv.Error as exc:  # e.g. a field over csv's size limit: the reader cannot resynchronise after it
        raise DataError(f"{path}:{reader.line_num}: unreadable CSV ({exc})") from None
    return rows, seen


def _jsonl_rows(path: Path, text: str, problem: Collector) -> tuple[list[tuple[int, dict]], int]:
    rows, seen, unknown = [], 0, set()
    lines = text.split("\n")  # not splitlines(): that also splits at U+2028, U+0085 ... inside a JSON string
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        seen += 1
        try:
            rec = parse_json_object(line)
        except ReadError as exc:
            cut = n == len(lines) and not text.endswith("\n")
            problem(f"{path}:{n}", exc.kind, exc.message + ("; it is the last line and has no line end: is the "
                                                            "file truncated?" if cut else ""))
            continue
        for col in sorted(set(rec) - CATALOG_COLUMNS - unknown):
            unknown.add(col)
            problem(f"{path}:{n}", "unknown_column", f"unknown field {col!r} (known: {sorted(CATALOG_COLUMNS)}); "
                                                     "ignored")
        rows.append((n, rec))
    return rows, seen


def _entry(path: Path, line: int, rec: dict, problem: Collector) -> Entry | None:
    where = f"{path}:{line}"
    mid = rec.get("id")
    if mid is None or (isinstance(mid, str) and not mid.strip()):
        problem(where, "bad_field", "row has no `id`")
        return None
    if not isinstance(mid, str):
        hint = " (quote it: a number loses leading zeros)" if isinstance(mid, (int, float)) else ""
        problem(where, "bad_field", f"`id` must be a string, got {describe(mid)}{hint}")
        return None
    mid = mid.strip()
    if (reason := id_problem(mid)) is not None:
        problem(where, "bad_id", f"id {show_id(mid)} is not a plain file name: {reason}; refused")
        return None
    try:
        split = parse_split(rec.get("split"))
    except FieldError as exc:
        problem(where, "bad_field", str(exc), mid)
        return None
    return Entry(mid, split, where, f"line {line}", rec)


def load_catalog(path: str | Path, strict: bool = False, plot_mode: str = "join",
                 require_labels: bool = True, *, allow_outside_posters: bool | None = None) -> MovieDataset:
    """Read a user's CSV/TSV or JSONL catalog (see the module docstring). require_labels=False (predict) reads
    catalogs without genres. allow_outside_posters: read posters from anywhere, not only from inside the catalog's
    folder (None: as the enclosing outside_posters_allowed block or $GENREFUSION_ALLOW_OUTSIDE_POSTERS say; by
    default not)."""
    allow_outside = _outside_allowed(allow_outside_posters)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + JSONL_SUFFIXES:
        raise DataError(f"{path}: unsupported catalog type {path.suffix!r} (use .csv, .tsv or .jsonl)")
    report = LoadReport(str(path))
    problem = Collector(report, strict)
    try:
        text = decode_utf8(read_bytes(path))
    except ReadError as exc:
        message = "catalog file does not exist" if exc.kind == "missing_file" else exc.message
        raise DataError(f"{path}: {message}") from None
    if not text.strip():
        raise DataError(f"{path}: empty file (no header, no rows)")
    if suffix in CSV_SUFFIXES:
        rows, seen = _csv_rows(path, text, problem, require_labels)
    else:
        rows, seen = _jsonl_rows(path, text, problem)
    if not seen:
        raise DataError(f"{path}: no rows" + (" after the header" if suffix in CSV_SUFFIXES else ""))

    entries = [e for line, rec in rows if (e := _entry(path, line, rec, problem)) is not None]
    if not require_labels:  # a catalog to predict: no split is scored, so a row's split cannot leak anything
        for e in entries:
            e.split = None
    with_split = any(e.split for e in entries)
    found: list[tuple[Movie, str | None]] = []
    for e in dedupe(entries, problem):
        if with_split and e.split is None:  # it would silently be in no split
            problem(e.where, "no_split", "no `split` value while other rows have one (train, dev or test); "
                                         "skipped", e.id)
            continue
        raw_poster = e.record.get("poster")
        if raw_poster is not None and not isinstance(raw_poster, str):
            problem(e.where, "bad_field", f"`poster` must be a file path (a string), got {describe(raw_poster)}",
                    e.id)
            continue
        poster = path.parent / raw_poster.strip() if raw_poster and raw_poster.strip() else None
        if poster is not None and not allow_outside and (why := _poster_outside(path.parent, poster)) is not None:
            problem(e.where, "poster_outside", f"`poster` {show_id(raw_poster.strip())}: {why}; not read (posters "
                                               f"must be inside the catalog's folder; {ALLOW_OUTSIDE_POSTERS_OPTION} "
                                               "reads them from anywhere); skipped", e.id)
            continue
        movie = make_movie(e.id, e.record, poster, e.where, report, problem, plot_mode, require_labels)
        if movie is not None:
            found.append((movie, e.split))
    return assemble(found, with_split, report, path, path.parent)
