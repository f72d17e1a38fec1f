"""A whole catalog through a saved model (`genrefusion predict --input CATALOG --output OUT`), at any size.

The catalog's movies are cut into numbered chunks of `chunk` movies, the posters of the next chunk decoded in a
background thread while the current one is encoded. Each chunk's predictions (CSV or JSONL rows, by OUT's extension)
and the movies it could not predict are written atomically as one part file in a sidecar folder:

    OUT.parts/manifest.json      what the parts are computed from: the model's fingerprint, the catalog (size and
                                 SHA-256 of the file, a hash of its movies' ids, plots and poster bytes), the options
                                 that decide the bytes (chunk, batch size, output format) and the release
    OUT.parts/part-000012.csv    chunk 12: one JSON line (the chunk's index, its rows, the movies it skipped and why),
                                 then its output rows exactly as they go into OUT

Resuming: a run killed (kill -9, a power cut) and started again with the same command keeps the complete parts (a
part is renamed into place only once fully written) and computes only the missing chunks. A manifest that does not
match (another model, an edited catalog, other options) means the parts belong to another computation: they are
removed and the run starts over, saying what changed. When every part is there, OUT is assembled from them in
catalog order, atomically (a reader never sees half of it), then OUT.skipped.jsonl, one line per movie that got no
prediction (`id`, `kind`, `reason`, `where`: rows the catalog reader refused, then posters that do not decode and
movies the model cannot predict from, in catalog order); then the parts are removed. A chunk is computed the same way
whichever run or process computes it, so OUT is byte-identical to an uninterrupted run's (on the same machine with
the same threads per process: torchrun gives each rank one thread unless OMP_NUM_THREADS says otherwise, and a
matrix product split over another number of threads may round its last bit differently).

Several processes (`torchrun ... -m genrefusion predict ...`): rank 0 checks the folder and lists the missing chunks;
rank r computes every world_size-th of them, starting at the r-th; after all ranks are done rank 0 assembles OUT. The
output's folder must be one every rank sees (a shared filesystem, like the feature cache). With one process the
distributed helpers are not imported (they import torch, and an exported model predicts without it).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import atomic
from ..data.posters import load_poster
from ..data.records import MovieDataset
from ..files import sha256_file
from ..version import __version__
from .base import PredictorBase
from .onnx_predictor import MANIFEST as EXPORT_MANIFEST

KIND = "genrefusion-catalog-parts"
FORMAT = 1
MANIFEST = "manifest.json"
PARTS_SUFFIX = ".parts"
SKIPPED_SUFFIX = ".skipped.jsonl"


def output_format(path: str | os.PathLike | None) -> str:
    """'csv' for a .csv output, else 'jsonl' (also for stdout)."""
    return "csv" if path is not None and Path(path).suffix.lower() == ".csv" else "jsonl"


def parts_dir(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name + PARTS_SUFFIX)


def skipped_file(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name + SKIPPED_SUFFIX)


# -- rows ---------------------------------------------------------------------------------------------------------
def header(predictor: PredictorBase, fmt: str) -> str:
    return _csv_line(["id", "predicted", *predictor.genres]) if fmt == "csv" else ""


def _csv_line(fields: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(fields)  # csv's own quoting and line end ('\r\n'), as the output always had
    return buf.getvalue()


def format_row(predictor: PredictorBase, fmt: str, movie_id: str, result: dict) -> str:
    """One output line (with its line end) for one movie's prediction."""
    if fmt == "csv":  # no column for the warnings: they go to stderr, named by movie
        return _csv_line([movie_id, "|".join(result["predicted"]),
                          *(f"{result['probabilities'][g]:.6f}" for g in predictor.genres)])
    return json.dumps({"id": movie_id, "predicted": result["predicted"], "probabilities": result["probabilities"],
                       "contribution": result["contribution"], "warnings": result["warnings"]}) + "\n"


def _skip(movie_id: str | None, kind: str, reason: str, where: str | None = None) -> dict[str, Any]:
    return {"id": movie_id, "kind": kind, "reason": reason, "where": where}


def load_skips(dataset: MovieDataset) -> list[dict[str, Any]]:
    """The rows the catalog reader skipped (problems that are not mere notices), as skipped-file records."""
    return [_skip(p.movie_id, p.kind, p.message, p.path) for p in dataset.report.problems if p.skipped]


