"""Optional experiment tracking for `train` and `grid` (`--track mlflow|tensorboard`): each run's config, its
per-epoch curve (train.fit's on_epoch hook, the one training loop), its final metrics and, with MLflow, the model
folder, metrics.json and config.yaml as artifacts. A grid is one parent run with a child run per row and seed.

    --track mlflow        a local SQLite store by default, `<out>/mlflow.db` with artifacts in
                          `<out>/mlflow-artifacts/` (`mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`, with
                          the full `mlflow` package, shows them); `--track-uri` takes any tracking URI (a server,
                          another database; MLflow itself refuses a `file:` store unless MLFLOW_ALLOW_FILE_STORE=true)
    --track tensorboard   event files (tensorboardX) in each run folder's `tensorboard/`, or `--track-uri DIR/<run>`

Names: the per-epoch curve is `epoch/train_loss`, `epoch/val_loss`, `epoch/val_f1_macro` (at 0.5), ... at step =
epoch; the final numbers are `<split>_<metric>` (`val_f1_macro` at the tuned thresholds, `test_f1_micro`,
`test_at_0.5_f1_macro`, ...), `test_f1/<genre>` and `best_epoch`; a grid's parent run has `<row>/test_f1_macro`.

Both are an optional extra, `pip install 'genrefusion[track]'` (mlflow-skinny with SQLAlchemy and alembic for the
SQLite store, tensorboardX); nothing imports them unless asked to track, and a missing one is a one-line error
naming the extra. A store that cannot be opened, or a run that cannot be created, stops the command before any
training; a logging call that fails later is reported once and tracking of that run stops, while training goes
on (the run folder holds every number anyway).
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..evaluation import runs
from ..version import __version__

TRACKERS = ("mlflow", "tensorboard")
DEFAULT_EXPERIMENT = "genrefusion"
EXTRA = "pip install 'genrefusion[track]'"
# train.fit's history row -> the curve's name. Under "epoch/": the curve's validation F1 is at 0.5, the final
# `val_f1_macro` at the tuned thresholds, and the two must not share a name (one would extend the other's curve).
EPOCH_KEYS = {k: f"epoch/{k}" for k in ("train_loss", "val_loss", "val_f1_macro", "val_f1_micro", "lr", "seconds")}
RESULT_SPLITS = ("val", "test", "test_at_0.5")


class TrackingError(ValueError):
    """A tracker that cannot be used: the extra is missing, the store cannot be opened, a run cannot start."""


def _missing(kind: str, exc: ImportError) -> TrackingError:
    return TrackingError(f"--track {kind} needs {(exc.name or 'a package').split('.')[0]} (not installed): {EXTRA}")


def metric_name(text: str) -> str:
    """A grid row's name as a metric name (MLflow takes letters, digits, '_', '-', '.', ' ' and '/')."""
    return re.sub(r"[^A-Za-z0-9_\-. ]+", "_", text).strip() or "row"


