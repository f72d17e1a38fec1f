"""Run folders (genrefusion.evaluation.runs): what a finished run holds reads back as written, and every missing or damaged file
is named, a RunFileMissing (FileNotFoundError) or a RunFolderError (ValueError) that the CLI prints as one line."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from safetensors import safe_open

from genrefusion.evaluation import runs
from genrefusion.data.labels import GENRES
from genrefusion.evaluation.runs import Predictions, RunFileMissing, RunFolderError


def _preds(n: int = 6, seed: int = 0, **analysis) -> Predictions:
    rng = np.random.default_rng(seed)
    return Predictions([f"m{i}" for i in range(n)], rng.random((n, len(GENRES))).astype(np.float32),
                       (rng.random((n, len(GENRES))) < 0.3).astype(np.float32), 0.5, list(GENRES), analysis)


def _write_raw(path, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=meta)


def _meta(p: Predictions) -> dict[str, str]:
    return {"ids": json.dumps(p.ids), "genres": json.dumps(p.genres), "thresholds": json.dumps(p.thresholds)}


def test_a_finished_run_reads_back_as_written(trained_run):
    run = runs.read_run(trained_run)
    assert run.config["model"] == "gmu" and run.metrics["model"] == "gmu"
    assert run.model_dir == trained_run / "model" and (run.model_dir / "model.json").is_file()
    test, val = run.predictions("test"), runs.read_predictions(trained_run, "val")
    assert test.probs.shape == (run.metrics["data"]["n"]["test"], len(GENRES)) and test.genres == list(GENRES)
    assert len(val.ids) == run.metrics["data"]["n"]["dev"]
    assert np.asarray(test.thresholds).tolist() == run.metrics["thresholds"]
    assert test.analysis["gate"].shape[0] == len(test.ids)  # GMU's gate, one row per test movie
    with safe_open(str(trained_run / "test_predictions.safetensors"), "np") as f:  # the file as any reader sees it
        np.testing.assert_array_equal(f.get_tensor("probs"), test.probs)
        assert json.loads(f.metadata()["ids"]) == test.ids


def test_predictions_round_trip(tmp_path):
    p = _preds(gate=np.full((6, 4), 0.25, np.float32))
    p.thresholds = np.linspace(0.1, 0.9, len(GENRES))
    runs.write_predictions(tmp_path / "test_predictions.safetensors", p)
    back = runs.read_predictions(tmp_path)
    assert back.ids == p.ids and back.genres == p.genres and back.path == tmp_path / "test_predictions.safetensors"
    np.testing.assert_array_equal(back.probs, p.probs)
    np.testing.assert_array_equal(back.labels, p.labels)
    np.testing.assert_allclose(back.thresholds, p.thresholds)
    np.testing.assert_array_equal(back.analysis["gate"], p.analysis["gate"])
    assert list(tmp_path.iterdir()) == [tmp_path / "test_predictions.safetensors"]  # no temporary left


def test_writing_predictions_whose_columns_are_not_the_genres_is_refused(tmp_path):
    p = _preds()
    p.genres = p.genres[:5]
    with pytest.raises(ValueError, match="23 probabilities|5 genres"):
        runs.write_predictions(tmp_path / "test_predictions.safetensors", p)
    assert not list(tmp_path.iterdir())


def _damaged(kind: str, p: Predictions) -> tuple[dict, dict]:
    tensors, meta = {"probs": p.probs, "labels": p.labels}, _meta(p)
    if kind == "NaN probability":
        tensors["probs"] = p.probs.copy()
        tensors["probs"][2, 3] = np.nan
    elif kind == "probability above 1":
        tensors["probs"] = p.probs + 1
    elif kind == "labels not 0/1":
        tensors["labels"] = p.labels * 0.5
    elif kind == "no labels":
        del tensors["labels"]
    elif kind == "one id too many":
        meta["ids"] = json.dumps(p.ids + ["extra"])
    elif kind == "ids not a list":
        meta["ids"] = json.dumps({"a": 1})
    elif kind == "no genres":
        del meta["genres"]
    elif kind == "genres not JSON":
        meta["genres"] = "[Drama"
    elif kind == "thresholds for 5 genres":
        meta["thresholds"] = json.dumps([0.5] * 5)
    elif kind == "threshold not a number":
        meta["thresholds"] = json.dumps("high")
    elif kind == "analysis of other movies":
        tensors["gate"] = np.zeros((2, 4), np.float32)
    return tensors, meta


DAMAGES = {
    "NaN probability": "not probabilities", "probability above 1": "not probabilities",
    "labels not 0/1": "other than 0 and 1", "no labels": "no 'labels' tensor", "one id too many": "do not fit",
    "ids not a list": "'ids' metadata", "no genres": "no readable 'genres'", "genres not JSON": "no readable 'genres'",
    "thresholds for 5 genres": "one number in \\[0, 1\\] per genre", "threshold not a number": "threshold 'high'",
    "analysis of other movies": "tensor 'gate'",
}


@pytest.mark.parametrize("kind", sorted(DAMAGES))
def test_a_damaged_predictions_file_is_named(tmp_path, kind):
    tensors, meta = _damaged(kind, _preds())
    path = tmp_path / "val_predictions.safetensors"
    _write_raw(path, tensors, meta)
    with pytest.raises(RunFolderError, match=f"^{re.escape(str(path))}: .*{DAMAGES[kind]}"):
        runs.read_predictions(tmp_path, "val")


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b"\xff\xff\xff\xff\xff\xff\xff\x7f{}", b"not safetensors"])
def test_a_file_that_is_no_safetensors_is_named(tmp_path, content):
    (tmp_path / "test_predictions.safetensors").write_bytes(content)
    with pytest.raises(RunFolderError, match="test_predictions.safetensors: not a readable safetensors file"):
        runs.read_predictions(tmp_path)


def test_a_truncated_predictions_file_is_named(tmp_path):
    runs.write_predictions(tmp_path / "test_predictions.safetensors", _preds())
    data = (tmp_path / "test_predictions.safetensors").read_bytes()
    (tmp_path / "test_predictions.safetensors").write_bytes(data[: len(data) - 40])
    with pytest.raises(RunFolderError, match="not a readable safetensors file"):
        runs.read_predictions(tmp_path)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(RunFileMissing, match=re.escape(f"{tmp_path / 'nothing'}: no such run folder")):
        runs.read_run(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'config.yaml'}: missing")):
        runs.read_run(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'test_predictions.safetensors'}: missing")):
        runs.read_predictions(tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        runs.read_predictions(tmp_path, "train")


@pytest.mark.parametrize("content, message", [
    (b"{\"a\": ", "not valid JSON"), (b"[1, 2]", "expected a JSON object, got list"), (b"\xff\xfe{}", "not UTF-8"),
    (None, "unreadable"),
])
def test_a_damaged_metrics_file_is_named(tmp_path, content, message):
    path = tmp_path / "metrics.json"
    if content is None:
        path.mkdir()  # a folder where the file should be
    else:
        path.write_bytes(content)
    with pytest.raises(RunFolderError, match=f"^{re.escape(str(path))}: {message}"):
        runs.read_metrics(tmp_path)
    with pytest.raises(RunFolderError, match=f"{path}: no 'threshold_mode' entry"):
        runs.metric({}, "threshold_mode", tmp_path)


@pytest.mark.parametrize("content, message", [("a: [1", "not valid YAML"), ("- 1\n- 2\n", "expected a mapping")])
def test_a_damaged_config_is_named(tmp_path, content, message):
    (tmp_path / "config.yaml").write_text(content)
    with pytest.raises(RunFolderError, match=f"config.yaml: {message}"):
        runs.read_config(tmp_path)


def test_find_runs_takes_a_run_or_its_seeds_in_seed_order(tmp_path):
    for s in (10, 2, 0):
        (tmp_path / f"seed-{s}").mkdir()
        runs.write_predictions(tmp_path / f"seed-{s}" / "test_predictions.safetensors", _preds())
    (tmp_path / "seed-x").mkdir()  # not a seed folder
    (tmp_path / "seed-3").mkdir()  # a seed without predictions (an unfinished run)
    assert runs.find_runs(tmp_path) == [tmp_path / "seed-0", tmp_path / "seed-2", tmp_path / "seed-10"]
    assert runs.find_runs(tmp_path / "seed-2") == [tmp_path / "seed-2"]
    with pytest.raises(RunFileMissing, match="no test_predictions.safetensors here or in seed-"):
        runs.find_runs(tmp_path / "seed-3")


def _grid(tmp_path, rows):
    (tmp_path / "grid.json").write_text(json.dumps({"rows": rows, "n": {}, "split": "official", "data": "d",
                                                    "slots": {}}))
    (tmp_path / "data_summary.json").write_text("{}")
    return tmp_path


@pytest.mark.parametrize("runs_of_row", [["../elsewhere"], ["/etc"], [""], [3], []])
def test_a_grid_row_pointing_outside_its_folder_is_refused(tmp_path, runs_of_row):
    grid = _grid(tmp_path, [{"row": "BERT", "runs": runs_of_row}])
    with pytest.raises(RunFolderError, match="grid.json: row 0 needs a 'row' name and 'runs'"):
        runs.read_grid(grid)


def test_a_grid_reads_every_runs_metrics(tmp_path):
    grid = _grid(tmp_path, [{"row": "BERT", "runs": ["bert/seed-0", "bert/seed-1"]}])
    for s in (0, 1):
        (tmp_path / "bert" / f"seed-{s}").mkdir(parents=True)
        (tmp_path / "bert" / f"seed-{s}" / "metrics.json").write_text(json.dumps({"seed": s}))
    g = runs.read_grid(grid)
    assert g.n_seeds == 2 and g.metrics == {"BERT": [{"seed": 0}, {"seed": 1}]}
    assert g.run_dirs(g.rows[0]) == [tmp_path / "bert" / "seed-0", tmp_path / "bert" / "seed-1"]


def test_compare_prints_one_line_for_a_damaged_run(trained_run, tmp_path, capsys):
    from genrefusion.cli.commands import main

    damaged = tmp_path / "damaged"
    shutil.copytree(trained_run, damaged)
    path = damaged / "test_predictions.safetensors"
    p = runs.read_predictions(trained_run)
    tensors, meta = _damaged("NaN probability", p)
    _write_raw(path, tensors, meta)
    assert main(["compare", str(trained_run), str(damaged), "--n-boot", "20"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and "not probabilities" in err and len(err.splitlines()) == 1
