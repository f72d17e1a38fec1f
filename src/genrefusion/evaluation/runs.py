"""Run folders: the one place that writes and reads them. Everything is written through atomic.py.

A run folder (one trained model, `experiment.run_experiment`):

    config.yaml                    the resolved config
    test_predictions.safetensors   test probabilities and labels ("probs", "labels", (N, G) float32), the analysis
                                   tensors a fusion exposes per movie (gate, modality_weights, alpha) and, as
                                   metadata, the movie ids, the genres naming the columns and the thresholds
    val_predictions.safetensors    the same for validation (thresholds can be re-tuned from the folder alone)
    model/                         the saved model (checkpoint.py's model folder)
    metrics.json                   every metric, the data and encoder fingerprints, timings, the training curve;
                                   written last, so its presence marks a finished run

A grid folder (`grid.run_grid`) holds `data_summary.json`, `config.yaml`, `tables.txt`, one run folder per row and
seed (`<row>/seed-<s>/`) and `grid.json`, written last.

A cross-validation folder (`training.crossval.run_crossval`) holds `config.yaml`, `tables.txt`, one run folder per
row, repeat and fold (`<row>/repeat-<r>/fold-<k>/`, whose "test" is the scored fold and "val" the inner validation
split taken from the training folds) and `crossval.json`, written last.

Reading checks what it reads and names the file at fault: a missing file is a RunFileMissing (a FileNotFoundError),
a corrupt one a RunFolderError (a ValueError); the CLI prints either as one line.

This module is imported by the CLI parser (through report/), so torch and safetensors load inside functions.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np

from .. import atomic, files
from ..config import save_config
from ..data.labels import GENRES

CONFIG_FILE, METRICS_FILE, MODEL_DIR = "config.yaml", "metrics.json", "model"
GRID_FILE, TABLES_FILE, SUMMARY_FILE = "grid.json", "tables.txt", "data_summary.json"
CROSSVAL_FILE = "crossval.json"
PREDICTION_SPLITS = ("test", "val")
_SEED_DIR = re.compile(r"seed-(\d+)")


class RunFolderError(ValueError):
    """A run or grid folder file that cannot be used; the message names the file and the problem."""


class RunFileMissing(FileNotFoundError):
    """A file a run or grid folder should hold is not there; the message names it."""


def predictions_file(split: str) -> str:
    if split not in PREDICTION_SPLITS:
        raise ValueError(f"split must be one of {PREDICTION_SPLITS}, not {split!r}")
    return f"{split}_predictions.safetensors"


@dataclass
class Predictions:
    """One split's predictions: row i is movie ids[i], column j genre genres[j]."""

    ids: list[str]
    probs: np.ndarray  # (N, G) float32 probabilities
    labels: np.ndarray  # (N, G) float32, 0 / 1
    thresholds: float | np.ndarray  # one threshold, or one per genre
    genres: list[str] = field(default_factory=lambda: list(GENRES))
    analysis: dict[str, np.ndarray] = field(default_factory=dict)  # per-movie tensors a fusion exposes
    path: Path | None = None  # the file read, when read


# -- writing -----------------------------------------------------------------------------------------------------
def write_predictions(path: str | Path, preds: Predictions) -> Path:
    """One predictions file, atomically. The columns must be the genres named."""
    import torch

    probs = torch.as_tensor(preds.probs, dtype=torch.float32)
    if probs.numel() == 0:  # no movie to predict (train.predict gives an empty (0, 0) array)
        probs = probs.reshape(0, len(preds.genres))
    if probs.dim() != 2 or probs.shape[1] != len(preds.genres) or len(preds.ids) != probs.shape[0]:
        raise ValueError(f"{path}: {tuple(probs.shape)} probabilities for {len(preds.ids)} ids and "
                         f"{len(preds.genres)} genres")
    tensors = {"probs": probs, "labels": torch.as_tensor(preds.labels, dtype=torch.float32)}
    for k, v in preds.analysis.items():
        tensors[k] = torch.as_tensor(v, dtype=torch.float32)
    return atomic.save_safetensors(tensors, path, {"ids": json.dumps(list(preds.ids)),
                                                   "genres": json.dumps(list(preds.genres)),
                                                   "thresholds": json.dumps(np.asarray(preds.thresholds).tolist())})


def save_predictions(path: str | Path, ids: list[str], probs, labels, threshold, analysis: dict[str, np.ndarray],
                     genres: Sequence[str] = GENRES) -> Path:
    """write_predictions from its parts (the form experiment.py exported before this module)."""
    return write_predictions(path, Predictions(list(ids), probs, labels, threshold, list(genres), dict(analysis)))