def flat_params(config: dict[str, Any]) -> dict[str, str]:
    """A config as tracker parameters: scalars as text, lists and dicts as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


def result_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """A run's final numbers as flat tracker metrics: `<split>_<metric>` for every number of the validation,
    test and test-at-0.5 scores, `test_f1/<genre>` per genre, and the best epoch."""
    out: dict[str, float] = {}
    for split in RESULT_SPLITS:
        for k, v in (metrics.get(split) or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{split}_{k}"] = float(v)
    for genre, row in (metrics.get("test") or {}).get("per_genre", {}).items():
        out[f"test_f1/{genre}"] = float(row["f1"])
    if isinstance(metrics.get("best_epoch"), int):
        out["best_epoch"] = float(metrics["best_epoch"])
    return out


class TrackedRun:
    """One tracked run. A logging call that fails warns once and stops this run's tracking (never training)."""

    def __init__(self, name: str):
        self.name = name
        self.broken = False

    def _guard(self, what: str, fn, *args) -> None:
        if self.broken:
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - a tracker must never stop training
            self._warn(what, e)

    def _warn(self, what: str, e: Exception) -> None:
        if not self.broken:
            print(f"warning: tracking {self.name}: {what} failed ({type(e).__name__}: {e}); tracking of this run "
                  "stops, training goes on (its run folder has every number)", file=sys.stderr)
        self.broken = True

    def log_epoch(self, row: dict[str, Any]) -> None:
        """train.fit's on_epoch hook: one history row at step = its epoch."""
        values = {name: float(row[k]) for k, name in EPOCH_KEYS.items() if isinstance(row.get(k), (int, float))}
        self._guard("logging an epoch", self._metrics, values, int(row["epoch"]))

    def log_metrics(self, values: dict[str, float], step: int | None = None) -> None:
        self._guard("logging metrics", self._metrics, values, step)

    def log_grid(self, rows: list[dict[str, Any]], grid_dir: Path) -> None:
        """A grid's parent run: each row's test macro/micro-F1 (its seed mean with several seeds), as
        `<row>/test_f1_macro`, and the grid's files."""
        values: dict[str, float] = {}
        for row in rows:
            name = metric_name(row["row"])
            for k in ("f1_macro", "f1_micro"):
                v = row["test"].get(k)
                v = v.get("mean") if isinstance(v, dict) else v
                if isinstance(v, (int, float)):
                    values[f"{name}/test_{k}"] = float(v)
        self.log_metrics(values)
        self._guard("logging artifacts", self._artifacts, Path(grid_dir))

    def log_result(self, metrics: dict[str, Any], run_dir: Path | None) -> None:
        """The final metrics and, where the tracker keeps files, the run's model folder and files."""
        self.log_metrics(result_metrics(metrics), metrics.get("best_epoch"))
        if run_dir is not None:
            self._guard("logging artifacts", self._artifacts, Path(run_dir))

    def finish(self, status: str) -> None:
        """End the run, also after a failed logging call (so that the store does not show it running forever);
        a failure here is reported only if none was before."""
        try:
            self.end(status)
        except Exception as e:  # noqa: BLE001
            self._warn("ending the run", e)

    # implemented per tracker
    def _metrics(self, values: dict[str, float], step: int | None) -> None:
        raise NotImplementedError

    def _artifacts(self, run_dir: Path) -> None:
        pass

    def end(self, status: str) -> None:
        pass


class Tracker:
    kind = ""

    def start(self, name: str, params: dict[str, str], run_dir: Path, parent: TrackedRun | None) -> TrackedRun:
        raise NotImplementedError

    @contextmanager
    def run(self, name: str, config: dict[str, Any], run_dir: str | Path,
            parent: TrackedRun | None = None) -> Iterator[TrackedRun]:
        """A tracked run around a block: FINISHED when the block ends, FAILED (and re-raised) when it raises."""
        tracked = self.start(name, flat_params(config), Path(run_dir), parent)
        try:
            yield tracked
        except BaseException:
            tracked.finish("FAILED")
            raise
        tracked.finish("FINISHED")


# -- MLflow ---------------------------------------------------------------------------------------------------
class MlflowRun(TrackedRun):
    def __init__(self, client, run_id: str, name: str):
        super().__init__(name)
        self.client, self.id = client, run_id

    def _metrics(self, values: dict[str, float], step: int | None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step or 0) for k, v in values.items()]
        for i in range(0, len(batch), 1000):  # MLflow's log_batch takes at most 1000 metrics
            self.client.log_batch(self.id, metrics=batch[i:i + 1000])

    def _artifacts(self, run_dir: Path) -> None:
        if (run_dir / runs.MODEL_DIR).is_dir():
            self.client.log_artifacts(self.id, str(run_dir / runs.MODEL_DIR), runs.MODEL_DIR)
        for name in (runs.METRICS_FILE, runs.CONFIG_FILE, runs.TABLES_FILE, runs.GRID_FILE):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.id, str(run_dir / name))

    def end(self, status: str) -> None:
        self.client.set_terminated(self.id, status)


