"""Experiment tracking (`--track mlflow|tensorboard`, tracking.py) against real local stores: a tiny `train` and a
two-row `grid` are logged to a temporary MLflow SQLite store and read back with MLflow's own client (config,
per-epoch curve, final metrics, the model folder as an artifact, the grid as a parent run); TensorBoard event files
are read back record by record. A tracker that is missing or cannot be opened stops the command before training
with one line; one that fails mid-run warns and training goes on."""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from genrefusion.cli.commands import main

# MLflow's SQLite store, on SQLAlchemy 2.1 (its code, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


def _train_args(catalog, tiny_bert, tiny_vit, out: Path, cache: Path, *extra: str, name="tracked") -> list[str]:
    return ["train", *extra, f"data={catalog}", "split=official", "modalities=any", "model=gmu",
            f"text_encoder={tiny_bert}", f"image_encoder={tiny_vit}", "pooling=mean", "epochs=3", "lr=3e-3",
            f"cache_dir={cache}", f"out={out}", f"name={name}"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (MLflow builds its tables once, which takes seconds), and one feature cache
    beside it (the train that `tracked_train` runs fills it; the other runs read it)."""
    root = tmp_path_factory.mktemp("mlflow")
    return root, f"sqlite:///{root / 'runs' / 'mlflow.db'}"


@pytest.fixture(scope="module")
def tracked_train(store, synthetic_catalog, tiny_bert, tiny_vit):
    """`genrefusion train --track mlflow` with the default store (`<out>/mlflow.db`)."""
    root, _ = store
    args = _train_args(synthetic_catalog, tiny_bert, tiny_vit, root / "runs", root / "cache", "--track", "mlflow")
    assert main(args) == 0
    return root / "runs" / "tracked"


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(client, name="genrefusion"):
    exp = client.get_experiment_by_name(name)
    assert exp is not None, f"no experiment {name!r}"
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def test_train_logs_config_curves_metrics_and_the_model_folder(store, tracked_train, tmp_path):
    _, uri = store
    client = _client(uri)
    run = _runs(client)["tracked"]
    metrics = json.loads((tracked_train / "metrics.json").read_text())
    assert run.info.status == "FINISHED"
    # the config, every key
    assert run.data.params["model"] == "gmu" and run.data.params["epochs"] == "3"
    assert run.data.tags["genrefusion.run_dir"] == str(tracked_train)
    # the per-epoch curve: one point per epoch at step = epoch, train.fit's own history
    for key in ("train_loss", "val_loss", "val_f1_macro"):
        hist = client.get_metric_history(run.info.run_id, f"epoch/{key}")
        assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == \
            [(h["epoch"], pytest.approx(h[key])) for h in metrics["history"]]
    assert len(metrics["history"]) == 3
    # the final numbers, as metrics.json has them
    got = run.data.metrics
    assert got["test_f1_macro"] == pytest.approx(metrics["test"]["f1_macro"])
    assert got["test_f1_micro"] == pytest.approx(metrics["test"]["f1_micro"])
    assert got["val_f1_macro"] == pytest.approx(metrics["val"]["f1_macro"])
    if metrics["test_at_0.5"]:  # only with tuned thresholds (the thesis preset's are fixed at 0.5)
        assert got["test_at_0.5_f1_macro"] == pytest.approx(metrics["test_at_0.5"]["f1_macro"])
    else:
        assert not any(k.startswith("test_at_0.5") for k in got)
    assert got["best_epoch"] == metrics["best_epoch"]
    genre, row = next(iter(metrics["test"]["per_genre"].items()))
    assert got[f"test_f1/{genre}"] == pytest.approx(row["f1"])
    # the model folder and the run's files as artifacts, byte for byte
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "metrics.json", "config.yaml"} <= top
    model_files = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model")}
    assert model_files == {p.name for p in (tracked_train / "model").iterdir()}
    local = client.download_artifacts(run.info.run_id, "model/model.json", str(tmp_path))
    assert Path(local).read_bytes() == (tracked_train / "model" / "model.json").read_bytes()


def test_grid_is_a_parent_run_with_a_child_per_row(store, tracked_train, synthetic_catalog, tiny_bert, tiny_vit):
    root, uri = store
    out = root / "grid"
    args = ["grid", "--data", str(synthetic_catalog), "--rows", "BERT,GMU", "--text-encoder", str(tiny_bert),
            "--image-encoder", str(tiny_vit), "--cache-dir", str(root / "cache"), "--out", str(out), "--no-report",
            "--track", "mlflow", "--track-uri", uri, "--track-experiment", "grids", "epochs=2", "pooling=mean"]
    assert main(args) == 0
    client = _client(uri)
    runs = _runs(client, "grids")
    parent = runs["grid"]
    grid = json.loads((out / "grid.json").read_text())
    children = {n: r for n, r in runs.items() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == sorted(r["runs"][0] for r in grid["rows"]) and len(children) == 2
    assert all(r.info.status == "FINISHED" for r in runs.values())
    for row in grid["rows"]:
        child = children[row["runs"][0]]
        assert child.data.metrics["test_f1_macro"] == pytest.approx(row["test"]["f1_macro"])
        assert parent.data.metrics[f"{row['row']}/test_f1_macro"] == pytest.approx(row["test"]["f1_macro"])
        assert len(client.get_metric_history(child.info.run_id, "epoch/val_loss")) == 2
    assert parent.data.params["rows"] == json.dumps(["BERT", "GMU"])
    assert {"grid.json", "tables.txt"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_a_store_that_cannot_be_opened_stops_before_training(tmp_path, synthetic_catalog, tiny_bert, tiny_vit,
                                                            capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = _train_args(synthetic_catalog, tiny_bert, tiny_vit, tmp_path / "runs", tmp_path / "cache",
                       "--track", "mlflow", "--track-uri", f"sqlite:///{blocker / 'mlflow.db'}")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: MLflow tracking store sqlite:///") and str(blocker) in err[0]
    assert not (tmp_path / "runs" / "tracked").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("kind, module", [("mlflow", "mlflow"), ("tensorboard", "tensorboardX")])
def test_a_missing_extra_is_one_line_naming_it(kind, module, monkeypatch, tmp_path, synthetic_catalog, tiny_bert,
                                               tiny_vit, capsys):
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError, as if not installed
    args = _train_args(synthetic_catalog, tiny_bert, tiny_vit, tmp_path / "runs", tmp_path / "cache", "--track", kind)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --track {kind} needs {module} (not installed): pip install 'genrefusion[track]'"]
    assert not (tmp_path / "runs").exists()


def test_a_tracker_failing_mid_run_warns_once_and_training_goes_on(store, tracked_train, tmp_path, synthetic_catalog,
                                                                  tiny_bert, tiny_vit, monkeypatch, capsys):
    from genrefusion.training import tracking

    _, uri = store
    calls = []

    def broken(self, values, step):
        calls.append(step)
        raise ConnectionError("the tracking server went away")

    monkeypatch.setattr(tracking.MlflowRun, "_metrics", broken)
    args = _train_args(synthetic_catalog, tiny_bert, tiny_vit, tmp_path / "runs", store[0] / "cache",
                       "--track", "mlflow", "--track-uri", uri, name="flaky")
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("warning: tracking flaky: logging an epoch failed (ConnectionError") == 1
    assert calls == [1]  # tried once, then tracking of the run stopped
    metrics = json.loads((tmp_path / "runs" / "flaky" / "metrics.json").read_text())
    assert len(metrics["history"]) == 3 and (tmp_path / "runs" / "flaky" / "model" / "model.json").is_file()


def _events(logdir: Path) -> list:
    """Every Event of the TFRecord files in `logdir` (length, crc, event bytes, crc per record)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append(Event.FromString(data[pos + 12:pos + 12 + n]))
            pos += 12 + n + 4
    return events


def test_tensorboard_writes_the_curves_and_final_metrics(store, tracked_train, tmp_path, synthetic_catalog, tiny_bert,
                                                         tiny_vit):
    args = _train_args(synthetic_catalog, tiny_bert, tiny_vit, tmp_path / "runs", store[0] / "cache",
                       "--track", "tensorboard")
    assert main(args) == 0
    run = tmp_path / "runs" / "tracked"
    metrics = json.loads((run / "metrics.json").read_text())
    scalars: dict[str, list] = {}
    for e in _events(run / "tensorboard"):
        for v in e.summary.value:
            if v.HasField("simple_value"):
                scalars.setdefault(v.tag, []).append((e.step, v.simple_value))
    assert scalars["epoch/val_loss"] == [(h["epoch"], pytest.approx(h["val_loss"], rel=1e-6))
                                         for h in metrics["history"]]
    assert scalars["test_f1_macro"] == [(metrics["best_epoch"], pytest.approx(metrics["test"]["f1_macro"], rel=1e-6))]
