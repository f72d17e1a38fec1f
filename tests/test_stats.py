import numpy as np
import pytest
from sklearn.metrics import f1_score, hamming_loss

from genrefusion.evaluation.metrics import compute_metrics
from genrefusion.evaluation.stats import BOOTSTRAP_METRICS, mean_std, paired_bootstrap, resampled_scores


def _case(seed=0, n=200, n_labels=6):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, n_labels)) < 0.3).astype(int)
    prob_a = np.clip(0.3 * y + 0.7 * rng.random((n, n_labels)), 0, 1)
    return y, prob_a


def _sk(metric, y, pred):
    if metric == "hamming_accuracy":
        return 1 - hamming_loss(y, pred)
    return f1_score(y, pred, average=metric.split("_")[1], zero_division=0)


@pytest.mark.parametrize("metric", BOOTSTRAP_METRICS)
def test_resampled_scores_equal_sklearn_on_the_resample(metric):
    y, prob = _case(1, n=40)
    y[:, 3] = 0  # a genre with no positives
    y[0] = 0  # a movie with no genre
    pred = (prob >= 0.5).astype(int)
    rng = np.random.default_rng(7)
    idx = [rng.integers(0, 40, size=40) for _ in range(5)]
    weights = np.stack([np.bincount(i, minlength=40) for i in idx]).astype(float)
    got = resampled_scores(y, pred, weights, metric)
    expected = [_sk(metric, y[i], pred[i]) for i in idx]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_identical_models_give_zero_difference():
    y, prob = _case()
    r = paired_bootstrap(y, prob, prob.copy(), n_boot=200)
    assert r["diff"] == 0.0 and r["ci_low"] == 0.0 and r["ci_high"] == 0.0
    assert r["p_value"] == 1.0  # B never beats A


@pytest.mark.parametrize("metric", ["f1_macro", "f1_micro"])
def test_known_improvement_is_detected(metric):
    y, prob_a = _case()
    pred_a = prob_a >= 0.5
    wrong = np.argwhere(pred_a != y.astype(bool))
    rng = np.random.default_rng(0)
    fix = wrong[rng.choice(len(wrong), size=len(wrong) // 3, replace=False)]
    prob_b = prob_a.copy()
    prob_b[fix[:, 0], fix[:, 1]] = np.where(y[fix[:, 0], fix[:, 1]] == 1, 0.9, 0.1)  # B = A with errors fixed

    r = paired_bootstrap(y, prob_a, prob_b, metric=metric, n_boot=1000, seed=0)
    sk_a = _sk(metric, y, pred_a.astype(int))
    sk_b = _sk(metric, y, (prob_b >= 0.5).astype(int))
    assert r["score_a"] == pytest.approx(sk_a) and r["score_b"] == pytest.approx(sk_b)
    assert r["diff"] == pytest.approx(sk_b - sk_a) and r["diff"] > 0
    assert 0 < r["ci_low"] <= r["diff"] <= r["ci_high"]
    assert r["p_value"] < 0.01
    # swapping the models flips the sign and the interval
    s = paired_bootstrap(y, prob_b, prob_a, metric=metric, n_boot=1000, seed=0)
    assert s["diff"] == pytest.approx(-r["diff"])
    assert s["ci_high"] == pytest.approx(-r["ci_low"]) and s["p_value"] == 1.0


def test_bootstrap_thresholds_seed_and_validation():
    y, prob = _case(2, n=80)
    t = np.linspace(0.3, 0.7, y.shape[1])
    r = paired_bootstrap(y, prob, prob, threshold_a=0.5, threshold_b=t, n_boot=300, seed=3)
    expected = compute_metrics(y, prob, threshold=t)["f1_macro"] - compute_metrics(y, prob)["f1_macro"]
    assert r["diff"] == pytest.approx(expected)
    assert paired_bootstrap(y, prob, prob, threshold_b=t, n_boot=300, seed=3) == r  # deterministic per seed
    other = paired_bootstrap(y, prob, prob, threshold_b=t, n_boot=300, seed=4)
    assert (other["ci_low"], other["ci_high"]) != (r["ci_low"], r["ci_high"])
    with pytest.raises(ValueError, match="bootstrap metric"):
        paired_bootstrap(y, prob, prob, metric="roc_auc")
    with pytest.raises(ValueError, match="model B"):
        paired_bootstrap(y, prob, prob[:, :2])


def test_mean_std():
    runs = [
        {"f1_macro": 0.30, "n_samples": 10, "roc_auc_micro": 0.8, "per_genre": {"a": {}}, "threshold": [0.5], "flag": True},
        {"f1_macro": 0.34, "n_samples": 10, "roc_auc_micro": None, "per_genre": {"a": {}}, "threshold": [0.4], "flag": False},
        {"f1_macro": 0.38, "n_samples": 10, "roc_auc_micro": 0.7, "per_genre": {"a": {}}, "threshold": [0.3], "flag": True},
    ]
    out = mean_std(runs)
    assert set(out) == {"f1_macro", "n_samples"}  # None somewhere, nested, lists and bools are skipped
    assert out["f1_macro"]["mean"] == pytest.approx(0.34)
    assert out["f1_macro"]["std"] == pytest.approx(0.04)  # sample std (ddof=1): sqrt((.04^2 + 0 + .04^2) / 2)
    assert out["n_samples"] == {"mean": 10.0, "std": 0.0}
    assert mean_std(runs[:1])["f1_macro"] == {"mean": 0.30, "std": 0.0}
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])


