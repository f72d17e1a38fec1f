"""The encoder probes (evaluation/probe.py, benchmarks/probe.py): cross-validated linear and kNN macro-AP against
chance."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from conftest import REPO

GENRES6 = [f"g{j}" for j in range(6)]


def _labels(n=240, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, len(GENRES6))) < rng.uniform(0.15, 0.4, len(GENRES6))).astype(np.int64)


def test_an_encoder_whose_features_carry_the_labels_outranks_noise_which_stays_at_chance():
    from genrefusion.evaluation.probe import probe_features

    y = _labels()
    rng = np.random.default_rng(1)
    # the labels, mixed into 48 dimensions with as much noise again: learnable, far from trivially so
    signal = y @ rng.normal(size=(y.shape[1], 48)) + rng.normal(scale=1.5, size=(len(y), 48))
    # more dimensions than a training fold has movies: a probe that saw its scored movies would fit them perfectly
    noise = rng.normal(size=(len(y), 300))
    good = probe_features(signal, y, genres=GENRES6)
    bad = probe_features(noise, y, genres=GENRES6)
    assert good["chance"] == bad["chance"]
    for probe in ("linear", "knn"):
        assert good[probe] > bad[probe] + 0.2, (probe, good[probe], bad[probe])
        assert abs(bad[probe] - bad["chance"]) < 0.06, (probe, bad[probe], bad["chance"])
    assert good["n"] == bad["n"] == len(y) and good["dim"] == 48 and bad["dim"] == 300


def test_chance_is_the_average_precision_of_a_constant_scorer():
    from sklearn.metrics import average_precision_score

    from genrefusion.evaluation.probe import probe_features

    y = _labels(seed=3)
    r = probe_features(np.random.default_rng(0).normal(size=(len(y), 8)), y, genres=GENRES6)
    constant = [average_precision_score(y[:, j], np.full(len(y), 0.3)) for j in range(y.shape[1])]
    assert r["chance"] == pytest.approx(np.mean(constant))
    assert [r["per_genre"][g]["chance"] for g in GENRES6] == pytest.approx(constant)


def test_genres_with_too_few_positives_or_no_negative_are_not_scored():
    from genrefusion.evaluation.probe import probe_features

    y = _labels(seed=4)
    y[:, 1] = 0
    y[:4, 1] = 1  # 4 positives
    y[:, 2] = 1  # no negative
    r = probe_features(np.random.default_rng(0).normal(size=(len(y), 8)), y, genres=GENRES6, min_positives=5)
    assert r["genres"] == ["g0", "g3", "g4", "g5"]
    with pytest.raises(ValueError, match="no genre has 500 positives"):
        probe_features(np.zeros((len(y), 3)), y, genres=GENRES6, min_positives=500)


def test_folds_partition_the_movies_and_follow_the_seed():
    from genrefusion.evaluation.probe import fold_ids

    a, b, c = fold_ids(53, 5, seed=0), fold_ids(53, 5, seed=0), fold_ids(53, 5, seed=1)
    assert sorted(np.bincount(a).tolist()) == [10, 10, 11, 11, 11]
    assert (a == b).all() and (a != c).any()


def test_probe_encoder_reads_the_features_through_the_cache(synthetic_catalog, tiny_bert, tmp_path):
    from genrefusion.data.loader import load_dataset
    from genrefusion.evaluation.probe import probe_encoder, probe_movies

    ds = load_dataset(synthetic_catalog, "official", "any")
    movies = probe_movies(ds, ("text",))
    assert movies == [i for i, m in enumerate(ds.movies) if m.plot is not None]
    assert len(probe_movies(ds, ("text",), limit=30, seed=0)) == 30
    from genrefusion.features.spec import FeatureSpec

    kw = dict(features=FeatureSpec(cache_root=tmp_path, progress=False), folds=3, min_positives=5)
    r = probe_encoder(ds, str(tiny_bert), movies, **kw)
    assert r["modality"] == "text" and r["n"] == len(movies) and r["dim"] == 32
    assert set(r["genres"]) <= {"Horror", "Sci-Fi", "Comedy", "Drama"}
    again = probe_encoder(ds, str(tiny_bert), movies, **kw)  # from the cache: the same features, the same scores
    assert again["linear"] == r["linear"] and again["knn"] == r["knn"]
    with pytest.raises(ValueError, match="lack a plot"):
        probe_encoder(ds, str(tiny_bert), [i for i, m in enumerate(ds.movies) if m.plot is None], **kw)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_probe", REPO / "benchmarks" / "probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_names_and_counts_encoders_whose_package_is_missing():
    bench = _bench()

    def run(dataset, name, movies, **kw):
        if name == "absent":
            raise ModuleNotFoundError("No module named 'absent_weights'")
        return {"encoder": name, "linear": 0.3, "knn": 0.2, "chance": 0.1, "n": len(movies), "seconds_features": 0}

    lines = []
    results, skipped = bench.probe_all(None, ["a", "absent", "b"], lambda n: [1, 2, 3], run=run, log=lines.append)
    assert [r["encoder"] for r in results] == ["a", "b"]
    assert [n for n, _ in skipped] == ["absent"] and "absent_weights" in skipped[0][1]
    assert any(line.startswith("skipped absent") for line in lines)
    with pytest.raises(ValueError):  # anything but a missing package is an error, not a skip
        bench.probe_all(None, ["a"], lambda n: [], run=lambda *a, **k: (_ for _ in ()).throw(ValueError("bad")))


def test_every_recorded_probe_score_is_complete_and_belongs_to_a_registered_encoder():
    from genrefusion.encoders import encoder_spec, list_encoders
    from genrefusion.encoders.probe_scores import KEYS, MEASURED

    names = {s.name for s in list_encoders()}
    assert set(MEASURED) <= names, sorted(set(MEASURED) - names)
    for name, record in MEASURED.items():
        assert set(record) == set(KEYS), name
        assert all(0.0 <= record[k] <= 1.0 for k in ("linear", "knn", "chance")), name
        assert record["command"].startswith("benchmarks/probe.py ") and record["n"] > 0, name
        assert encoder_spec(name).probe is record
    assert all(s.probe is None for s in list_encoders() if s.name not in MEASURED)
