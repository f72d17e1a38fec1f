"""Knowledge distillation (genrefusion distill): the loss, the teacher's probabilities, unlabelled movies (used,
counted, never a dev or test movie), a student that moves towards its teacher, and the saved folder naming it."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from genrefusion.evaluation import runs
from genrefusion.data.loader import load_catalog
from genrefusion.features.spec import FeatureSpec
from genrefusion.training.distill import agreement, distill_loss, pack_targets, run_distill, unlabelled_movies
from genrefusion.data.images import load_poster
from genrefusion.fusion.losses import create_loss
from genrefusion.inference.predictor import load_model
from genrefusion.training.teacher import TeacherError, load_teacher

from conftest import build_synthetic_catalog

G = 23


# -- the loss ---------------------------------------------------------------------------------------------------
def test_the_loss_mixes_labels_and_soft_targets_by_row():
    torch.manual_seed(0)
    logits = torch.randn(6, G)
    labels = (torch.rand(6, G) < 0.2).float().numpy()
    teacher = torch.rand(6, G).numpy()
    hard_loss = create_loss("asl")
    alpha, t = 0.3, 2.0
    # rows 0-2 labelled (alpha / 1 - alpha), rows 3-4 unlabelled (soft only), row 5 validation (labels only)
    hard = np.array([alpha] * 3 + [0, 0, 1.0])
    soft = np.array([1 - alpha] * 3 + [1.0, 1.0, 0])
    got = distill_loss(hard_loss, G, t)(logits, pack_targets(labels, teacher, hard, soft))

    y = torch.as_tensor(labels)
    q = torch.sigmoid(torch.logit(torch.as_tensor(teacher).clamp(1e-6, 1 - 1e-6)) / t)
    per_row_soft = torch.nn.functional.binary_cross_entropy_with_logits(logits / t, q, reduction="none").mean(1)
    want = sum(hard[i] * hard_loss(logits[i:i + 1], y[i:i + 1]) + soft[i] * t * t * per_row_soft[i]
               for i in range(6)) / 6
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    # alpha = 1 everywhere is the configured loss itself; soft targets equal to the labels give BCE at T = 1
    only_hard = distill_loss(hard_loss, G, 1.0)(logits, pack_targets(labels, teacher, np.ones(6), np.zeros(6)))
    assert float(only_hard) == pytest.approx(float(hard_loss(logits, y)), rel=1e-6)
    as_labels = distill_loss(hard_loss, G, 1.0)(logits, pack_targets(labels, labels, np.zeros(6), np.ones(6)))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    assert float(as_labels) == pytest.approx(float(bce), rel=1e-4)


def test_agreement_is_perfect_for_the_teacher_itself():
    p = np.random.default_rng(0).random((5, G))
    same = agreement(p, p, 0.5, 0.5)
    other = agreement(1 - p, p, 0.5, 0.5)
    assert same["decision_agreement"] == 1.0 and same["mean_abs_diff"] == 0.0
    assert other["bce_to_teacher"] > same["bce_to_teacher"] and other["decision_agreement"] < 1.0


# -- unlabelled movies ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def labelled(synthetic_catalog):
    return load_catalog(synthetic_catalog)


@pytest.fixture(scope="module")
def unlabelled_catalog(tmp_path_factory, synthetic_catalog, labelled):
    """120 new synthetic movies (ids u*), no genres column, plus rows that must be dropped: a test movie's id, a test
    movie's plot under a new id, a validation movie's poster under a new id, a training movie's id, and a second
    listing of an unlabelled movie's plot."""
    dest = tmp_path_factory.mktemp("unlabelled")
    built = build_synthetic_catalog(dest, n=120, seed=7)
    with built.open() as f:
        rows = list(csv.DictReader(f))
    for r in rows:  # the builder's poster noise depends on the row number only: re-encoded, no byte is shared
        if r["poster"]:
            Image.open(dest / r["poster"]).save(dest / r["poster"], quality=80)
    movies = {m.id: m for m in labelled.movies}
    split_of = {labelled.movies[i].id: s for s, idx in labelled.splits.items() for i in idx}
    test_id = next(i for i, s in split_of.items() if s == "test")
    test_plot = next(m.plot for i, m in movies.items() if split_of[i] == "test" and m.plot)
    dev_poster = next(m.poster for i, m in movies.items() if split_of[i] == "dev" and m.poster)
    shutil.copy(dev_poster, dest / "dev-copy.jpg")
    train_id = next(i for i, s in split_of.items() if s == "train")
    out = [{"id": f"u{r['id']}", "plot": r["plot"], "poster": r["poster"]} for r in rows]
    out += [{"id": test_id.upper(), "plot": "a brand new plot about a ghost", "poster": ""},  # ids ignore case
            {"id": "leak-plot", "plot": test_plot, "poster": ""},
            {"id": "leak-poster", "plot": "", "poster": "dev-copy.jpg"},
            {"id": train_id, "plot": "another plot", "poster": ""},
            {"id": "again", "plot": next(r["plot"] for r in out if r["plot"]), "poster": ""}]
    path = dest / "unlabelled.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, ["id", "plot", "poster"])
        w.writeheader()
        w.writerows(out)
    return path