def write_run(run_dir: str | Path, cfg, metrics: dict[str, Any], model, encoders: dict[str, dict],
              test: Predictions, val: Predictions | None = None, model_extra: dict[str, Any] | None = None) -> Path:
    """Write a run folder (see the module docstring). Every file is written under a temporary name and renamed, and
    metrics.json comes last, so a folder with a metrics.json is complete. `encoders`: per modality the record of
    fingerprints.encoder_record, as checkpoint.save_model takes it; `model_extra`: further model.json entries
    (checkpoint.save_model's `extra`, e.g. a distilled model's "teacher")."""
    from ..inference.checkpoint import save_model  # lazy: keeps evaluation.runs free of safetensors, torch

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / CONFIG_FILE)
    write_predictions(run_dir / predictions_file("test"), test)
    if val is not None:
        write_predictions(run_dir / predictions_file("val"), val)
    save_model(run_dir / MODEL_DIR, model, cfg, test.thresholds, encoders, metrics=metrics, extra=model_extra)
    atomic.write_json(run_dir / METRICS_FILE, metrics)
    return run_dir


def write_data_summary(grid_dir: str | Path, summary: dict[str, Any]) -> Path:
    return atomic.write_json(Path(grid_dir) / SUMMARY_FILE, summary)


def write_grid(grid_dir: str | Path, cfg, grid: dict[str, Any], tables: str) -> Path:
    """The grid folder's own files once every run is written: config.yaml, tables.txt and grid.json (last)."""
    grid_dir = Path(grid_dir)
    save_config(cfg, grid_dir / CONFIG_FILE)
    atomic.write_text(grid_dir / TABLES_FILE, tables + "\n")
    return atomic.write_json(grid_dir / GRID_FILE, grid)


def write_crossval(cv_dir: str | Path, cfg, result: dict[str, Any], tables: str) -> Path:
    """A cross-validation folder's own files once every fold's run is written: config.yaml, tables.txt and
    crossval.json (last)."""
    cv_dir = Path(cv_dir)
    save_config(cfg, cv_dir / CONFIG_FILE)
    atomic.write_text(cv_dir / TABLES_FILE, tables + "\n")
    return atomic.write_json(cv_dir / CROSSVAL_FILE, result)


# -- reading -----------------------------------------------------------------------------------------------------
def _read_text(path: Path, hint: str = "") -> str:
    return files.read_text(path, RunFolderError, hint, missing=RunFileMissing)


def read_json(path: str | Path, hint: str = "") -> dict[str, Any]:
    """A run folder's JSON file, which must hold an object."""
    return files.read_json_object(path, RunFolderError, hint, missing=RunFileMissing)


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / METRICS_FILE, " (is this a finished run folder?)")


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """config.yaml as a mapping (the resolved config a run or grid was made with)."""
    import yaml

    path = Path(run_dir) / CONFIG_FILE
    try:
        cfg = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        raise RunFolderError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise RunFolderError(f"{path}: expected a mapping of config keys, got {type(cfg).__name__}")
    return cfg


def metric(metrics: dict[str, Any], key: str, run_dir: str | Path) -> Any:
    """metrics[key], or a RunFolderError naming the run's metrics.json."""
    if key not in metrics:
        raise RunFolderError(f"{Path(run_dir) / METRICS_FILE}: no {key!r} entry")
    return metrics[key]


def _metadata_json(meta: dict[str, str], key: str, path: Path) -> Any:
    try:
        return json.loads(meta[key])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise RunFolderError(f"{path}: no readable {key!r} in its metadata") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1


def read_predictions(run_dir: str | Path, split: str = "test") -> Predictions:
    """A run's predictions for `split` ('test' or 'val'), checked: readable, with ids, genres and thresholds that
    fit its (N, G) probabilities and labels, all of them finite, probabilities in [0, 1] and labels 0 or 1."""
    from safetensors import SafetensorError, safe_open

    path = Path(run_dir) / predictions_file(split)
    if not path.is_file():
        raise RunFileMissing(f"{path}: missing")
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise RunFolderError(f"{path}: not a readable safetensors file ({exc})") from None
    genres = _metadata_json(meta, "genres", path)
    if not isinstance(genres, list) or not all(isinstance(g, str) for g in genres) or len(set(genres)) != len(genres):
        raise RunFolderError(f"{path}: no readable 'genres' list in its metadata")
    ids = _metadata_json(meta, "ids", path)
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise RunFolderError(f"{path}: its 'ids' metadata is not a list of movie ids")
    for name in ("probs", "labels"):
        if name not in tensors:
            raise RunFolderError(f"{path}: no {name!r} tensor")
    probs, labels = tensors.pop("probs"), tensors.pop("labels")
    if probs.ndim != 2 or labels.shape != probs.shape or probs.shape != (len(ids), len(genres)):
        raise RunFolderError(f"{path}: probabilities {probs.shape} and labels {labels.shape} do not fit its "
                             f"{len(ids)} ids and {len(genres)} genres")
    if not (np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()):
        raise RunFolderError(f"{path}: 'probs' holds values that are not probabilities (NaN, inf, outside [0, 1])")
    if not np.isin(labels, (0, 1)).all():
        raise RunFolderError(f"{path}: 'labels' holds values other than 0 and 1")
    thr = _metadata_json(meta, "thresholds", path)
    if isinstance(thr, list):
        if len(thr) != len(genres) or not all(_is_number(v) for v in thr):
            raise RunFolderError(f"{path}: its thresholds are not one number in [0, 1] per genre")
        thresholds: float | np.ndarray = np.asarray(thr)
    elif _is_number(thr):
        thresholds = float(thr)
    else:
        raise RunFolderError(f"{path}: its threshold {thr!r} is not a number in [0, 1]")
    for name, t in tensors.items():
        if t.ndim == 0 or t.shape[0] != len(ids) or not np.isfinite(t).all():
            raise RunFolderError(f"{path}: tensor {name!r} {t.shape} is not finite values for its {len(ids)} movies")
    return Predictions(ids, probs, labels, thresholds, genres, tensors, path)