def test_interval_width_matches_the_normal_approximation():
    """For a per-movie-average metric the bootstrap CI of the paired difference should be close to
    diff ± 1.96 * sd(d_i) / sqrt(N), with d_i the per-movie difference (central limit theorem)."""
    y, prob_a = _case(5, n=400)
    rng = np.random.default_rng(1)
    prob_b = np.where(rng.random(y.shape) < 0.15, y * 0.8 + 0.1, prob_a)  # B fixes ~15% of cells
    d = ((prob_b >= 0.5) == y).mean(1) - ((prob_a >= 0.5) == y).mean(1)
    r = paired_bootstrap(y, prob_a, prob_b, metric="hamming_accuracy", n_boot=2000, seed=0)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert r["diff"] == pytest.approx(d.mean())
    assert r["ci_high"] - r["ci_low"] == pytest.approx(2 * half, rel=0.1)
    assert (r["ci_low"] + r["ci_high"]) / 2 == pytest.approx(d.mean(), abs=0.2 * half)


def test_paired_bootstrap_averages_seeds_within_each_resample():
    rng = np.random.default_rng(5)
    y = (rng.random((120, 6)) < 0.3).astype(int)
    a1, a2 = rng.random((120, 6)), rng.random((120, 6))
    b = np.clip(y * 0.7 + rng.random((120, 6)) * 0.4, 0, 1)
    single = paired_bootstrap(y, a1, b, n_boot=200, seed=1)
    same_twice = paired_bootstrap(y, [a1, a1], [b, b], threshold_a=[0.5, 0.5], threshold_b=[0.5, 0.5],
                                  n_boot=200, seed=1)
    assert same_twice["diff"] == pytest.approx(single["diff"]) and same_twice["ci_low"] == pytest.approx(single["ci_low"])
    two = paired_bootstrap(y, [a1, a2], b, threshold_a=[0.5, 0.5], n_boot=200, seed=1)
    from genrefusion.evaluation.metrics import compute_metrics

    mean_a = np.mean([compute_metrics(y, a, 0.5)["f1_macro"] for a in (a1, a2)])
    assert two["score_a"] == pytest.approx(mean_a) and two["n_seeds_a"] == 2
    with pytest.raises(ValueError, match="one threshold per seed"):
        paired_bootstrap(y, [a1, a2], b, threshold_a=0.5)