def test_dev_and_test_movies_are_never_unlabelled_data(unlabelled_catalog, labelled):
    kept, info = unlabelled_movies([unlabelled_catalog], labelled)
    assert info["read"] == 125 and info["kept"] == 120 == len(kept)
    assert info["dropped"] == {"test_id": 1, "test_content": 1, "dev_content": 1, "train_id": 1, "duplicate": 1}
    held_out = [labelled.movies[i] for s in ("dev", "test") for i in labelled.splits[s]]
    ids = {m.id.casefold() for m in held_out}
    keys = {k for m in held_out for k in (m.text_key, m.poster_sha256) if k}
    assert not any(m.id.casefold() in ids or {m.text_key, m.poster_sha256} & keys for m in kept)
    assert all(m.genres == () for m in kept)  # unlabelled here, whatever the source says


def test_a_missing_unlabelled_source_is_named(labelled, tmp_path):
    with pytest.raises(ValueError, match="nowhere.csv: unlabelled data does not exist"):
        unlabelled_movies([tmp_path / "nowhere.csv"], labelled)


# -- the teacher ------------------------------------------------------------------------------------------------
def test_the_teachers_probabilities_are_the_predictors(trained_run, labelled, tmp_path):
    teacher = load_teacher(trained_run)
    assert teacher.kind == "run" and len(teacher.members) == 1 and teacher.recorded_test()["f1_macro"] >= 0
    rows = labelled.splits["test"][:6]
    probs, ok = teacher.probabilities(labelled, rows, FeatureSpec(cache_root=tmp_path / "cache", progress=False))
    predictor = load_model(trained_run / "model")
    movies = [labelled.movies[i] for i in rows]
    results = predictor.predict([load_poster(m.poster) if m.poster else None for m in movies],
                                [m.plot for m in movies])
    np.testing.assert_allclose(probs, [[r["probabilities"][g] for g in predictor.genres] for r in results],
                               atol=1e-5)
    assert ok.all()  # the GMU was trained with movies missing either modality: it can predict every one


def test_a_row_teacher_ensembles_its_seeds(trained_run, labelled, tmp_path):
    row = tmp_path / "row"
    for s in (0, 1):
        shutil.copytree(trained_run, row / f"seed-{s}")
    teacher = load_teacher(row)
    assert teacher.kind == "row" and len(teacher.members) == 2 and teacher.record()["ensemble"] is True
    assert teacher.fingerprint != load_teacher(trained_run).fingerprint
    rows = labelled.splits["dev"][:4]
    features = FeatureSpec(cache_root=tmp_path / "cache", progress=False)
    single, _ = load_teacher(trained_run).probabilities(labelled, rows, features)
    both, _ = teacher.probabilities(labelled, rows, features)
    np.testing.assert_allclose(both, single, atol=1e-6)  # the mean of two identical seeds


