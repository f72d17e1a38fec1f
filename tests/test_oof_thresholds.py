"""threshold_source=oof: per-genre thresholds tuned on out-of-fold predictions over train + validation."""
from __future__ import annotations

import json

import numpy as np
import pytest


def _cfg(catalog, tiny_bert, root, **kw):
    from genrefusion.config import Config

    kw = {"threshold_mode": "per_genre", **kw}
    return Config(data=str(catalog), split="official", modalities="any", model="text", text_encoder=str(tiny_bert),
                  pooling="mean", epochs=2, lr=3e-3, cache_dir=str(root / "cache"), out=str(root), **kw).validate()


def test_oof_thresholds_are_tuned_on_out_of_fold_predictions_over_train_and_validation(
        synthetic_catalog, tiny_bert, tmp_path, monkeypatch):
    from genrefusion.training import experiment
    from genrefusion.data.loader import load_dataset
    from genrefusion.evaluation.metrics import tune_thresholds

    seen = {}
    real = experiment.oof_probabilities

    def spy(cfg, batch_fn, dims, y, pool, folds, final=None):
        seen["pool"], seen["folds"] = list(pool), folds
        seen["probs"] = real(cfg, batch_fn, dims, y, pool, folds, final=final)
        seen["y"] = y[pool].numpy()
        return seen["probs"]

    monkeypatch.setattr(experiment, "oof_probabilities", spy)
    cfg = _cfg(synthetic_catalog, tiny_bert, tmp_path, threshold_source="oof", threshold_folds=3)
    m = experiment.run_experiment(cfg, run_dir=tmp_path / "run", log=None)
    ds = load_dataset(synthetic_catalog, "official", "any")
    with_plot = {i for i, mv in enumerate(ds.movies) if mv.plot is not None}
    train_dev = [i for s in ("train", "dev") for i in ds.splits[s] if i in with_plot]
    assert sorted(seen["pool"]) == sorted(train_dev) and seen["folds"] == 3
    assert not set(seen["pool"]) & set(ds.splits["test"])  # test never enters
    assert m["threshold_source"] == "oof" and m["oof"]["n"] == len(train_dev) == m["data"]["n"]["train"] + \
        m["data"]["n"]["dev"]
    want = tune_thresholds(seen["y"], seen["probs"], "per_genre")
    assert m["thresholds"] == pytest.approx(want.tolist())
    assert m["oof"]["val_thresholds"] != m["thresholds"]  # validation alone would have chosen others
    saved = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert saved["thresholds"] == m["thresholds"]
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "tuned on out-of-fold predictions over train + validation" in card


def test_every_fold_model_predicts_only_movies_it_never_trained_on(synthetic_catalog, tiny_bert, tmp_path,
                                                                    monkeypatch):
    from genrefusion.training import experiment

    calls = []
    real_fit = experiment.fit

    def spy(model, batch_fn, y, train_idx, val_idx, cfg, loss_fn, **kw):
        calls.append((list(train_idx), list(val_idx)))
        return real_fit(model, batch_fn, y, train_idx, val_idx, cfg, loss_fn, **kw)

    monkeypatch.setattr(experiment, "fit", spy)
    # in this process, where the spy sees every call (test_workers.py covers the fold heads in worker processes)
    cfg = _cfg(synthetic_catalog, tiny_bert, tmp_path, threshold_source="oof", threshold_folds=3, fold_workers=1)
    experiment.run_experiment(cfg, run_dir=None, log=None)
    final, *folds = calls
    assert len(folds) == 3
    held = [set(v) for _, v in folds]
    assert set().union(*held) == set(final[0]) | set(final[1])  # the folds cover train + validation
    assert sum(len(h) for h in held) == len(set().union(*held))  # each movie held out once
    for train_idx, val_idx in folds:
        assert not set(train_idx) & set(val_idx)


def test_fixed_thresholds_are_tuned_on_nothing(synthetic_catalog, tiny_bert, tmp_path):
    from genrefusion.training.experiment import run_experiment

    m = run_experiment(_cfg(synthetic_catalog, tiny_bert, tmp_path, threshold_mode="fixed", threshold_source="oof"),
                       log=None)
    assert m["threshold_source"] == "val" and "oof" not in m and m["thresholds"] == 0.5


