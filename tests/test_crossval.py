"""Repeated cross-validation (training/crossval.py): no scored movie is trained on, early-stopped on or tuned on;
every fold's score is reproduced from its saved predictions; intervals and paired differences."""
from __future__ import annotations

import json

import numpy as np
import pytest

FOLDS, REPEATS = 3, 2


def _base(root, **kw):
    from genrefusion.config import Config

    kw = {"threshold_mode": "per_genre", "threshold_source": "val", "fold_workers": 1, **kw}
    return Config(pooling="mean", epochs=2, lr=3e-3, cache_dir=str(root / "cache"), out=str(root), **kw).validate()


def _rows(tiny_bert, tiny_vit, names=("text", "image", "gmu")):
    from genrefusion.training.crossval import CVRow

    rows = {"text": CVRow("Text", "text", text_encoder=str(tiny_bert)),
            "image": CVRow("Image", "image", image_encoder=str(tiny_vit)),
            "gmu": CVRow("GMU", "gmu", str(tiny_bert), str(tiny_vit))}
    return [rows[n] for n in names]


class Spies:
    """Wraps crossval's run_experiment to know the fold being scored, and records what experiment.fit and
    experiment.tune_thresholds are handed while it runs."""

    def __init__(self, monkeypatch, fake_predict: bool = False):
        from genrefusion.training import crossval, experiment

        self.current: dict = {}
        self.fits: list[tuple[set, set, set]] = []  # (train, val, scored fold)
        self.tuned: list[tuple[set, dict]] = []  # (movies whose predictions were tuned on, current fold)
        real_run, real_fit, real_tune, real_predict = (crossval.run_experiment, experiment.fit,
                                                       experiment.tune_thresholds, experiment.predict)

        def run(cfg, dataset=None, **kw):
            self.n = len(dataset.movies)
            self.current = {k: set(v) for k, v in dataset.splits.items()}
            return real_run(cfg, dataset=dataset, **kw)

        def fit(model, batch_fn, y, train_idx, val_idx, *a, **kw):
            self.fits.append((set(map(int, train_idx)), set(map(int, val_idx)), self.current["test"]))
            return real_fit(model, batch_fn, y, train_idx, val_idx, *a, **kw)

        def predict(model, batch_fn, indices, *a, **kw):
            # each movie's probability names it: (i + 1) / (n + 2), so a tuning call's input tells whose it is
            probs, extra = real_predict(model, batch_fn, indices, *a, **kw)
            code = (np.asarray(list(indices)) + 1) / (self.n + 2)
            return np.repeat(code[:, None], probs.shape[1], axis=1).astype(np.float32), extra

        def tune(y_true, y_prob, mode, *a, **kw):
            seen = {int(v) for v in np.rint(np.asarray(y_prob)[:, 0] * (self.n + 2)) - 1}
            self.tuned.append((seen, dict(self.current)))
            return real_tune(y_true, y_prob, mode, *a, **kw)

        monkeypatch.setattr(crossval, "run_experiment", run)
        monkeypatch.setattr(experiment, "fit", fit)
        if fake_predict:
            monkeypatch.setattr(experiment, "predict", predict)
            monkeypatch.setattr(experiment, "tune_thresholds", tune)


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory, synthetic_catalog, tiny_bert, tiny_vit):
    from genrefusion.training.crossval import load_cv_dataset, run_crossval

    root = tmp_path_factory.mktemp("crossval")
    with pytest.MonkeyPatch.context() as mp:
        spies = Spies(mp)
        ds = load_cv_dataset(synthetic_catalog)
        result = run_crossval(ds, _rows(tiny_bert, tiny_vit), _base(root, data=str(synthetic_catalog)), root / "cv",
                              folds=FOLDS, repeats=REPEATS, log=None)
    return ds, result, root / "cv", spies


def test_no_movie_is_in_the_training_folds_and_the_scored_fold_of_the_same_repeat(cv_run):
    from genrefusion.evaluation.runs import read_predictions
    from genrefusion.training.crossval import cv_movies

    ds, result, out, spies = cv_run
    movies = {ds.movies[i].id for i in cv_movies(ds)}
    assert len(spies.fits) == 3 * FOLDS * REPEATS  # one training per row and fold (threshold_source=val)
    for train, val, scored in spies.fits:
        assert not (train | val) & scored
        assert not train & val
        assert {ds.movies[i].id for i in train | val | scored} == movies  # the other folds are the training folds
    for row in result["rows"]:
        for r in range(REPEATS):
            scored = [mid for f in row["folds"] if f["repeat"] == r
                      for mid in read_predictions(out / f["dir"], "test").ids]
            assert sorted(scored) == sorted(movies)  # each movie scored exactly once per repeat
    plans = [[f["n_test"] for f in row["folds"]] for row in result["rows"]]
    assert plans[0] == plans[1] == plans[2]  # the rows share the folds (paired)


