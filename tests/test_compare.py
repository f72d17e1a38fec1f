"""`genrefusion compare`: seed-averaged scores by default, or each row's seed ensemble with thresholds re-tuned on
validation only."""
from __future__ import annotations

import json

import numpy as np
import pytest

from genrefusion.evaluation.compare import compare, model_predictions
from genrefusion.data.labels import GENRES
from genrefusion.evaluation.metrics import compute_metrics, tune_thresholds
from genrefusion.evaluation.runs import save_predictions


def _row(root, rng, y_val, y_test, noise, mode="per_genre", seeds=3):
    """A grid row folder with `seeds` runs whose probabilities are the labels blurred by noise."""
    for s in range(seeds):
        run = root / f"seed-{s}"
        run.mkdir(parents=True)
        pv = np.clip(0.3 + 0.4 * y_val + rng.normal(0, noise, y_val.shape), 0, 1)
        pt = np.clip(0.3 + 0.4 * y_test + rng.normal(0, noise, y_test.shape), 0, 1)
        thr = tune_thresholds(y_val, pv, mode)
        genres = GENRES[:y_val.shape[1]]  # the file names its columns
        save_predictions(run / "val_predictions.safetensors", [f"v{i}" for i in range(len(y_val))], pv, y_val, thr, {},
                         genres)
        save_predictions(run / "test_predictions.safetensors", [f"t{i}" for i in range(len(y_test))], pt, y_test, thr,
                         {}, genres)
        (run / "metrics.json").write_text(json.dumps({"threshold_mode": mode}))
    return root


def test_ensemble_averages_seeds_and_tunes_thresholds_on_validation(tmp_path):
    rng = np.random.default_rng(0)
    y_val, y_test = (rng.random((60, 5)) < 0.3).astype(np.float32), (rng.random((80, 5)) < 0.3).astype(np.float32)
    a = _row(tmp_path / "a", rng, y_val, y_test, noise=0.35)
    b = _row(tmp_path / "b", rng, y_val, y_test, noise=0.15)
    per_seed, ens = model_predictions(a), model_predictions(a, ensemble=True)
    assert len(per_seed["probs"]) == 3 and len(ens["probs"]) == 1
    np.testing.assert_allclose(ens["probs"][0], np.mean(per_seed["probs"], axis=0))
    from safetensors import safe_open

    val_probs = []
    for s in range(3):
        with safe_open(str(a / f"seed-{s}" / "val_predictions.safetensors"), "np") as f:
            val_probs.append(f.get_tensor("probs"))
    np.testing.assert_array_equal(ens["thresholds"][0], tune_thresholds(y_val, np.mean(val_probs, axis=0), "per_genre"))

    r = compare(a, b, n_boot=300, ensemble=True)
    want_a = compute_metrics(y_test, ens["probs"][0], ens["thresholds"][0])["f1_macro"]
    assert r["ensemble"] and r["seeds_a"] == 3 and r["f1_macro"]["score_a"] == pytest.approx(want_a)
    assert r["f1_macro"]["ci_low"] > 0  # b's probabilities are far less noisy
    assert compare(a, b, n_boot=300)["f1_macro"]["n_seeds_a"] == 3  # the default still averages seed scores


def test_ensemble_refuses_rows_without_validation_predictions_or_mixed_modes(tmp_path):
    rng = np.random.default_rng(1)
    y = (rng.random((30, 4)) < 0.4).astype(np.float32)
    a = _row(tmp_path / "a", rng, y, y, 0.2, seeds=2)
    (a / "seed-1" / "val_predictions.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="val_predictions"):
        model_predictions(a, ensemble=True)
    m = _row(tmp_path / "m", rng, y, y, 0.2, seeds=2)
    (m / "seed-1" / "metrics.json").write_text(json.dumps({"threshold_mode": "global"}))
    with pytest.raises(ValueError, match="different modes"):
        model_predictions(m, ensemble=True)