class MlflowTracker(Tracker):
    kind = "mlflow"

    def __init__(self, uri: str | None, experiment: str, default_dir: str | Path):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise _missing("mlflow", e) from None
        if "MLFLOW_LOGGING_LEVEL" not in os.environ:  # its INFO lines ("Creating initial MLflow database
            logging.getLogger("mlflow").setLevel(logging.WARNING)  # tables...") are noise in our output
        artifacts = None
        if uri is None:  # a local SQLite store beside the runs
            root = Path(default_dir).expanduser().resolve()
            root.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{root / 'mlflow.db'}", (root / "mlflow-artifacts").as_uri()
        elif uri.startswith("sqlite:///"):  # artifacts beside the database, not in the working directory
            artifacts = (Path(uri[len("sqlite:///"):]).expanduser().resolve().parent / "mlflow-artifacts").as_uri()
        self.uri = uri
        try:
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (found.experiment_id if found else
                                  self.client.create_experiment(experiment, artifact_location=artifacts))
        except ImportError as e:  # the SQLite store needs SQLAlchemy and alembic, which mlflow-skinny lacks
            raise _missing("mlflow", e) from None
        except Exception as e:  # noqa: BLE001 - whatever the store raises, one line naming it
            raise TrackingError(f"MLflow tracking store {uri}: {type(e).__name__}: {str(e).splitlines()[0]}") from None

    def start(self, name, params, run_dir, parent) -> MlflowRun:
        from mlflow.entities import Param

        tags = {"genrefusion.version": __version__, "genrefusion.run_dir": str(run_dir)}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent.id
        try:
            info = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info
            items = [Param(k, v[:6000]) for k, v in params.items()]  # MLflow's longest parameter value
            for i in range(0, len(items), 100):  # at most 100 parameters per log_batch
                self.client.log_batch(info.run_id, params=items[i:i + 100])
        except Exception as e:  # noqa: BLE001
            raise TrackingError(f"MLflow tracking store {self.uri}: cannot start run {name!r}: {e}") from None
        return MlflowRun(self.client, info.run_id, name)


# -- TensorBoard ----------------------------------------------------------------------------------------------
class TensorboardRun(TrackedRun):
    def __init__(self, writer, name: str):
        super().__init__(name)
        self.writer = writer

    def _metrics(self, values: dict[str, float], step: int | None) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step or 0)
        self.writer.flush()

    def end(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()


class TensorboardTracker(Tracker):
    kind = "tensorboard"

    def __init__(self, logdir: str | None):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as e:
            raise _missing("tensorboard", e) from None
        self.writer_class, self.logdir = SummaryWriter, logdir

    def start(self, name, params, run_dir, parent) -> TensorboardRun:
        logdir = Path(self.logdir) / name if self.logdir else run_dir / "tensorboard"
        try:
            writer = self.writer_class(logdir=str(logdir))
            table = "\n".join(f"| {k} | {v} |" for k, v in params.items())
            writer.add_text("config", "| key | value |\n|---|---|\n" + table)
        except Exception as e:  # noqa: BLE001
            raise TrackingError(f"tensorboard: cannot write event files in {logdir}: {e}") from None
        return TensorboardRun(writer, name)


def open_tracker(kind: str | None, uri: str | None = None, experiment: str = "genrefusion",
                 default_dir: str | Path = "runs") -> Tracker | None:
    """The tracker `--track KIND` names (None: no tracking). `default_dir` holds the default MLflow store."""
    if kind is None or kind == "none":
        return None
    if kind == "mlflow":
        return MlflowTracker(uri, experiment, default_dir)
    if kind == "tensorboard":
        return TensorboardTracker(uri)
    raise TrackingError(f"unknown tracker {kind!r}; trackers: {', '.join(TRACKERS)}")


@contextmanager
def maybe_run(tracker: Tracker | None, name: str, config: dict[str, Any], run_dir: str | Path,
              parent: TrackedRun | None = None) -> Iterator[TrackedRun | None]:
    """tracker.run(...), or nothing (None) without a tracker."""
    if tracker is None:
        yield None
        return
    with tracker.run(name, config, run_dir, parent) as tracked:
        yield tracked


def tracked_experiment(tracker: Tracker | None, cfg, run_dir: str | Path, parent: TrackedRun | None = None,
                       **kwargs: Any) -> dict[str, Any]:
    """experiment.run_experiment, tracked: the run starts before training, each epoch is logged as it ends, and
    the final metrics and the run folder once it is written."""
    from .experiment import run_experiment  # lazy: keeps training.tracking free of safetensors, scipy, sklearn, torch

    name = cfg.name or Path(run_dir).name
    with maybe_run(tracker, name, cfg.to_dict(), run_dir, parent) as tracked:
        metrics = run_experiment(cfg, run_dir=run_dir, on_epoch=tracked.log_epoch if tracked else None, **kwargs)
        if tracked:
            tracked.log_result(metrics, Path(run_dir))
    return metrics
