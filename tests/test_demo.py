"""`genrefusion demo`'s pieces on tiny runs (the demo itself, two full grids, is not run here): the fused slots
come from validation, the side-by-side table and its reading from the grid files, the printed commands work, each
report links the other."""
from __future__ import annotations

import json
import shlex

import numpy as np
import pytest

from conftest import build_tiny_bert, make_subset

QUIET = lambda *_: None  # noqa: E731


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory, sample_root, tiny_bert, tiny_vit):
    """The recommended preset's unimodal rows and one fusion (GMU) with fuse=auto, on real sample movies."""
    from genrefusion.data.loader import DataSpec
    from genrefusion.training.grid import AUTO, GridSpec, run_grid

    root = tmp_path_factory.mktemp("demo")
    data = make_subset(sample_root, root / "data", {"train": 90, "dev": 0, "test": 50})
    other = build_tiny_bert(root / "other-bert")
    slots = [f"BERT={tiny_bert}", f"RoBERTa={other}", f"ResNet50={tiny_vit}", f"ViT={tiny_vit}"]
    out = root / "recommended"
    g = run_grid(GridSpec(DataSpec(data, "stratified", "both"), preset="recommended", slot_overrides=slots,
                          rows=["BERT", "RoBERTa", "ResNet50", "ViT", "GMU"], cache_dir=root / "cache", out=out,
                          fuse=(AUTO,), report=False, config_overrides=["epochs=2"],
                          related={"label": "thesis recipe", "path": "../thesis"}), log=QUIET)
    return data, out, g


def test_fuse_auto_fuses_the_best_slots_on_validation_never_test(tiny_grid, monkeypatch):
    from genrefusion.evaluation import runs
    from genrefusion.training.grid import validation_score
    from genrefusion.evaluation.metrics import cross_fitted_f1

    data, out, g = tiny_grid
    choice = g["fuse_choice"]
    unimodal = {r["row"]: r for r in g["rows"] if r["kind"] == "unimodal"}
    # each score is the cross-fitted validation macro-F1 of the row's saved validation predictions
    for name, r in unimodal.items():
        val = runs.read_predictions(out / r["runs"][0], "val")
        want = cross_fitted_f1(val.labels, val.probs, "per_genre")["f1_macro"]
        (slot,) = r["slots"]
        modality = "text" if name in ("BERT", "RoBERTa") else "image"
        assert choice["scores"][modality][slot] == pytest.approx(want, abs=1e-12) == r["val_score"]
    for modality in ("text", "image"):
        s = choice["scores"][modality]
        best = max(s.values())
        tied = [k for k, v in s.items() if v == best]
        assert choice[modality] == (next((k for k in tied if k in ("BERT", "ResNet50")), None) or max(tied))
    gmu = next(r for r in g["rows"] if r["row"] == "GMU")
    assert gmu["slots"] == [choice["text"], choice["image"]] and g["fuse"] == gmu["slots"]
    # the score reads validation files only: with every test file unreadable it is the same
    real = runs.read_predictions
    monkeypatch.setattr(runs, "read_predictions",
                        lambda d, split="test": pytest.fail("read test") if split == "test" else real(d, split))
    assert validation_score(out / unimodal["BERT"]["runs"][0]) == unimodal["BERT"]["val_score"]


def test_fuse_auto_needs_both_modalities_rows(tiny_grid, tmp_path):
    from genrefusion.data.loader import DataSpec
    from genrefusion.training.grid import AUTO, GridSpec, run_grid

    data, _, _ = tiny_grid
    with pytest.raises(ValueError, match="select a text and an image row"):
        run_grid(GridSpec(DataSpec(data), rows=["BERT", "GMU"], fuse=(AUTO,), out=tmp_path / "x"), log=QUIET)


def _grid(rows):
    return {"rows": [{"row": n, "label": f"{n} [{enc}]", "test": {"f1_macro": a, "f1_micro": b}}
                     for n, enc, a, b in rows]}


def test_the_side_by_side_table_and_its_reading_come_from_the_grids():
    from genrefusion.cli.demo import side_by_side

    thesis = _grid([("BERT", "minilm-l6", 0.30, 0.50), ("RoBERTa", "mpnet-base", 0.10, 0.20),
                    ("GMU", "minilm-l6 + efficientnet-lite0", 0.35, 0.55)])
    rec = _grid([("BERT", "minilm-l6", 0.40, 0.58), ("RoBERTa", "mpnet-base", 0.45, 0.60),
                 ("GMU", "mpnet-base + efficientnet-lite0", 0.50, 0.59)])
    rec["rows"][2]["test"]["f1_micro"] = {"mean": 0.54, "std": 0.01}  # several seeds: the mean is shown
    table, reading = side_by_side(thesis, rec)
    lines = table.splitlines()
    assert any(line.startswith("RoBERTa") and "0.1000" in line and "0.4500" in line for line in lines)
    gmu = next(line for line in lines if line.startswith("GMU"))
    assert "minilm-l6 + efficientnet-lite0" in gmu and "mpnet-base + efficientnet-lite0" in gmu and "0.5400" in gmu
    assert "higher macro-F1 on 3 of 3 rows" in reading and "higher micro-F1 on 2" in reading
    assert f"mean macro-F1 {0.25:.4f} -> {0.45:.4f}" in reading
    assert "GMU 0.3500 under the thesis recipe, GMU 0.5000 under the recommended" in reading


def test_the_best_model_and_its_commands(tiny_grid, tmp_path):
    from genrefusion.cli.demo import best_model, example_movie, usage_commands
    from genrefusion.data.loader import DataSpec
    from genrefusion.training.grid import validation_score

    data, out, g = tiny_grid
    best = best_model({"recommended": out})
    scores = {r["row"]: validation_score(out / r["runs"][0]) for r in g["rows"]}
    assert best["row"] == max(scores, key=scores.get) and best["val_score"] == max(scores.values())
    movie = example_movie(DataSpec(data, "stratified", "both"))
    assert movie.poster.is_file() and len(movie.plot.split()) >= 12
    serve, predict, _ = usage_commands(best["run"] / "model", movie)
    assert shlex.split(serve) == ["genrefusion", "serve", "--model", str(best["run"] / "model")]
    argv = shlex.split(predict)
    assert argv[:2] == ["genrefusion", "predict"]
    assert argv[argv.index("--plot") + 1] == movie.plot and argv[argv.index("--poster") + 1] == str(movie.poster)
    # the printed predict command runs as printed
    from genrefusion.cli.commands import main

    assert main(argv[1:]) == 0


def test_the_report_links_the_other_grid(tiny_grid):
    from genrefusion.evaluation.report import write_report

    _, out, _ = tiny_grid
    md = write_report(out)["markdown"].read_text()
    assert "(../../thesis/report/report.html)" in md
    assert "The fusion rows fuse **" in md