@dataclass
class Run:
    """A finished run folder as read: its config and metrics; predictions are read on demand."""

    dir: Path
    config: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def model_dir(self) -> Path:
        """The saved model (checkpoint.load_head / predictor.load_model verify it when they read it)."""
        return self.dir / MODEL_DIR

    def predictions(self, split: str = "test") -> Predictions:
        return read_predictions(self.dir, split)


def read_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFileMissing(f"{run_dir}: no such run folder")
    return Run(run_dir, read_config(run_dir), read_metrics(run_dir))


def find_runs(row_dir: str | Path, split: str = "test") -> list[Path]:
    """The run folders of a model: `row_dir` itself when it is a run folder (holds `split`'s predictions), else its
    `seed-<n>/` subfolders that do, in seed order."""
    row_dir, name = Path(row_dir), predictions_file(split)
    if (row_dir / name).exists():
        return [row_dir]
    seeds = [(int(m.group(1)), p) for p in row_dir.glob("seed-*") if (m := _SEED_DIR.fullmatch(p.name))]
    runs = [p for _, p in sorted(seeds) if (p / name).exists()]
    if not runs:
        raise RunFileMissing(f"{row_dir}: no {name} here or in seed-*/ subfolders")
    return runs


@dataclass
class Grid:
    """A finished grid folder as read: grid.json, data_summary.json and every run's metrics.json."""

    dir: Path
    grid: dict[str, Any]
    summary: dict[str, Any]
    metrics: dict[str, list[dict[str, Any]]]  # row name -> metrics.json of each seed, in grid order

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.grid["rows"]

    @property
    def n_seeds(self) -> int:
        return len(self.rows[0]["runs"])

    def run_dirs(self, row: dict[str, Any]) -> list[Path]:
        return [self.dir / d for d in row["runs"]]

    def predictions(self, row: dict[str, Any], split: str = "test") -> list[Predictions]:
        """Each seed's predictions of `row`."""
        return [read_predictions(d, split) for d in self.run_dirs(row)]


def _inside(rel: Any) -> bool:
    """A run path in grid.json: relative, inside the grid folder."""
    if not isinstance(rel, str) or not rel or "\\" in rel:
        return False
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts


def read_grid(grid_dir: str | Path) -> Grid:
    grid_dir = Path(grid_dir)
    path = grid_dir / GRID_FILE
    grid = read_json(path, " (is this a complete `genrefusion grid` run folder?)")
    for key in ("rows", "n", "split", "data", "slots"):
        if key not in grid:
            raise RunFolderError(f"{path}: no {key!r} entry; not a grid run")
    rows = grid["rows"]
    if not isinstance(rows, list) or not rows:
        raise RunFolderError(f"{path}: no rows")
    for i, r in enumerate(rows):
        if not (isinstance(r, dict) and isinstance(r.get("row"), str) and isinstance(r.get("runs"), list)
                and r["runs"] and all(_inside(d) for d in r["runs"])):
            raise RunFolderError(f"{path}: row {i} needs a 'row' name and 'runs', folders inside the grid folder")
    if len({len(r["runs"]) for r in rows}) != 1:
        raise RunFolderError(f"{path}: rows have different numbers of seeds")
    summary = read_json(grid_dir / SUMMARY_FILE, " (is this a complete `genrefusion grid` run folder?)")
    metrics = {r["row"]: [read_metrics(grid_dir / d) for d in r["runs"]] for r in rows}
    return Grid(grid_dir, grid, summary, metrics)


def read_crossval(cv_dir: str | Path) -> dict[str, Any]:
    """crossval.json of a finished cross-validation folder, checked: rows, each with its folds' run folders inside
    the folder."""
    path = Path(cv_dir) / CROSSVAL_FILE
    cv = read_json(path, " (is this a complete cross-validation folder?)")
    rows = cv.get("rows")
    if not isinstance(rows, list) or not rows:
        raise RunFolderError(f"{path}: no rows")
    for i, r in enumerate(rows):
        if not (isinstance(r, dict) and isinstance(r.get("row"), str) and isinstance(r.get("folds"), list)
                and r["folds"] and all(isinstance(f, dict) and _inside(f.get("dir")) for f in r["folds"])):
            raise RunFolderError(f"{path}: row {i} needs a 'row' name and 'folds', each with a 'dir' inside the "
                                 "folder")
    return cv
