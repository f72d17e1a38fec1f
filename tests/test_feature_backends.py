"""The onnxruntime feature backend: the same fp32 features as torch (same cache entry and fingerprint), companions
filled from the one graph, a cached graph reused and a damaged one traced again, a graph that disagrees never used,
and `auto` choosing by the measured evidence only."""
from __future__ import annotations

import logging

import pytest
import torch

from genrefusion.features import backends as feature_backends
from genrefusion.data.loader import load_catalog
from genrefusion.encoders import create_encoder
from genrefusion.features.backends import BackendError
from genrefusion.features.cache import FeatureCache, dataset_features
from genrefusion.features.spec import FeatureSpec
from genrefusion.features.precision import CpuCapability, backend_for, backend_verdict


@pytest.fixture(scope="module")
def catalog(synthetic_catalog):
    return load_catalog(synthetic_catalog)


def _features(ds, source, cache, backend, **kw):
    features = FeatureSpec(cache_root=cache, batch_size=8, progress=False, precision="fp32", backend=backend)
    return dataset_features(ds, create_encoder(str(source), **kw), features)


@pytest.mark.parametrize("which", ["text", "image"])
def test_onnxruntime_computes_torch_features_under_the_same_cache_key(catalog, tiny_bert, tiny_vit, tmp_path, which):
    source = tiny_bert if which == "text" else tiny_vit
    ref = _features(catalog, source, tmp_path / "torch", "torch")
    got = _features(catalog, source, tmp_path / "ort", "onnxruntime")
    assert (ref.backend, got.backend) == ("torch", "onnxruntime") and got.encoded_now == ref.encoded_now > 0
    assert got.fingerprint == ref.fingerprint and got.precision == ref.precision == "fp32"
    assert torch.equal(got.present, ref.present)
    assert torch.allclose(got.pooled, ref.pooled, atol=1e-5, rtol=1e-4)
    enc = create_encoder(str(source))
    folder = lambda root: FeatureCache(enc, FeatureSpec(cache_root=root)).dir.name  # noqa: E731
    assert folder(tmp_path / "ort") == folder(tmp_path / "torch")
    assert len(list((tmp_path / "ort" / "onnx").glob("*/encoder.onnx"))) == 1
    if which == "text":  # the other pooling came out of the same graph, and matches torch's
        mean_ref = _features(catalog, source, tmp_path / "torch", "torch", pooling="mean")
        mean_got = _features(catalog, source, tmp_path / "ort", "torch", pooling="mean")
        assert mean_got.encoded_now == mean_ref.encoded_now == 0
        assert torch.allclose(mean_got.pooled, mean_ref.pooled, atol=1e-5, rtol=1e-4)


def test_the_graph_is_traced_once_and_a_damaged_one_is_traced_again(catalog, tiny_bert, tmp_path, monkeypatch,
                                                                    caplog):
    traced = []
    trace = feature_backends._trace
    monkeypatch.setattr(feature_backends, "_trace", lambda *a: traced.append(1) or trace(*a))
    first = _features(catalog, tiny_bert, tmp_path / "c", "onnxruntime")
    sub = catalog.subset(range(10))
    _features(sub, tiny_bert, tmp_path / "c", "onnxruntime", max_length=16)  # another encoder: its own graph
    assert len(traced) == 2
    for shard in (tmp_path / "c" / "features").rglob("part-*"):
        shard.unlink()  # encode again, with the graph already there
    again = _features(catalog, tiny_bert, tmp_path / "c", "onnxruntime")
    assert len(traced) == 2 and torch.equal(again.pooled, first.pooled)
    graph = next(p for p in (tmp_path / "c" / "onnx").glob("*/encoder.onnx")
                 if (p.parent / "graph.json").read_text().count('"max_length": 64'))
    graph.write_bytes(graph.read_bytes()[:-10] + b"0123456789")  # a flipped tail: a damaged file
    for shard in (tmp_path / "c" / "features").rglob("part-*"):
        shard.unlink()
    with caplog.at_level(logging.WARNING, logger="genrefusion.features.backends"):
        repaired = _features(catalog, tiny_bert, tmp_path / "c", "onnxruntime")
    assert len(traced) == 3 and "SHA-256" in caplog.text and str(graph) in caplog.text
    assert torch.equal(repaired.pooled, first.pooled)


def test_a_graph_that_disagrees_with_torch_is_never_used(catalog, tiny_bert, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(feature_backends, "TOLERANCE", -1.0)  # every graph "disagrees"
    with pytest.raises(BackendError, match="differs from torch"):
        _features(catalog, tiny_bert, tmp_path / "a", "onnxruntime")
    assert not list((tmp_path / "a" / "features").rglob("part-*"))  # nothing cached from it
    monkeypatch.setattr(feature_backends, "resolve_backend", lambda *a: "onnxruntime")  # as auto on evidence
    with caplog.at_level(logging.WARNING, logger="genrefusion.features.backends"):
        table = _features(catalog, tiny_bert, tmp_path / "b", "auto")
    assert table.backend == "torch" and "onnxruntime is not used" in caplog.text


def test_explicit_onnxruntime_refuses_what_it_cannot_compute(catalog, tiny_bert, tmp_path):
    enc = create_encoder(str(tiny_bert))
    with pytest.raises(BackendError, match="sequences come from torch"):
        dataset_features(catalog, enc, FeatureSpec(cache_root=tmp_path, progress=False, precision="fp32",
                                                   backend="onnxruntime"), sequences=True)
    with pytest.raises(BackendError, match="fp32 features only"):
        dataset_features(catalog, enc, FeatureSpec(cache_root=tmp_path, progress=False, precision="bf16",
                                                   backend="onnxruntime"))
    with pytest.raises(ValueError, match="feature backend must be one of"):
        dataset_features(catalog, enc, FeatureSpec(cache_root=tmp_path, progress=False, precision="fp32",
                                                   backend="tensorrt"))
    dataset_features(catalog, enc, FeatureSpec(cache_root=tmp_path, progress=False, precision="fp32", backend="torch"))
    with pytest.raises(ValueError, match="feature backend must be one of"):  # also with everything cached
        dataset_features(catalog, enc, FeatureSpec(cache_root=tmp_path, progress=False, precision="fp32",
                                                   backend="tensorrt"))


def _table(speedup: float, cosine: float) -> dict:
    return {"speed": [{"native": [], "encoders": {"enc": {"onnxruntime": {"speedup": speedup,
                                                                          "min_cosine": cosine}}}}]}


@pytest.mark.parametrize("speedup,cosine,choice,why", [
    (1.30, 1.0, "onnxruntime", "ok"), (0.95, 1.0, "torch", "not faster"), (2.0, 0.98, "torch", "disagree")])
def test_auto_uses_onnxruntime_only_on_the_measured_evidence(speedup, cosine, choice, why):
    cpu = CpuCapability(frozenset({"avx2"}), "AVX2")
    assert backend_for("enc", cpu, _table(speedup, cosine)) == choice
    assert why in backend_verdict("enc", cpu, _table(speedup, cosine))
    assert backend_for("other", cpu, _table(speedup, cosine)) == "torch"  # not measured: torch
    bf16_cpu = CpuCapability(frozenset({"avx512_bf16"}), "AVX512")  # measured on another kind of CPU: torch
    assert backend_for("enc", bf16_cpu, _table(speedup, cosine)) == "torch"
