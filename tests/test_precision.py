"""A model trained on fp32, bf16 or fp16 features (bf16 is the GPU default) loads, records its precision, and its
Predictor encodes under that precision, so a test movie gets the probabilities the run saved."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open

from genrefusion.config import Config
from genrefusion.data.loader import load_catalog
from genrefusion.training.experiment import run_experiment
from genrefusion.data.images import load_poster
from genrefusion.cli.predict import load_model

# Largest |probability - the run's saved probability| over the test movies. The run encoded them in the cache's
# length-sorted batches, the Predictor in one batch, which may change the last bits (measured on this CPU: 0.0 at
# every precision). Encoding bf16-trained features in fp32 instead is off by 7e-4, fp16 ones by 7e-5.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_catalog, tiny_bert, tiny_vit, trained_run):
    root = tmp_path_factory.mktemp("precision-runs")
    out = {"fp32": trained_run}
    for precision in ("bf16", "fp16"):
        cfg = Config(data=str(synthetic_catalog), split="official", modalities="any", model="gmu",
                     text_encoder=str(tiny_bert), image_encoder=str(tiny_vit), pooling="mean", epochs=4, lr=3e-3,
                     cache_dir=str(root / "cache"), precision=precision).validate()
        run_experiment(cfg, run_dir=root / precision, log=None)
        out[precision] = root / precision
    return out


def _saved_and_predicted(run, model_dir, catalog, predictor=None):
    with safe_open(str(run / "test_predictions.safetensors"), "np") as f:
        stored, ids = f.get_tensor("probs"), json.loads(f.metadata()["ids"])
    by_id = {m.id: m for m in load_catalog(catalog).movies}
    movies = [by_id[i] for i in ids]
    posters = [load_poster(m.poster) if m.poster else None for m in movies]
    predictor = predictor or load_model(model_dir)
    got = np.array([[r["probabilities"][g] for g in predictor.genres]
                    for r in predictor.predict(posters, [m.plot for m in movies])])
    return stored, got


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_model_trained_on_each_precision_loads_and_predicts_what_its_run_saved(runs, synthetic_catalog,
                                                                                precision):
    run = runs[precision]
    meta = json.loads((run / "model" / "model.json").read_text())
    assert {r["precision"] for r in meta["encoders"].values()} == {precision}
    predictor = load_model(run / "model")
    assert predictor.precision == {"text": precision, "image": precision}
    stored, got = _saved_and_predicted(run, run / "model", synthetic_catalog, predictor)
    assert np.abs(got - stored).max() <= TOLERANCE
    if precision != "fp32":  # the precision matters: encoding in fp32 instead misses the run's probabilities
        predictor.precision = {m: "fp32" for m in predictor.precision}
        _, in_fp32 = _saved_and_predicted(run, run / "model", synthetic_catalog, predictor)
        assert np.abs(in_fp32 - stored).max() > TOLERANCE


def test_an_end_to_end_model_records_its_precision_and_predicts_what_its_run_saved(synthetic_catalog, tiny_bert,
                                                                                   tiny_vit, tmp_path):
    cfg = Config(data=str(synthetic_catalog), split="official", modalities="any", model="gmu", mode="end-to-end",
                 text_encoder=str(tiny_bert), image_encoder=str(tiny_vit), pooling="mean", epochs=1,
                 batch_size=32, lr=3e-3).validate()
    run_experiment(cfg, run_dir=tmp_path / "e2e", log=None)
    meta = json.loads((tmp_path / "e2e" / "model" / "model.json").read_text())
    assert meta["format"] == 2 and {r["precision"] for r in meta["encoders"].values()} == {"fp32"}  # CPU: no autocast
    stored, got = _saved_and_predicted(tmp_path / "e2e", tmp_path / "e2e" / "model", synthetic_catalog)
    assert np.abs(got - stored).max() <= TOLERANCE