# -- computing chunks -----------------------------------------------------------------------------------------------
def decoded_chunks(predictor: PredictorBase, chunks: list[list]):
    """(movies, posters, plots, skipped) per chunk of movies, the posters of the next chunk decoded in a background
    thread while the current one is encoded (decoding releases the GIL, so it overlaps the encoders). A movie whose
    poster does not decode, or that the model cannot predict from, is skipped: a skipped-file record."""
    from concurrent.futures import ThreadPoolExecutor

    def decode(part: list):
        ok, posters, plots, skipped = [], [], [], []
        for m in part:
            try:
                poster = load_poster(m.poster) if m.poster else None
            except (ValueError, OSError) as e:  # one bad movie must not sink the catalog (a poster deleted since
                skipped.append(_skip(m.id, "bad_poster", str(e), str(m.poster)))  # the catalog was read): named
                continue
            try:
                predictor.check(poster, m.plot)
            except ValueError as e:
                skipped.append(_skip(m.id, "cannot_predict", str(e)))
                continue
            ok.append(m)
            posters.append(poster)
            plots.append(m.plot)
        return ok, posters, plots, skipped

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-posters") as pool:
        pending = pool.submit(decode, chunks[0]) if chunks else None
        for k in range(len(chunks)):
            done = pending.result()
            pending = pool.submit(decode, chunks[k + 1]) if k + 1 < len(chunks) else None
            yield done


def _predict_rows(predictor: PredictorBase, movies: list, posters: list, plots: list,
                  skipped: list[dict]) -> list[tuple[Any, dict]]:
    """(movie, result) for the movies of one chunk. Should the chunk fail as a whole (a plot the tokenizer chokes on),
    its movies are predicted one by one and the one that fails is skipped with the error."""
    if not movies:
        return []
    try:
        return list(zip(movies, predictor.predict(posters, plots)))
    except (ValueError, RuntimeError):
        pass
    out = []
    for m, poster, plot in zip(movies, posters, plots):
        try:
            out.append((m, predictor.predict([poster], [plot])[0]))
        except (ValueError, RuntimeError) as e:
            skipped.append(_skip(m.id, "predict_failed", f"{type(e).__name__}: {e}"))
    return out


def _chunk_text(predictor: PredictorBase, fmt: str, chunk: list, decoded: tuple,
                say: Callable[[str], None]) -> tuple[str, int, list[dict]]:
    """One chunk's output rows, how many they are and its skipped movies (each named by `say`)."""
    ok, posters, plots, skipped = decoded
    rows = _predict_rows(predictor, ok, posters, plots, skipped)
    order = {m.id: i for i, m in enumerate(chunk)}
    skipped.sort(key=lambda s: order[s["id"]])  # decoding's and predicting's skips, in the catalog's order
    for s in skipped:
        say(f"skipped {s['id']}: {s['reason']}")
    if fmt == "csv":
        for m, r in rows:
            for w in r["warnings"]:
                say(f"warning: {m.id}: {w['message']}")
    return "".join(format_row(predictor, fmt, m.id, r) for m, r in rows), len(rows), skipped


def _computed_chunks(predictor: PredictorBase, fmt: str, chunks: list[list], which: list[int], bar,
                     say: Callable[[str], None]):
    """(k, text, rows, skipped) for the chunks `which`, in that order."""
    for k, decoded in zip(which, decoded_chunks(predictor, [chunks[i] for i in which])):
        text, rows, skipped = _chunk_text(predictor, fmt, chunks[k], decoded, say)
        yield k, text, rows, skipped
        bar.update(len(chunks[k]))


