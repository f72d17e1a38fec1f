import inspect
import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    hamming_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from genrefusion.evaluation.metrics import (
    THRESHOLD_GRID,
    compute_metrics,
    expected_calibration_error,
    format_table,
    tune_thresholds,
)


def _random_case(seed, n=60, n_labels=6):
    """Random labels/probabilities with genre 2 never positive and genre 4 always positive."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, n_labels)) < 0.3).astype(int)
    y[:, 2] = 0
    y[:, 4] = 1
    # probabilities loosely correlated with the labels so scores are not all ~0.5
    p = np.clip(0.35 * y + 0.65 * rng.random((n, n_labels)), 0, 1)
    return y, p


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["default", "float", "per_genre"])
def test_compute_metrics_equals_sklearn(seed, kind):
    y, p = _random_case(seed)
    rng = np.random.default_rng(100 + seed)
    threshold = {"default": 0.5, "float": 0.37, "per_genre": rng.uniform(0.2, 0.8, size=y.shape[1])}[kind]
    names = [f"g{j}" for j in range(y.shape[1])]
    m = compute_metrics(y, p, threshold=threshold, label_names=names)

    pred = (p >= np.asarray(threshold)[None] if np.ndim(threshold) else p >= threshold).astype(int)
    assert m["hamming_accuracy"] == 1 - hamming_loss(y, pred)
    assert m["subset_accuracy"] == accuracy_score(y, pred)
    for avg in ("macro", "micro", "weighted", "samples"):
        prec, rec, f1, _ = precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
        assert (m[f"precision_{avg}"], m[f"recall_{avg}"], m[f"f1_{avg}"]) == (prec, rec, f1)
        assert m[f"f1_{avg}"] == f1_score(y, pred, average=avg, zero_division=0)

    scorable = [j for j in range(y.shape[1]) if j not in (2, 4)]
    assert m["n_labels_scored"] == len(scorable)
    assert m["labels_without_positives"] == ["g2"]
    assert m["labels_without_negatives"] == ["g4"]
    assert m["roc_auc_macro"] == pytest.approx(roc_auc_score(y[:, scorable], p[:, scorable], average="macro"), abs=1e-15)
    assert m["map_macro"] == pytest.approx(average_precision_score(y[:, scorable], p[:, scorable], average="macro"), abs=1e-15)
    assert m["roc_auc_micro"] == roc_auc_score(y, p, average="micro")
    assert m["map_micro"] == average_precision_score(y, p, average="micro")

    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    for j, name in enumerate(names):
        g = m["per_genre"][name]
        assert (g["precision"], g["recall"], g["f1"], g["support"]) == (prec[j], rec[j], f1[j], sup[j])
        if j in scorable:
            assert g["roc_auc"] == roc_auc_score(y[:, j], p[:, j])
            assert g["ap"] == average_precision_score(y[:, j], p[:, j])
        else:
            assert g["roc_auc"] is None and g["ap"] is None

    expected_t = threshold.tolist() if kind == "per_genre" else threshold
    assert m["threshold"] == expected_t
    json.dumps(m)  # plain floats/ints/lists/None only


def test_hamming_accuracy_hand_example():
    y = [[1, 0, 1], [0, 1, 0]]
    p = [[0.9, 0.2, 0.4], [0.1, 0.8, 0.7]]
    # predictions at 0.5: [[1,0,0],[0,1,1]] -> 2 wrong cells out of 6; no row fully right
    m = compute_metrics(y, p)
    assert m["hamming_accuracy"] == pytest.approx(4 / 6)
    assert m["subset_accuracy"] == 0.0
    # micro: TP=2, FP=1, FN=1 -> F1 = 4/6
    assert m["f1_micro"] == pytest.approx(4 / 6)
    assert m["n_samples"] == 2 and m["n_labels"] == 3
    assert m["labels_without_positives"] == [] and m["n_labels_scored"] == 3
    assert list(m["per_genre"]) == ["label_0", "label_1", "label_2"]
    # p == threshold counts as predicted
    assert compute_metrics([[1, 0]], [[0.5, 0.49]])["hamming_accuracy"] == 1.0


def test_ece_hand_example():
    y = [[0, 1, 0], [1, 1, 0]]
    p = [[0.1, 0.3, 0.35], [0.9, 0.7, 0.05]]
    # 5 bins of width 0.2:
    #   [0, .2): p .1,.05  y 0,0 -> |0 - .075| * 2
    #   [.2,.4): p .3,.35  y 1,0 -> |.5 - .325| * 2
    #   [.6,.8): p .7      y 1   -> |1 - .7| * 1
    #   [.8, 1]: p .9      y 1   -> |1 - .9| * 1
    expected = (2 * 0.075 + 2 * 0.175 + 0.3 + 0.1) / 6
    assert expected_calibration_error(y, p, n_bins=5) == pytest.approx(expected)
    assert compute_metrics(y, p)["ece"] == pytest.approx(expected_calibration_error(y, p, n_bins=15))


def test_ece_perfect_calibration_and_edges():
    # a quarter of the cells are positive and every probability says 0.25 -> perfectly calibrated
    y = np.array([[1, 0, 0, 0]] * 3)
    assert expected_calibration_error(y, np.full(y.shape, 0.25)) == pytest.approx(0.0)
    # p = 1.0 falls in the last bin, p = 0.0 in the first; confident and right -> 0
    assert expected_calibration_error([[1, 0]], [[1.0, 0.0]]) == 0.0
    # confident and wrong -> 1
    assert expected_calibration_error([[0, 1]], [[1.0, 0.0]]) == 1.0
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([[1]], [[0.5]], n_bins=0)


def test_tune_thresholds_known_optimum():
    # genre 0 separable between .20 (neg) and .30 (pos): F1 = 1 for t in (.20, .30] -> closest to .5 is .30
    # genre 1 separable between .70 and .80: F1 = 1 for t in (.70, .80] -> .71
    # genre 2 has no positives -> keeps .5
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    p = np.array([[0.30, 0.70, 0.9], [0.20, 0.80, 0.1], [0.30, 0.80, 0.6], [0.20, 0.70, 0.3]])
    np.testing.assert_allclose(tune_thresholds(y, p, "per_genre"), [0.30, 0.71, 0.5])
    assert tune_thresholds(y, p, "fixed") == 0.5

    # one threshold separates every genre: positives at .40, negatives at .30 -> (.30, .40] -> .40
    y2 = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    p2 = np.where(y2 == 1, 0.40, 0.30)
    assert tune_thresholds(y2, p2, "global") == pytest.approx(0.40)
    assert tune_thresholds(y2, p2, "global", metric="f1_micro") == pytest.approx(0.40)
    # a flat optimum that contains 0.5 stays at 0.5
    p3 = np.where(y2 == 1, 0.56, 0.44)
    assert tune_thresholds(y2, p3, "global") == 0.5
    np.testing.assert_array_equal(tune_thresholds(y2, p3, "per_genre"), [0.5, 0.5])


@pytest.mark.parametrize("seed", [0, 3])
def test_tune_thresholds_reaches_grid_optimum(seed):
    """Brute force with sklearn: the chosen thresholds attain the best score on the grid."""
    y, p = _random_case(seed, n=80, n_labels=5)
    macro = [f1_score(y, (p >= t).astype(int), average="macro", zero_division=0) for t in THRESHOLD_GRID]
    micro = [f1_score(y, (p >= t).astype(int), average="micro", zero_division=0) for t in THRESHOLD_GRID]
    per = np.array([f1_score(y, (p >= t).astype(int), average=None, zero_division=0) for t in THRESHOLD_GRID])

    t_macro = tune_thresholds(y, p, "global")
    assert isinstance(t_macro, float) and t_macro in THRESHOLD_GRID
    assert f1_score(y, (p >= t_macro).astype(int), average="macro", zero_division=0) == pytest.approx(max(macro))
    t_micro = tune_thresholds(y, p, "global", metric="f1_micro")
    assert f1_score(y, (p >= t_micro).astype(int), average="micro", zero_division=0) == pytest.approx(max(micro))

    t_per = tune_thresholds(y, p, "per_genre")
    assert t_per.shape == (5,)
    f1_at_t = f1_score(y, (p >= t_per[None]).astype(int), average=None, zero_division=0)
    for j in range(5):
        if y[:, j].any():
            assert f1_at_t[j] == pytest.approx(per[:, j].max())
    assert t_per[2] == 0.5  # genre 2 has no positives
    # per-genre thresholds are at least as good as one global threshold on the data they were tuned on
    assert f1_at_t.mean() >= max(macro) - 1e-12


def test_tune_thresholds_sees_only_its_arguments():
    # the only data inputs are one split's labels and probabilities
    assert list(inspect.signature(tune_thresholds).parameters) == ["y_true", "y_prob", "mode", "metric"]
    # validation data optimal on (.30,.40] (-> .40) and "test" data optimal on (.60,.70] (-> .61)
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    val_p, test_p = np.where(y == 1, 0.40, 0.30), np.where(y == 1, 0.70, 0.60)
    val_copy = val_p.copy()
    t_val = tune_thresholds(y, val_p, "global")
    assert t_val == pytest.approx(0.40)
    assert tune_thresholds(y, test_p, "global") == pytest.approx(0.61)
    np.testing.assert_array_equal(val_p, val_copy)  # inputs are not modified
    # the tuned value applied to test is a plain input of compute_metrics, not re-tuned there
    assert compute_metrics(y, test_p, threshold=t_val)["threshold"] == t_val
    assert compute_metrics(y, test_p, threshold=t_val)["f1_micro"] == pytest.approx(2 * 4 / (2 * 4 + 4))


def test_input_validation():
    y, p = _random_case(0, n=10, n_labels=5)
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(y, p[:, :2])
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        compute_metrics(y, p, threshold=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compute_metrics(y, p, threshold=1.5)
    with pytest.raises(ValueError, match="probabilities"):
        compute_metrics(y, p * 3)
    with pytest.raises(ValueError, match="0/1"):
        compute_metrics(y * 2, p)
    with pytest.raises(ValueError, match="label_names"):
        compute_metrics(y, p, label_names=["a"])
    with pytest.raises(ValueError, match="mode"):
        tune_thresholds(y, p, "best")
    with pytest.raises(ValueError, match="tuning metric"):
        tune_thresholds(y, p, "global", metric="accuracy")


def test_format_table():
    rows = {
        "BERT": {"hamming_accuracy": 0.92151, "f1_macro": 0.31634, "f1_micro": 0.5419, "f1_weighted": 0.4975, "f1_samples": 0.5375},
        "GMU": {
            "hamming_accuracy": {"mean": 0.9278, "std": 0.00123},
            "f1_macro": {"mean": 0.3947, "std": 0.01},
            "f1_micro": {"mean": 0.6041, "std": 0.0},
            "f1_weighted": {"mean": 0.5665, "std": 0.0},
            "f1_samples": None,
        },
    }
    lines = format_table(rows).splitlines()
    assert [c.strip() for c in lines[0].split("|")] == ["Model", "Accuracy", "F1-Macro", "F1-Micro", "F1-Weighted", "F1-Samples"]
    assert set(lines[1]) <= {"-", "+"}
    assert [c.strip() for c in lines[2].split("|")] == ["BERT", "0.9215", "0.3163", "0.5419", "0.4975", "0.5375"]
    assert [c.strip() for c in lines[3].split("|")] == [
        "GMU", "0.9278 ± 0.0012", "0.3947 ± 0.0100", "0.6041 ± 0.0000", "0.5665 ± 0.0000", "-"
    ]
    assert len({line.index("|") for line in (lines[0], lines[2], lines[3])}) == 1  # columns line up
    custom = format_table({"m": {"ece": 0.05, "roc_auc_macro": 0.9}}, columns=("roc_auc_macro", "ece"))
    assert custom.splitlines()[0].split("|")[1].strip() == "ROC-AUC-Macro"
    assert custom.splitlines()[2].split("|")[2].strip() == "0.0500"


def test_cross_fitted_f1_scores_each_half_with_the_other_halfs_thresholds():
    from genrefusion.evaluation.metrics import cross_fitted_f1

    rng = np.random.default_rng(3)
    y = (rng.random((50, 4)) < 0.35).astype(int)
    p = np.clip(0.3 * y + rng.random((50, 4)) * 0.7, 0, 1)
    got = cross_fitted_f1(y, p, "per_genre", seed=5)
    half = np.random.default_rng(5).permutation(50) < 25
    parts = [compute_metrics(y[b], p[b], tune_thresholds(y[a], p[a], "per_genre"))
             for a, b in ((half, ~half), (~half, half))]
    assert got["f1_macro"] == pytest.approx(np.mean([m["f1_macro"] for m in parts]))
    assert got["f1_micro"] == pytest.approx(np.mean([m["f1_micro"] for m in parts]))
    per_genre = np.mean([[g["f1"] for g in m["per_genre"].values()] for m in parts], axis=0)
    np.testing.assert_allclose(got["per_genre_f1"], per_genre)
    # tuned on the scored movies themselves, the score could only be as high or higher
    on_itself = [compute_metrics(y[s], p[s], tune_thresholds(y[s], p[s], "per_genre"))["f1_macro"]
                 for s in (half, ~half)]
    assert got["f1_macro"] <= np.mean(on_itself) + 1e-12
