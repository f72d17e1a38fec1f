"""Reading movies: the official MM-IMDb layout (here) and users' CSV / JSONL catalogs (catalog.py).

Every movie keeps whatever modalities it has (a plot, a poster, or both); what is missing is explicit, never
silently dropped. Input that cannot be used is reported as a `Problem` naming the file: by default the entry is
skipped and counted by kind, with `strict=True` the first problem raises `DataError`. Input so broken that nothing
in it can be trusted (a split.json that is not lists of ids, a catalog without an `id` column, no usable movie at
all) is a DataError either way. The checks every file, id and field goes through are in records.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..config import check_choice
from .catalog import load_catalog
from .modalities import MODALITIES, SPECS
from .records import (CATALOG_COLUMNS, SPLITS, Collector, DataError, Entry, LoadReport, Movie, MovieDataset,
                      Problem, ReadError, assemble, decode_utf8, dedupe, describe, id_problem, make_movie,
                      parse_json_object, read_bytes, read_poster, show_id)
from . import splits

__all__ = ["CATALOG_COLUMNS", "POSTER_SUFFIXES", "SPLITS", "DataError", "DataSpec", "LoadReport", "Movie",
           "MovieDataset", "Problem", "load_catalog", "load_dataset", "load_mmimdb", "read_poster"]

POSTER_SUFFIXES = (".jpeg", ".jpg", ".png")
MAX_MOVIE_JSON_BYTES = 16 * 2**20  # MM-IMDb's largest is ~100 KB; a larger "movie" is refused unread
# MM-IMDb's split.json is 0.5 MB (25,959 ids); 8 MB lists ~700,000 ids. A larger one is refused unread: every listed
# id costs a file lookup and a record, so a 42 MB split.json took 86 s and 2 GB before anything else was checked.
MAX_SPLIT_JSON_BYTES = 8 * 2**20


def _split_lists(split_file: Path, problem: Collector) -> list[Entry]:
    """split.json -> one Entry per listing. Anything but an object of id lists is a DataError naming the key:
    a split that cannot be read cannot be trusted to keep train and test apart."""
    try:
        raw = parse_json_object(decode_utf8(read_bytes(split_file, MAX_SPLIT_JSON_BYTES)))
    except ReadError as exc:
        hint = (" for a split file (MM-IMDb's is 0.5 MB: it lists ids only); refused unread"
                if exc.kind == "file_too_large" else "")
        raise DataError(f"{split_file}: {exc.message}{hint}") from None
    if "dev" in raw and "val" in raw:
        raise DataError(f"{split_file}: has both `dev` and `val`; they name the same split, keep one")
    keys = {"train": "train", "dev": "val" if "val" in raw else "dev", "test": "test"}
    missing = [k for k in keys.values() if k not in raw]
    if missing:
        raise DataError(f"{split_file}: missing split(s) {missing}; expected keys train/dev/test (or val)")
    for key in sorted(set(raw) - set(keys.values())):
        problem(split_file, "unknown_key", f"unknown key {key!r} ignored, its ids are not loaded (expected "
                                           "train, dev or val, test)")
    entries = []
    for split, key in keys.items():
        ids = raw[key]
        if not isinstance(ids, list):
            raise DataError(f"{split_file}: `{key}` must be a list of ids (strings), got {describe(ids)}")
        for pos, mid in enumerate(ids):
            if not isinstance(mid, str):
                raise DataError(f"{split_file}: `{key}` must be a list of ids (strings), but item {pos} is "
                                f"{describe(mid)}")
            entries.append(Entry(mid, split, str(split_file), f"`{key}` item {pos}"))
    return entries


def load_mmimdb(root: str | Path, strict: bool = False, plot_mode: str = "join",
                require_labels: bool = True) -> MovieDataset:
    """Read `root/split.json` + `root/dataset/<id>.json|.jpeg` (the official MM-IMDb layout). With
    require_labels=False (movies read as unlabelled data for distillation) a movie without genres is kept.

    The movies are those named in split.json (its `dev` key may be called `val`); without split.json every
    `dataset/*.json` is read and only the stratified split is available. Ids must be plain file names (see
    records.id_problem): an id such as '../x' would read a file outside dataset/. Files in dataset/ may be
    symlinks to anywhere (that is how subsets are built).
    """
    root = Path(root)
    ds_dir = root / "dataset"
    if not ds_dir.is_dir():
        raise DataError(f"{root}: not an MM-IMDb folder (no dataset/ subfolder)")
    report = LoadReport(str(root))
    problem = Collector(report, strict)
    split_file = root / "split.json"
    has_split = split_file.exists() or split_file.is_symlink()
    if has_split:
        entries = _split_lists(split_file, problem)
        if not entries:
            raise DataError(f"{split_file}: lists no movies")
        listed = {e.id for e in entries}
        report.unlisted_files = sum(p.stem not in listed for p in ds_dir.glob("*.json"))
    else:
        entries = [Entry(p.stem, None, str(p), p.name) for p in sorted(ds_dir.glob("*.json"))]
        if not entries:
            raise DataError(f"{ds_dir}: no movie files (<id>.json) and no {split_file.name} beside it")

    valid = []
    for e in entries:
        if (reason := id_problem(e.id)) is not None:
            problem(e.where, "bad_id", f"id {show_id(e.id)} ({e.ref}) is not a plain file name: {reason}; refused")
        else:
            valid.append(e)
    found: list[tuple[Movie, str | None]] = []
    for e in dedupe(valid, problem):
        mid = e.id
        path = ds_dir / f"{mid}.json"
        try:
            record = parse_json_object(decode_utf8(read_bytes(path, MAX_MOVIE_JSON_BYTES)))
        except ReadError as exc:
            message = exc.message
            if exc.kind == "missing_file" and has_split:
                message = "listed in split.json but the file " + message
            problem(path, exc.kind, message, mid)
            continue
        # a dangling symlink is a poster that was meant to be there: named, not silently treated as no poster
        poster = next((p for s in POSTER_SUFFIXES if (p := ds_dir / f"{mid}{s}").exists() or p.is_symlink()), None)
        movie = make_movie(mid, record, poster, path, report, problem, plot_mode, require_labels)
        if movie is not None:
            found.append((movie, e.split))
    return assemble(found, has_split, report, root, root)


@dataclass(frozen=True)
class DataSpec:
    """What data is read and how it is split, as one value: built once where the settings come in (the command
    line's data options, a Config's data keys) and handed on whole. `load()` reads it.

    path:       an MM-IMDb folder (split.json + dataset/) or a CSV / TSV / JSONL catalog
    split:      'official' (split.json / the catalog's `split` column) or 'stratified' (Arevalo et al.'s sampling)
    modalities: 'any' keeps every movie; 'both' only movies with a poster and a plot. The filter is applied
                before a stratified split is drawn, so the split is balanced over the movies actually used.
    split_seed: the seed of the stratified split
    strict:     stop at the first bad input instead of skipping (and counting) it
    plot_mode:  'join' every plot paragraph, or keep the 'longest' one
    """

    path: str | Path
    split: str = "official"
    modalities: str = "any"
    split_seed: int = 1234
    strict: bool = False
    plot_mode: str = "join"

    # The Config keys that hold the same settings (`path` is the key `data`)
    CONFIG_KEYS: ClassVar[tuple[str, ...]] = ("data", "split", "modalities", "split_seed", "strict", "plot_mode")

    def __post_init__(self) -> None:
        for key in ("split", "modalities", "plot_mode"):
            check_choice(key, getattr(self, key), "data")

    @classmethod
    def from_config(cls, cfg) -> "DataSpec":
        """The data a Config names (its keys data, split, modalities, split_seed, strict, plot_mode)."""
        return cls(cfg.data, cfg.split, cfg.modalities, cfg.split_seed, cfg.strict, cfg.plot_mode)

    def config_values(self) -> dict[str, Any]:
        """The Config keys that say the same (what a run's saved config records)."""
        return dict(zip(self.CONFIG_KEYS, (str(self.path), self.split, self.modalities, self.split_seed, self.strict,
                                           self.plot_mode)))

    def replace(self, **changes: Any) -> "DataSpec":
        return dataclasses.replace(self, **changes)

    def load(self) -> MovieDataset:
        """Read the folder or catalog, filter the modalities, choose the split (see the class docstring)."""
        path = Path(self.path)
        if not path.exists():
            raise DataError(f"{path}: does not exist (expected an MM-IMDb folder or a .csv/.tsv/.jsonl catalog)")
        ds = (load_mmimdb(path, self.strict, self.plot_mode) if path.is_dir()
              else load_catalog(path, self.strict, self.plot_mode))
        if self.modalities == "both":
            ds = ds.subset(i for i, m in enumerate(ds.movies) if all(SPECS[x].present(m) for x in MODALITIES))
            if not ds.movies:
                raise DataError(f"{path}: no movie has both a poster and a plot (modalities='both')")
        if self.split == "stratified":
            ds.splits = splits.stratified_split(ds.labels(), seed=self.split_seed)
            ds.split_mode = "stratified"
        elif not ds.splits:
            raise DataError(f"{path}: no official split (no split.json / `split` column); use split='stratified'")
        ds.check_invariants()  # whichever way the split was made: no movie twice, none in two splits
        return ds


def load_dataset(path: str | Path, split: str = "official", modalities: str = "any", strict: bool = False,
                 plot_mode: str = "join", seed: int = 1234) -> MovieDataset:
    """The one entry point for a path and loose settings: DataSpec(path, ...).load(), see DataSpec."""
    return DataSpec(path, split, modalities, seed, strict, plot_mode).load()
