"""Every command that reads data says what it skipped, and a run folder records it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from genrefusion.cli.commands import main
from genrefusion.data.loader import load_dataset
from genrefusion.data.summary import data_summary, format_data_line

from conftest import build_synthetic_catalog


@pytest.fixture
def flawed_catalog(tmp_path) -> Path:
    """The synthetic catalog plus three rows a careful reader must skip: a duplicate, a lost poster, a bad type."""
    cat = build_synthetic_catalog(tmp_path / "cat", n=60)
    with cat.open("a", encoding="utf-8") as f:
        f.write("m0,ghost night dark,Horror,,train\n"  # id m0 again, same split: used once
                "x1,space ship alien,Sci-Fi,lost.jpg,train\n"  # poster file does not exist
                "x2,funny comedy,Comedy|Soap,,test\n"  # fine (Soap is dropped and counted)
                "../x3,family life,Drama,,train\n")  # not a plain id
    return cat


def test_the_data_line_names_counts_per_kind_and_the_first_files(flawed_catalog):
    ds = load_dataset(flawed_catalog)
    line = format_data_line(data_summary(ds))
    assert line.startswith("data: 61 movies (official split: train 39, dev 10, test 12)")
    assert "skipped 3 (bad_id 1, duplicate_id 1, missing_file 1)" in line
    assert "catalog.csv:62" in line and "lost.jpg" in line  # the first files, by name
    clean = format_data_line(data_summary(load_dataset(build_synthetic_catalog(flawed_catalog.parent / "c2", 30))))
    assert "nothing skipped" in clean


def test_features_command_ends_its_data_line_with_what_was_skipped(flawed_catalog, tiny_bert, tmp_path, capsys):
    args = ["features", "--data", str(flawed_catalog), "--text", str(tiny_bert), "--image", "",
            "--cache-dir", str(tmp_path / "c")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "data: 61 movies" in out and "skipped 3 (bad_id 1, duplicate_id 1, missing_file 1)" in out


def test_train_logs_and_records_what_was_skipped(flawed_catalog, tiny_bert, tiny_vit, tmp_path, capsys):
    args = ["train", f"data={flawed_catalog}", "model=gmu", f"text_encoder={tiny_bert}",
            f"image_encoder={tiny_vit}", "epochs=1", f"cache_dir={tmp_path / 'c'}", f"out={tmp_path / 'runs'}",
            "name=r"]
    assert main(args) == 0
    assert "skipped 3 (bad_id 1, duplicate_id 1, missing_file 1)" in capsys.readouterr().out
    data = json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())["data"]
    assert data["skipped"] == {"bad_id": 1, "duplicate_id": 1, "missing_file": 1}
    assert len(data["problems"]) == 3 and any("lost.jpg" in p for p in data["problems"])
    assert data["excluded_no_label"] == 0


def test_grid_logs_what_was_skipped(flawed_catalog, tiny_bert, tiny_vit, tmp_path):
    from genrefusion.data.loader import DataSpec
    from genrefusion.training.grid import GridSpec, run_grid

    lines: list[str] = []
    run_grid(GridSpec(DataSpec(flawed_catalog), slot_overrides=[f"BERT={tiny_bert}", f"ResNet50={tiny_vit}"],
                      rows=["gmu"], cache_dir=tmp_path / "c", out=tmp_path / "g", report=False,
                      config_overrides=["epochs=1"]), log=lines.append)
    (line,) = [ln for ln in lines if ln.startswith("data:")]
    assert "skipped 3 (bad_id 1, duplicate_id 1, missing_file 1)" in line and "modalities=any" in line
    summary = json.loads((tmp_path / "g" / "data_summary.json").read_text())
    assert summary["skipped"] == {"bad_id": 1, "duplicate_id": 1, "missing_file": 1}
