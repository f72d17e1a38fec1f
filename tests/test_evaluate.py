"""`genrefusion evaluate` on real sample movies: equal to a by-hand sklearn computation (folder and catalog), its
interval covers the estimate, --compare reproduces `genrefusion compare`, unscorable movies are counted and named."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_score, recall_score, roc_auc_score

from conftest import make_subset
from genrefusion.data.labels import GENRES, multi_hot
from genrefusion.features.spec import FeatureSpec

N_BOOT = 300


def _cached(cache) -> FeatureSpec:
    """The features of the runs' own cache, quietly."""
    return FeatureSpec(cache_root=cache, progress=False)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, sample_root, tiny_bert):
    """Two text models trained on real sample movies (official split: 80 train, 40 dev, 60 test), thresholds
    tuned per genre, sharing one feature cache."""
    from genrefusion.config import Config
    from genrefusion.training.experiment import run_experiment

    root = tmp_path_factory.mktemp("evaluate")
    data = make_subset(sample_root, root / "data", {"train": 80, "dev": 40, "test": 60})
    runs = []
    for seed, lr in ((0, 3e-3), (1, 1e-3)):
        cfg = Config(data=str(data), split="official", modalities="any", model="text", text_encoder=str(tiny_bert),
                     pooling="mean", epochs=6, lr=lr, threshold_mode="per_genre", seed=seed,
                     cache_dir=str(root / "cache"), out=str(root), name=f"text-{seed}").validate()
        run_experiment(cfg, run_dir=root / f"text-{seed}", log=None)
        runs.append(root / f"text-{seed}")
    return data, runs, root / "cache"


@pytest.fixture(scope="module")
def test_movies(two_runs):
    from genrefusion.data.loader import load_dataset

    ds = load_dataset(two_runs[0], "official", "any")
    return [ds.movies[i] for i in ds.splits["test"]]


@pytest.fixture(scope="module")
def by_hand(two_runs, test_movies):
    return _by_hand(two_runs[1][0] / "model", test_movies)


def _by_hand(model_dir, movies):
    """Each movie through the Predictor one at a time (no cache, no batching), then sklearn."""
    from genrefusion.inference.predictor import load_model

    predictor = load_model(model_dir)
    probs = np.array([[predictor.predict_one(plot=m.plot)["probabilities"][g] for g in GENRES] for m in movies])
    y = multi_hot(m.genres for m in movies)
    pred = (probs >= predictor.thresholds).astype(int)
    return y, probs, pred


def _check_against_sklearn(r, y, probs, pred):
    m = r["metrics"]
    assert m["n_samples"] == len(y)
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0), abs=1e-12)
    assert m["f1_micro"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0), abs=1e-12)
    assert m["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted", zero_division=0), abs=1e-12)
    assert m["f1_samples"] == pytest.approx(f1_score(y, pred, average="samples", zero_division=0), abs=1e-12)
    assert m["precision_micro"] == pytest.approx(precision_score(y, pred, average="micro", zero_division=0))
    assert m["recall_macro"] == pytest.approx(recall_score(y, pred, average="macro", zero_division=0))
    assert m["hamming_accuracy"] == pytest.approx(1 - hamming_loss(y, pred), abs=1e-12)
    assert m["subset_accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    cols = [j for j in range(len(GENRES)) if 0 < y[:, j].sum() < len(y)]
    assert m["roc_auc_macro"] == pytest.approx(np.mean([roc_auc_score(y[:, j], probs[:, j]) for j in cols]),
                                               abs=1e-6)
    pred05 = (probs >= 0.5).astype(int)
    assert r["metrics_at_0.5"]["f1_macro"] == pytest.approx(f1_score(y, pred05, average="macro", zero_division=0))
    for j, genre in enumerate(GENRES):
        assert m["per_genre"][genre]["support"] == int(y[:, j].sum())
        assert m["per_genre"][genre]["f1"] == pytest.approx(f1_score(y[:, j], pred[:, j], zero_division=0))


def test_evaluate_on_a_folder_equals_sklearn_by_hand(two_runs, test_movies, by_hand):
    from genrefusion.evaluation.evaluate import evaluate
    from genrefusion.evaluation.runs import read_predictions

    data, runs, cache = two_runs
    r = evaluate(runs[0] / "model", data, split="test", n_boot=N_BOOT, features=_cached(cache))
    assert r["n_scored"] == r["n_movies"] == len(test_movies) == 60 and r["unscorable"]["n"] == 0
    assert r["ids"] == [m.id for m in test_movies]
    _check_against_sklearn(r, *by_hand)
    # the batched, cached path gives the probabilities the run saved for its test split
    saved = read_predictions(runs[0], "test")
    assert saved.ids == r["ids"]
    assert r["metrics"]["f1_macro"] == json.loads((runs[0] / "metrics.json").read_text())["test"]["f1_macro"]
    assert r["encoded_now"] == {"text": 0}  # every plot was in the cache the run filled


def test_the_bootstrap_interval_covers_the_estimate(two_runs):
    from genrefusion.evaluation.evaluate import evaluate

    data, runs, cache = two_runs
    r = evaluate(runs[0], data, split="test", n_boot=N_BOOT, features=_cached(cache))  # a run folder works too
    for key in ("f1_macro", "f1_micro"):
        ci = r["bootstrap"][key]
        assert ci["estimate"] == pytest.approx(r["metrics"][key], abs=1e-12)
        assert ci["ci_low"] <= ci["estimate"] <= ci["ci_high"]
        assert ci["ci_low"] < ci["ci_high"] and ci["n_boot"] == N_BOOT


def _catalog(path, movies, extra_rows=()):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "plot", "genres", "poster", "split"])
        for m in movies:
            w.writerow([m.id, m.plot, "|".join(m.genres), str(m.poster) if m.poster else "", "test"])
        for row in extra_rows:
            w.writerow(row)
    return path


