"""A model whose weights are finite but whose outputs overflow (every weight x1e30, the folder consistent: its
checksum that of the scaled weights) is refused everywhere, never answered with NaN: load_model refuses it (a probe
prediction of a fixed movie), predict and serve print one line and exit 2, evaluate says which model, and a
prediction whose outputs are not finite is an error (the service: 500 with the error body, never 200 with nulls)."""
from __future__ import annotations

import subprocess
import sys

import httpx2
import numpy as np
import pytest
import torch

from genrefusion.cli.predict import load_model
from genrefusion.config import Config
from genrefusion.evaluation.evaluate import evaluate
from genrefusion.features.spec import FeatureSpec
from genrefusion.inference.base import NonFiniteOutputError, PredictorBase
from genrefusion.inference.checkpoint import load_head, save_model
from genrefusion.serving import create_app
from serving_helpers import LoopbackServer

SCALE = 1e30


@pytest.fixture(scope="module")
def overflowing(trained_run, tmp_path_factory):
    """The trained GMU with every weight x1e30: finite weights (|w| < 3.4e38), saved as a consistent folder."""
    head, meta = load_head(trained_run / "model")
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(SCALE)
    assert all(bool(torch.isfinite(p).all()) for p in head.parameters())
    d = tmp_path_factory.mktemp("overflowing") / "model"
    save_model(d, head, Config(**meta["config"]), meta["thresholds"], meta["encoders"])
    return d


@pytest.fixture
def unprobed(monkeypatch):
    """Loading without the probe: a model that passes it but overflows on some movie reaches the later checks."""
    monkeypatch.setattr(PredictorBase, "_probe", lambda self: None)


def test_load_model_refuses_a_model_whose_outputs_overflow(overflowing):
    with pytest.raises(NonFiniteOutputError) as e:
        load_model(overflowing)
    assert str(e.value).startswith(f"{overflowing}: the model's outputs are not finite numbers (NaN or inf) on a "
                                   "fixed test movie")
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


def test_a_good_model_passes_the_probe(trained_run):
    assert load_model(trained_run / "model").predict_one(plot="ghost night")["predicted"] is not None


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_predict_and_serve_print_one_line_and_exit_2(overflowing, command):
    args = ["--plot", "ghost night"] if command == "predict" else ["--port", "0"]
    proc = subprocess.run([sys.executable, "-m", "genrefusion", command, "--model", str(overflowing), *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == "", (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {overflowing}: the model's outputs are not finite"), \
        proc.stderr


def test_a_prediction_that_is_not_finite_is_an_error_not_nan(overflowing, unprobed):
    predictor = load_model(overflowing)
    with pytest.raises(NonFiniteOutputError, match=r"not finite numbers \(NaN or inf\) for 2 of 2 movie\(s\)") as e:
        predictor.predict([None, None], ["ghost night", "a dog and a boy"])
    assert e.value.rows == [0, 1]
    batch = predictor.features([None], ["ghost night"])
    with pytest.raises(NonFiniteOutputError):
        predictor.probabilities(batch)


def test_evaluate_names_the_model_and_the_movies(overflowing, synthetic_catalog, tmp_path, monkeypatch):
    features = FeatureSpec(cache_root=tmp_path, progress=False)
    with pytest.raises(NonFiniteOutputError, match=f"^{overflowing}: the model's outputs are not finite"):
        evaluate(overflowing, synthetic_catalog, split="test", n_boot=0, features=features)
    monkeypatch.setattr(PredictorBase, "_probe", lambda self: None)
    with pytest.raises(NonFiniteOutputError, match=rf"^{overflowing}: the model's outputs are not finite numbers "
                                                   r"\(NaN or inf\) for \d+ of the \d+ movies \(m\d+, .*cannot be "
                                                   r"scored") as e:
        evaluate(overflowing, synthetic_catalog, split="test", n_boot=0, features=features)
    assert e.value.rows


def test_the_service_answers_500_with_the_error_body_never_200_with_nulls(overflowing, unprobed):
    predictor = load_model(overflowing)
    with LoopbackServer(create_app(predictor)) as url, httpx2.Client(base_url=url, timeout=60,
                                                                     trust_env=False) as client:
        openapi = client.get("/openapi.json").json()
        for path, kwargs in (("/predict", {"data": {"plot": "ghost night"}}),
                             ("/predict/batch", {"json": {"movies": [{"id": "a", "plot": "ghost night"}]}})):
            r = client.post(path, **kwargs)
            assert r.status_code == 500, r.text
            body = r.json()
            assert set(body) == {"code", "message", "field"} and body["code"] == "internal_error"
            assert "outputs are not finite numbers (NaN or inf)" in body["message"]
            assert str(overflowing) not in body["message"]  # no server paths
            assert "500" in openapi["paths"][path]["post"]["responses"]
        assert client.get("/health").status_code == 200  # and the server stays up


def test_the_probe_movie_is_fixed():
    from genrefusion.inference.base import probe_poster

    assert np.array_equal(np.asarray(probe_poster()), np.asarray(probe_poster()))