def test_a_grid_folder_or_a_stray_folder_is_no_teacher(tmp_path):
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / runs.GRID_FILE).write_text("{}")
    with pytest.raises(TeacherError, match="a grid folder, not one model"):
        load_teacher(tmp_path / "grid")
    with pytest.raises(TeacherError, match="not a run folder, a grid row folder"):
        load_teacher(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such teacher"):
        load_teacher(tmp_path / "absent")


# -- the student ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def students(tmp_path_factory, trained_run, unlabelled_catalog):
    """The same text-only student trained without the teacher (alpha=1, no unlabelled movies) and distilled (alpha=0,
    T=2, the unlabelled catalog)."""
    root = tmp_path_factory.mktemp("students")
    cache = str(trained_run.parent / "cache")
    teacher_text = json.loads((trained_run / "model" / "model.json").read_text())["encoders"]["text"]["name"]
    common = dict(text_encoder=teacher_text, overrides=["model=text", "epochs=25"], cache_dir=cache, log=None,
                  progress=False)
    alone = run_distill(trained_run, alpha=1.0, out=root / "alone", **common)
    taught = run_distill(trained_run, alpha=0.0, temperature=2.0, unlabelled=[unlabelled_catalog],
                         out=root / "taught", **common)
    return alone, taught


def test_distillation_moves_the_student_towards_its_teacher(students):
    alone, taught = students
    a, t = alone["runs"][0]["test_vs_teacher"], taught["runs"][0]["test_vs_teacher"]
    assert t["bce_to_teacher"] < a["bce_to_teacher"]
    assert t["mean_abs_diff"] < a["mean_abs_diff"]
    assert t["decision_agreement"] > a["decision_agreement"]
    # with alpha = 0 the training loss is the loss against the teacher's outputs: it falls
    history = runs.read_metrics(taught["out"])["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_unlabelled_movies_are_used_and_counted(students, unlabelled_catalog, labelled):
    alone, taught = students
    metrics = runs.read_metrics(taught["out"])
    d = metrics["distillation"]
    no_plot = sum(m.plot is None for m in unlabelled_movies([unlabelled_catalog], labelled)[0])
    assert no_plot > 0  # a poster-only movie is nothing to a text-only student: dropped and counted
    assert d["unlabelled"]["used"] == 120 - no_plot == metrics["data"]["n"]["unlabelled"]
    assert d["unlabelled"]["dropped"] == {"test_id": 1, "test_content": 1, "dev_content": 1, "train_id": 1,
                                          "duplicate": 1, "student_cannot_read": no_plot}
    assert d["soft_targets"]["unlabelled"] == 120 - no_plot and d["alpha"] == 0.0 and d["temperature"] == 2.0
    assert runs.read_metrics(alone["out"])["data"]["n"]["unlabelled"] == 0
    # validation and test are the labelled splits, the same movies as the teacher's
    with_plot = {m.id for m in labelled.movies if m.plot}  # what a text-only student can be scored on
    teacher_test = [i for i in runs.read_predictions(metrics["teacher"]["path"], "test").ids if i in with_plot]
    assert runs.read_predictions(taught["out"], "test").ids == teacher_test


def test_the_student_folder_loads_and_names_its_teacher(students, trained_run, synthetic_catalog):
    _, taught = students
    model_dir = runs.read_run(taught["out"]).model_dir
    meta = json.loads((model_dir / "model.json").read_text())
    teacher = load_teacher(trained_run)
    for record in (meta["teacher"], runs.read_metrics(taught["out"])["teacher"]):
        assert record["fingerprint"] == teacher.fingerprint and record["path"] == str(trained_run.resolve())
        assert record["kind"] == "run" and record["fusion"] == "gmu"
        assert record["test"]["f1_macro"] == runs.read_metrics(trained_run)["test"]["f1_macro"]
        assert set(record["test_on_student_split"]) >= {"f1_macro", "f1_micro"}
    predictor = load_model(model_dir)
    assert predictor.fusion == "text" and predictor.meta["teacher"]["fingerprint"] == teacher.fingerprint
    stored = runs.read_predictions(taught["out"], "test")
    ds = load_catalog(synthetic_catalog)
    plots = {m.id: m.plot for m in ds.movies}
    first = next(i for i, mid in enumerate(stored.ids) if plots[mid])
    got = predictor.predict_one(plot=plots[stored.ids[first]])["probabilities"]
    np.testing.assert_allclose([got[g] for g in predictor.genres], stored.probs[first], atol=1e-5)


def test_several_seeds_make_a_row_that_compare_reads(trained_run, tmp_path):
    from genrefusion.evaluation.compare import compare

    out = tmp_path / "row"
    encoders = json.loads((trained_run / "model" / "model.json").read_text())["encoders"]
    summary = run_distill(trained_run, encoders["text"]["name"], encoders["image"]["name"],  # a GMU like its teacher
                          overrides=["epochs=3"], seeds=2, out=out, cache_dir=str(trained_run.parent / "cache"),
                          log=None, progress=False)
    assert [r["seed"] for r in summary["runs"]] == [0, 1] and runs.find_runs(out) == [out / "seed-0", out / "seed-1"]
    result = compare(trained_run, out, n_boot=20)
    assert result["seeds_b"] == 2 and result["n_test"] > 0


# -- the command line -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--teacher", "{tmp}/absent"], "no such teacher"),
    (["--teacher", "{run}", "--alpha", "1.5"], "alpha=1.5"),
    (["--teacher", "{run}", "--temperature", "0"], "temperature=0.0"),
    (["--teacher", "{run}", "--unlabelled", "{tmp}/none.jsonl", "model=text"], "unlabelled data does not exist"),
    (["--teacher", "{run}", "split=stratified"], "the teacher was trained on other data"),
    (["--teacher", "{run}", "mode=end-to-end"], "mode=end-to-end is not supported"),
    (["--teacher", "{run}", "no_such_key=1"], "unknown config key"),
])
def test_command_line_errors_are_one_line(args, message, trained_run, tmp_path, capsys):
    from genrefusion.cli.commands import main

    args = [a.format(tmp=tmp_path, run=trained_run) for a in args]
    assert main(["distill", *args, "--out", str(tmp_path / "out"), "--cache-dir",
                 str(trained_run.parent / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_the_command_writes_a_student(trained_run, tmp_path, capsys):
    from genrefusion.cli.commands import main

    text = json.loads((trained_run / "model" / "model.json").read_text())["encoders"]["text"]["name"]
    assert main(["distill", "--teacher", str(trained_run / "model"), "--text-encoder", text, "--out",
                 str(tmp_path / "student"), "--cache-dir", str(trained_run.parent / "cache"), "model=text",
                 "epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "teacher: model" in out and "student seed 0" in out and "student/teacher" in out
    assert load_model(tmp_path / "student" / "model").meta["teacher"]["kind"] == "model"


# -- the benchmark ----------------------------------------------------------------------------------------------
def test_the_benchmark_puts_teacher_and_students_side_by_side(trained_run, tmp_path):
    """benchmarks/distill.py end to end on the tiny teacher: every row, the bootstrap, both latencies (no timing is
    asserted, only that each was measured)."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("bench_distill", REPO / "benchmarks" / "distill.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    encoders = json.loads((trained_run / "model" / "model.json").read_text())["encoders"]
    result = bench.distill_benchmark(str(runs.read_run(trained_run).config["data"]), tmp_path / "bench",
                                     teacher=trained_run, seeds=1, alpha=0.0, temperature=2.0,
                                     text_encoder=encoders["text"]["name"], image_encoder=encoders["image"]["name"],
                                     student_overrides=["epochs=2"], latency_movies=3,
                                     cache_dir=str(trained_run.parent / "cache"), n_boot=20, log=lambda *_: None,
                                     levers=["1,1", "0,2,epochs=3"], sweep_seeds=1)
    chosen = max(result["sweep"], key=lambda x: x["val_f1_macro"])  # by validation, and what the student used
    assert [x["lever"] for x in result["sweep"]] == ["1,1", "0,2,epochs=3"]
    assert (result["alpha"], result["temperature"]) == (chosen["alpha"], chosen["temperature"])
    q = result["quality"]
    assert set(q) == {"teacher", "alone", "distilled"} and q["alone"]["seeds"] == q["distilled"]["seeds"] == 1
    assert q["teacher"]["test_f1_macro"]["mean"] == runs.read_metrics(trained_run)["test"]["f1_macro"]
    assert q["distilled"]["vs_teacher"]["n_test"] > 0 and "agreement" in q["distilled"]
    assert all(v["n"] == 3 and v["p50_ms"] > 0 for v in result["latency"].values())
    table = bench.format_table(result)
    for needle in ("teacher", "alone", "distilled", "student/teacher p50", "targets:", "uptime:", "<- chosen"):
        assert needle in table