def test_evaluate_on_a_catalog_equals_sklearn_and_names_what_it_cannot_score(two_runs, test_movies, by_hand,
                                                                             tmp_path, monkeypatch):
    from genrefusion.data.catalog import ALLOW_OUTSIDE_POSTERS_ENV
    from genrefusion.evaluation.evaluate import evaluate

    monkeypatch.setenv(ALLOW_OUTSIDE_POSTERS_ENV, "1")  # the catalog names the sample folder's posters, outside it
    data, runs, cache = two_runs
    poster = next(m.poster for m in test_movies if m.poster)
    cat = _catalog(tmp_path / "mine.csv", test_movies, [["poster-only", "", "Drama", str(poster), "test"]])
    r = evaluate(runs[0] / "model", cat, split="all", n_boot=N_BOOT, features=_cached(cache))
    assert r["n_movies"] == 61 and r["n_scored"] == 60
    assert r["unscorable"] == {"n": 1, "movies": [{"id": "poster-only",
                                                   "reason": "no plot"}]}
    _check_against_sklearn(r, *by_hand)
    folder = evaluate(runs[0] / "model", data, split="test", n_boot=N_BOOT, features=_cached(cache))
    assert r["metrics"] == folder["metrics"] and r["bootstrap"] == folder["bootstrap"]


def test_compare_reproduces_genrefusion_compare(two_runs):
    from genrefusion.evaluation.compare import compare
    from genrefusion.evaluation.evaluate import evaluate

    data, runs, cache = two_runs
    r = evaluate(runs[0] / "model", data, split="test", n_boot=N_BOOT, seed=3, compare_with=runs[1] / "model",
                 features=_cached(cache))
    want = compare(runs[0], runs[1], n_boot=N_BOOT, seed=3)
    for key in ("f1_macro", "f1_micro"):
        got = r["compare"]["paired"][key]
        for k in ("score_a", "score_b", "diff", "ci_low", "ci_high", "p_value"):
            assert got[k] == pytest.approx(want[key][k], abs=1e-12), (key, k)
    assert r["compare"]["b"]["metrics"]["f1_macro"] == pytest.approx(want["f1_macro"]["score_b"], abs=1e-12)


def test_the_cli_prints_the_tables_and_writes_json(two_runs, tmp_path, capsys):
    from genrefusion.cli.commands import main

    data, runs, cache = two_runs
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "--model", str(runs[0] / "model"), "--data", str(data), "--bootstrap", "50",
               "--json", str(out), "--cache-dir", str(cache), "--quiet", "--compare", str(runs[1] / "model")])
    text = capsys.readouterr().out
    assert rc == 0
    assert "F1-Macro" in text and "bootstrap 95% CI" in text and "Drama" in text and "paired bootstrap" in text
    r = json.loads(out.read_text())
    assert r["n_scored"] == 60 and set(r["compare"]["paired"]) == {"f1_macro", "f1_micro"}


def test_the_scored_split_is_score_split_and_split_is_no_longer_it():
    """--score-split picks the movies scored; --split, the split *mode* in grid/train/features, no longer does (as an
    abbreviation argparse reads it as --split-mode, so `--split all` is refused instead of scoring all)."""
    from genrefusion.cli.commands import build_parser

    base = ["evaluate", "--model", "m", "--data", "d"]
    args = build_parser().parse_args([*base, "--score-split", "all", "--split-mode", "stratified"])
    assert (args.score_split, args.split_mode) == ("all", "stratified")
    assert build_parser().parse_args(base).score_split == "test"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--split", "all"])


def test_a_catalog_without_labels_is_refused_with_its_name(two_runs, tmp_path, capsys):
    from genrefusion.cli.commands import main

    data, runs, cache = two_runs
    (tmp_path / "nolabels.csv").write_text("id,plot\nm1,A man walks into a bar\n")
    rc = main(["evaluate", "--model", str(runs[0] / "model"), "--data", str(tmp_path / "nolabels.csv"),
               "--score-split", "all", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "nolabels.csv" in err and "Traceback" not in err


def test_another_modality_filter_on_a_stratified_split_is_refused(sample_root, tmp_path):
    """The stratified split is drawn over the movies kept: another filter would redraw it and put training movies
    in "test"."""
    from genrefusion.evaluation.evaluate import load_labelled

    data = make_subset(sample_root, tmp_path / "data", {"train": 40, "dev": 0, "test": 20})
    cfg = {"split": "stratified", "modalities": "any", "split_seed": 1234}
    with pytest.raises(ValueError, match="would redraw"):
        load_labelled(data, "test", cfg, modalities="both")
    ds, idx = load_labelled(data, "test", cfg)  # its own filter: its own test split
    assert [ds.movies[i].id for i in idx] == [ds.movies[i].id for i in ds.splits["test"]] and idx
    ds, idx = load_labelled(data, "all", cfg, modalities="both")  # every movie: nothing to leak
    assert len(idx) == len(ds.movies)