def test_threshold_folds_must_be_at_least_two():
    from genrefusion.config import Config

    with pytest.raises(ValueError, match="threshold_folds"):
        Config(threshold_folds=1).validate()
    with pytest.raises(ValueError, match="config threshold_source="):
        Config(threshold_source="test").validate()


def test_the_recommended_preset_tunes_on_oof_and_says_how_to_leave_it(synthetic_catalog, tiny_bert, tmp_path):
    """The validation-only comparison (benchmarks/threshold_source.py) chose oof for the recommended preset; where
    oof cannot apply the error names the way back to val."""
    from genrefusion.config import load_config
    from genrefusion.training.distill import student_config
    from genrefusion.training.experiment import run_experiment

    assert load_config(preset="recommended").threshold_source == "oof"
    assert load_config(preset="thesis").threshold_source == "val"
    e2e = _cfg(synthetic_catalog, tiny_bert, tmp_path, threshold_source="oof", mode="end-to-end")
    with pytest.raises(ValueError, match="needs mode=features .*threshold_source=val"):
        run_experiment(e2e, log=None)
    # a distilled student keeps val: fold heads trained on the labels would not fit a student of its teacher
    student = student_config(load_config(preset="recommended").to_dict(), "minilm-l6", "efficientnet-lite0",
                             data=str(synthetic_catalog))
    assert student.threshold_source == "val"
    with pytest.raises(ValueError, match="distill: threshold_source=oof .* use threshold_source=val"):
        student_config(load_config(preset="recommended").to_dict(), "minilm-l6", "efficientnet-lite0",
                       ["threshold_source=oof"], data=str(synthetic_catalog))


def test_the_final_model_trained_beside_the_fold_heads_is_the_one_trained_in_the_process(
        synthetic_catalog, tiny_bert, tmp_path):
    """With fold workers the final model is one more task of theirs; on one thread it must come out exactly as when
    everything trains in this process: the same weights, thresholds, history, and the same log lines and epoch rows
    reaching the caller (sent from the worker as each epoch ends)."""
    import torch

    from genrefusion.training import workers
    from genrefusion.training.experiment import run_experiment
    from safetensors.torch import load_file

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' one thread, so fold_workers=2 changes where, not how, it computes
    runs = {}
    try:
        for fw in (1, 2):
            lines, rows = [], []
            cfg = _cfg(synthetic_catalog, tiny_bert, tmp_path, threshold_source="oof", threshold_folds=3,
                       fold_workers=fw, name=f"fw{fw}")
            assert workers.plan(fw, 4, torch.device("cpu")) == fw
            m = run_experiment(cfg, run_dir=tmp_path / f"fw{fw}", log=lines.append, on_epoch=rows.append)
            runs[fw] = (m, lines, rows)
    finally:
        torch.set_num_threads(threads)
    (one, one_lines, one_rows), (two, two_lines, two_rows) = runs[1], runs[2]
    assert one["oof"]["final_beside_folds"] is False and two["oof"]["final_beside_folds"] is True
    epochs = lambda ls: [line for line in ls if line.startswith("epoch")]  # noqa: E731
    assert epochs(one_lines) and epochs(one_lines) == epochs(two_lines)  # the epoch lines, in order
    oof_line = lambda ls: next(line for line in ls if line.startswith("threshold_source=oof"))  # noqa: E731
    assert "one after the other" in oof_line(one_lines) and "side by side in 2 worker processes" in oof_line(two_lines)
    assert two_lines[-1].startswith("thresholds (per_genre) tuned on the out-of-fold predictions")
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(one_rows) == strip(two_rows) == strip(two["history"])
    assert one["thresholds"] == two["thresholds"] and one["test"] == two["test"]
    assert one["best_epoch"] == two["best_epoch"]
    w1, w2 = (load_file(tmp_path / f"fw{fw}" / "model" / "model.safetensors") for fw in (1, 2))
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    for m in (one, two):
        assert m["timings"]["train_oof_s"] >= m["timings"]["oof_s"] > 0