# -- the parts folder -----------------------------------------------------------------------------------------------
def model_fingerprint(predictor: PredictorBase) -> str:
    """SHA-256 over the model folder's files: for an exported model its export.json (which records every file's
    SHA-256, checked on loading), else every file of the folder (model.json, the head's weights, ...)."""
    folder = Path(predictor.directory)
    names = [EXPORT_MANIFEST] if predictor.exported else sorted(
        p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    h = hashlib.sha256()
    for name in names:
        h.update(f"{name}\0{sha256_file(folder / name)}\n".encode())
    return h.hexdigest()


def catalog_record(dataset: MovieDataset) -> dict[str, Any]:
    """The catalog file's size and SHA-256, and a hash of what the model sees of its movies (ids, plots, poster
    bytes: a poster replaced beside an unchanged catalog file counts as a change)."""
    path = Path(dataset.report.source)  # the catalog file (an MM-IMDb folder has only its content hash)
    h = hashlib.sha256()
    for m in dataset.movies:
        h.update(f"{m.id}\0{m.text_key}\0{m.poster_sha256}\n".encode())
    is_file = path.is_file()
    return {"bytes": path.stat().st_size if is_file else None, "sha256": sha256_file(path) if is_file else None,
            "movies": len(dataset.movies), "content_sha256": h.hexdigest()}


def make_manifest(predictor: PredictorBase, dataset: MovieDataset, fmt: str, chunk: int,
                  batch_size: int | None) -> dict[str, Any]:
    return {"kind": KIND, "format": FORMAT, "genrefusion": __version__, "model": model_fingerprint(predictor),
            "catalog": catalog_record(dataset), "options": {"output": fmt, "chunk": chunk, "batch_size": batch_size}}


def _read_manifest(parts: Path) -> dict | None:
    try:
        found = json.loads((parts / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _changes(old: dict | None, new: dict) -> str:
    """Why the parts in a folder cannot be resumed, in words."""
    if old is None:
        return "it holds no readable manifest (a run stopped before its first chunk)"
    if old.get("kind") != KIND or old.get("format") != FORMAT:
        return "its parts are in another format"
    what = []
    if old.get("model") != new["model"]:
        what.append("the model is another one (its files differ)")
    if old.get("catalog") != new["catalog"]:
        what.append("the catalog changed (its file, or a poster it names)")
    for key, value in new["options"].items():
        was = (old.get("options") or {}).get(key)
        if was != value:
            what.append(f"{'the output format' if key == 'output' else '--' + key.replace('_', '-')} was {was} "
                        f"(now {value})")
    if old.get("genrefusion") != new["genrefusion"]:
        what.append(f"genrefusion was {old.get('genrefusion')} (now {new['genrefusion']})")
    return "its parts were computed differently: " + "; ".join(what)


def _part_path(parts: Path, k: int, fmt: str) -> Path:
    return parts / f"part-{k:06d}.{fmt}"


def _write_part(target: Path, data: bytes) -> None:
    atomic.write_bytes(target, data)


def _read_part(path: Path, k: int) -> tuple[dict, bytes]:
    """A part's header and its output rows; ValueError if it is not chunk k's complete part."""
    data = path.read_bytes()
    end = data.find(b"\n")
    head = json.loads(data[:end]) if end >= 0 else None
    if not isinstance(head, dict) or head.get("chunk") != k or head.get("bytes") != len(data) - end - 1:
        raise ValueError(f"{path}: not the complete part of chunk {k}")
    return head, data[end + 1:]


def _clear(parts: Path) -> None:
    """Remove the parts folder: the files this module writes there. Anything else is not ours to delete."""
    ours = (MANIFEST, "part-", atomic.TMP_PREFIX)
    for p in parts.iterdir():
        if p.is_file() and p.name.startswith(ours):
            p.unlink()
    others = sorted(p.name for p in parts.iterdir())
    if others:
        raise ValueError(f"{parts}: holds files genrefusion did not write ({', '.join(others[:3])}); move them away "
                         "or choose another --output")
    parts.rmdir()


def _prepare(parts: Path, manifest: dict, fmt: str, n_chunks: int, say: Callable[[str], None]) -> list[int]:
    """Make `parts` ready for this computation (resumed, or started over with the reason said) and return the chunks
    still to compute."""
    if parts.is_dir():
        atomic.remove_stale_tmp(parts)  # a part a killed run was writing
        old = _read_manifest(parts)
        if old != manifest:
            say(f"{parts}: {_changes(old, manifest)}; starting over")
            _clear(parts)
    parts.mkdir(exist_ok=True)
    if not (parts / MANIFEST).exists():
        atomic.write_json(parts / MANIFEST, manifest)
    todo = []
    for k in range(n_chunks):
        path = _part_path(parts, k, fmt)
        try:
            _read_part(path, k)
        except FileNotFoundError:
            todo.append(k)
        except (OSError, ValueError):  # not what a complete write leaves (a damaged disk): computed again
            path.unlink(missing_ok=True)
            todo.append(k)
    if len(todo) < n_chunks:
        say(f"resuming from {parts}: {n_chunks - len(todo):,} of {n_chunks:,} chunks already done")
    return todo


def _assemble(output: Path, parts: Path, fmt: str, n_chunks: int, first: str,
              skipped: list[dict]) -> int:
    """OUT from the parts in catalog order, then OUT.skipped.jsonl (`skipped` + the parts' skips), then the parts
    removed. Returns the number of output rows."""
    rows = 0

    def pieces():
        nonlocal rows
        yield first.encode("utf-8")
        for k in range(n_chunks):
            path = _part_path(parts, k, fmt)
            try:
                head, body = _read_part(path, k)
            except FileNotFoundError:
                raise ValueError(f"{path}: missing after every process finished (under torchrun the output's folder "
                                 "must be one that every rank sees)") from None
            rows += head["rows"]
            skipped.extend(head["skipped"])
            yield body

    atomic.write_chunks(output, pieces())
    if skipped:
        atomic.write_text(skipped_file(output), "".join(json.dumps(s) + "\n" for s in skipped))
    else:
        skipped_file(output).unlink(missing_ok=True)  # an earlier run's list would name movies this one predicted
    _clear(parts)
    return rows


# -- the run ----------------------------------------------------------------------------------------------------------
@dataclass
class CatalogRun:
    """What predict_catalog did. On a rank other than 0, `predicted` and `skipped` count only its own chunks."""

    movies: int  # the movies the catalog reader handed over
    predicted: int  # rows in the output
    skipped: int  # movies without a row: refused by the reader, poster not decoded, model cannot predict
    computed: int  # movies this run went through (every rank's); the others came from an earlier run's parts
    seconds: float  # computing them
    processes: int
    chunks: int
    resumed_chunks: int
    output: Path | None
    skipped_path: Path | None
    main: bool = True  # rank 0 (or the only process): the one that assembled the output

    def lines(self) -> list[str]:
        """The summary line and the throughput line."""
        where = f" -> {self.output}" if self.output else ""
        named = f"listed in {self.skipped_path}" if self.skipped_path else "named above"
        rate = self.computed / self.seconds if self.seconds > 0 else 0.0
        return [f"predicted {self.predicted:,} movies{where}" + (f"; skipped {self.skipped:,} ({named})"
                                                                 if self.skipped else ""),
                f"{self.computed:,} movies in {self.seconds:.1f} s: {rate:.1f} movies/s"
                + (f" over {self.processes} processes" if self.processes > 1 else "")
                + (f" ({self.resumed_chunks:,} of {self.chunks:,} chunks done by an earlier run)"
                   if self.resumed_chunks else "")]


def _distributed():
    """The distributed helpers when this process is one of several (torchrun), else None."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    from .. import distributed  # only here: it imports torch, and an exported model predicts without torch

    distributed.init_from_env()  # a no-op where `genrefusion`'s main already joined the group
    return distributed if distributed.is_distributed() else None


def predict_catalog(predictor: PredictorBase, dataset: MovieDataset, output: str | os.PathLike | None = None, *,
                    chunk: int = 256, batch_size: int | None = None, progress: bool | None = None,
                    say: Callable[[str], None] | None = None) -> CatalogRun:
    """Predict every movie of `dataset` (data.load_catalog's result) into `output` (.csv, else JSONL), resumably and,
    under torchrun, shared between the ranks (see the module docstring). `output` None: JSONL to stdout, in one
    process, not resumable. `batch_size`: what the predictor was set to (recorded: it decides the bytes).
    `progress`: a progress bar on stderr (None: where stderr is a terminal, on rank 0). `say`: where messages go
    (default: stderr)."""
    from tqdm.auto import tqdm  # here: the command line's parser imports this module

    dist = _distributed()
    main = dist is None or dist.is_main()
    world, rank = (dist.world_size(), dist.rank()) if dist else (1, 0)
    say = say or (lambda message: tqdm.write(message, file=sys.stderr))
    if main:
        for p in dataset.report.problems:
            say(f"catalog: {p}")
    movies = dataset.movies
    chunks = [movies[i:i + chunk] for i in range(0, len(movies), chunk)]
    fmt = output_format(output)
    loaded = load_skips(dataset)
    if output is None:
        if dist is not None:
            raise ValueError("several processes (torchrun) write one output file: give --output")
        todo = list(range(len(chunks)))
    else:
        output = Path(output)
        parts = parts_dir(output)
        manifest = make_manifest(predictor, dataset, fmt, chunk, batch_size) if main else None
        todo = _prepare(parts, manifest, fmt, len(chunks), say) if main else None
        if dist is not None:
            todo = dist.all_gather_objects(todo)[0]  # rank 0's list, once it has made the folder ready
    mine = todo[rank::world]
    bar = tqdm(total=sum(len(chunks[k]) for k in mine), unit="movie", desc="predict", file=sys.stderr,
               dynamic_ncols=True, disable=(None if main else True) if progress is None else not progress)
    t0 = time.perf_counter()
    predicted, skipped = 0, []
    try:
        if output is None:
            sys.stdout.write(header(predictor, fmt))
        for k, text, rows, skips in _computed_chunks(predictor, fmt, chunks, mine, bar, say):
            if output is None:
                sys.stdout.write(text)
            else:
                head = {"chunk": k, "rows": rows, "movies": len(chunks[k]), "bytes": len(text.encode("utf-8")),
                        "skipped": skips}
                _write_part(_part_path(parts, k, fmt), (json.dumps(head) + "\n" + text).encode("utf-8"))
            predicted += rows
            skipped.extend(skips)
    finally:
        bar.close()
    computed = sum(len(chunks[k]) for k in mine)
    if dist is not None:
        computed = int(dist.all_reduce_sum(computed))  # also: every rank's parts are written
    seconds = time.perf_counter() - t0
    run = CatalogRun(len(movies), predicted, len(loaded) + len(skipped), computed, seconds, world, len(chunks),
                     len(chunks) - len(todo), output, None, main)
    if output is None or not main:
        return run
    every_skip = list(loaded)  # _assemble adds every part's, this run's and earlier runs'
    run.predicted = _assemble(output, parts, fmt, len(chunks), header(predictor, fmt), every_skip)
    run.skipped = len(every_skip)
    run.skipped_path = skipped_file(output) if every_skip else None
    return run