def test_each_fold_score_is_reproduced_from_its_saved_predictions(cv_run):
    from genrefusion.evaluation.metrics import compute_metrics
    from genrefusion.evaluation.runs import read_crossval, read_metrics, read_predictions

    _, result, out, _ = cv_run
    saved = read_crossval(out)
    assert saved == json.loads(json.dumps(result))
    for row in saved["rows"]:
        for f in row["folds"]:
            preds = read_predictions(out / f["dir"], "test")
            again = compute_metrics(preds.labels, preds.probs, preds.thresholds, preds.genres)
            in_memory = read_metrics(out / f["dir"])["test"]  # what run_experiment computed before saving
            for k in ("f1_macro", "f1_micro", "map_macro", "hamming_accuracy"):
                assert f[k] == pytest.approx(again[k]) == pytest.approx(in_memory[k])
        values = [f["f1_macro"] for f in row["folds"]]
        assert row["summary"]["f1_macro"]["mean"] == pytest.approx(np.mean(values))
        assert row["summary"]["f1_macro"]["n"] == FOLDS * REPEATS


def test_paired_differences_are_fold_by_fold(cv_run):
    _, result, out, _ = cv_run
    rows = {r["row"]: r for r in result["rows"]}
    (d,) = result["differences"]
    assert (d["row"], d["minus"]) == ("GMU", "Text")
    diffs = [a["f1_macro"] - b["f1_macro"] for a, b in zip(rows["GMU"]["folds"], rows["Text"]["folds"])]
    assert d["f1_macro"]["mean"] == pytest.approx(np.mean(diffs))
    assert d["f1_macro"]["wins"] == sum(x > 0 for x in diffs)
    tables = (out / "tables.txt").read_text()
    assert "GMU - Text" in tables and "Text [" in tables


@pytest.mark.parametrize("source", ["val", "oof"])
def test_thresholds_are_tuned_inside_the_training_folds_only(source, synthetic_catalog, tiny_bert, tiny_vit,
                                                             tmp_path, monkeypatch):
    from genrefusion.training.crossval import load_cv_dataset, run_crossval

    spies = Spies(monkeypatch, fake_predict=True)
    ds = load_cv_dataset(synthetic_catalog)
    run_crossval(ds, _rows(tiny_bert, tiny_vit, ("gmu",)),
                 _base(tmp_path, data=str(synthetic_catalog), threshold_source=source, threshold_folds=2),
                 tmp_path / "cv", folds=FOLDS, repeats=1, log=None)
    assert len(spies.tuned) == FOLDS * (2 if source == "oof" else 1)  # oof: validation's choice is recorded too
    for seen, fold in spies.tuned:
        assert seen and not seen & fold["test"], "a threshold was tuned on a scored movie's prediction"
        assert seen <= fold["train"] | fold["dev"]


def test_the_plan_cuts_each_repeat_into_disjoint_folds():
    from genrefusion.training.crossval import plan_folds

    movies = list(range(3, 60))
    plan = plan_folds(movies, 4, 3, seed=5, val_fraction=0.2)
    assert len(plan) == 12
    for r in range(3):
        folds = [p for p in plan if p["repeat"] == r]
        assert sorted(i for p in folds for i in p["test"]) == movies
        for p in folds:
            assert sorted(p["train"] + p["val"] + p["test"]) == movies
            assert len(p["val"]) == round(0.2 * (len(movies) - len(p["test"])))
    assert plan[0]["test"] != plan[4]["test"]  # each repeat has its own folds
    assert plan == plan_folds(movies, 4, 3, seed=5, val_fraction=0.2)


def test_the_interval_is_the_corrected_resampled_t_interval():
    from genrefusion.evaluation.stats import cv_interval

    v = [0.1, 0.2, 0.3, 0.4]
    s = cv_interval(v, test_train_ratio=0.25)
    half = 3.182446305284263 * np.sqrt((1 / 4 + 0.25) * np.var(v, ddof=1))  # t(0.975, 3 dof)
    assert s["mean"] == pytest.approx(0.25) and s["n"] == 4
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((0.25 - half, 0.25 + half))
    naive = 3.182446305284263 * np.std(v, ddof=1) / 2
    assert s["ci_high"] - s["mean"] > naive  # wider than the plain t-interval, which ignores the shared training
    assert cv_interval([0.3], 0.25)["ci_low"] == 0.3


def test_cv_spec_and_thesis_rows():
    from genrefusion.training.crossval import parse_cv, thesis_rows

    assert parse_cv("5x5") == (5, 5) and parse_cv("10") == (10, 1) and parse_cv(" 3X2 ") == (3, 2)
    for bad in ("1", "5x0", "x5", "five"):
        with pytest.raises(ValueError):
            parse_cv(bad)
    slots = {"BERT": "minilm-l6", "RoBERTa": "mpnet-base", "ResNet50": "efficientnet-lite0", "ViT": "dinov2-vits14"}
    rows = thesis_rows(["BERT", "ResNet50", "gmu"], slots, ("RoBERTa", "ResNet50+ViT"))
    assert [(r.name, r.kind, r.text_encoder, r.image_encoder) for r in rows] == [
        ("ResNet50", "image", None, "efficientnet-lite0"), ("BERT", "text", "minilm-l6", None),
        ("GMU", "fusion", "mpnet-base", "efficientnet-lite0+dinov2-vits14")]
    with pytest.raises(ValueError, match="no thesis rows"):
        thesis_rows(["Nope"], slots)


# -- genrefusion grid --cv ---------------------------------------------------------------------------------------
def _grid_cv_args(catalog, tiny_bert, tiny_vit, root, *extra):
    return ["grid", "--data", str(catalog), "--rows", "BERT,GMU", "--text-encoder", str(tiny_bert),
            "--image-encoder", str(tiny_vit), "--cache-dir", str(root / "cache"), "--out", str(root / "cv"),
            *extra, "epochs=2", "pooling=mean", "fold_workers=1"]


def test_grid_cv_cross_validates_the_grid_rows(synthetic_catalog, tiny_bert, tiny_vit, tmp_path, capsys):
    from genrefusion.cli.commands import main
    from genrefusion.evaluation.runs import read_crossval
    from genrefusion.training.crossval import cv_movies, format_crossval, load_cv_dataset

    assert main(_grid_cv_args(synthetic_catalog, tiny_bert, tiny_vit, tmp_path, "--cv", "2x1")) == 0
    printed = capsys.readouterr().out
    saved = read_crossval(tmp_path / "cv")
    n = len(cv_movies(load_cv_dataset(synthetic_catalog)))
    assert (saved["folds"], saved["repeats"], saved["n_movies"]) == (2, 1, n)
    assert [(r["row"], r["kind"], r["encoders"]) for r in saved["rows"]] == [
        ("BERT", "text", {"text": str(tiny_bert)}), ("GMU", "fusion", {"text": str(tiny_bert), "image": str(tiny_vit)})]
    assert [(d["row"], d["minus"]) for d in saved["differences"]] == [("GMU", "BERT")]
    assert saved["config"]["epochs"] == 2 and saved["config"]["cache_dir"] == str(tmp_path / "cache")
    for row in saved["rows"]:
        assert [(f["repeat"], f["fold"]) for f in row["folds"]] == [(0, 0), (0, 1)]
        assert sum(f["n_test"] for f in row["folds"]) == n
        assert all((tmp_path / "cv" / f["dir"] / "metrics.json").exists() for f in row["folds"])
    table = format_crossval(saved)
    assert table in printed and table == (tmp_path / "cv" / "tables.txt").read_text().strip()
    assert f"Cross-validation: 1 x 2-fold over {n} movies" in printed and "GMU - BERT" in printed
    assert "Table 6" not in printed and not (tmp_path / "cv" / "grid.json").exists()


@pytest.mark.parametrize("extra, named", [
    (["--cv", "2", "--seeds", "1"], "--seeds"), (["--cv", "2", "--split", "stratified"], "--split"),
    (["--modalities", "both", "--cv", "2"], "--modalities"), (["--cv", "2", "--fuse", "auto"], "--fuse auto"),
    (["--cv", "2", "--track", "mlflow"], "--track"), (["--cv", "2", "split_seed=7"], "split_seed=7")])
def test_grid_cv_refuses_the_single_split_options(extra, named, synthetic_catalog, tiny_bert, tiny_vit, tmp_path,
                                                 capsys):
    from genrefusion.cli.commands import main

    with pytest.raises(SystemExit) as exc:
        main(_grid_cv_args(synthetic_catalog, tiny_bert, tiny_vit, tmp_path, *extra))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: genrefusion grid" in err and f"error: {named}" in err and "not with --cv" in err, err
    assert not (tmp_path / "cv").exists()


@pytest.mark.parametrize("value", ["0", "x", "5x0", "1x3"])
def test_grid_cv_refuses_a_bad_value_naming_it(value, synthetic_catalog, tiny_bert, tiny_vit, tmp_path, capsys):
    from genrefusion.cli.commands import main

    with pytest.raises(SystemExit) as exc:
        main(_grid_cv_args(synthetic_catalog, tiny_bert, tiny_vit, tmp_path, "--cv", value))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: genrefusion grid" in err and f"argument --cv: cross-validation {value!r}" in err, err
    assert "K >= 2" in err and not (tmp_path / "cv").exists()


def test_grid_cv_refuses_what_the_library_cannot_cross_validate(tmp_path):
    from genrefusion.data.loader import DataSpec
    from genrefusion.training.crossval import run_grid_crossval
    from genrefusion.training.grid import GridSpec

    for spec, message in ((GridSpec(DataSpec(tmp_path), seeds=2), "seeds=2"),
                          (GridSpec(DataSpec(tmp_path), fuse=("auto",)), "fuse=auto"),
                          (GridSpec(DataSpec(tmp_path), fuse=("ViT", "BERT")), "expected a text slot"),
                          (GridSpec(DataSpec(tmp_path), rows=["Nope"]), "no thesis rows")):
        with pytest.raises(ValueError, match=message):
            run_grid_crossval(spec, 2, 1, log=None)
