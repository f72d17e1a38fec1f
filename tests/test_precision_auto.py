"""`--precision auto` on a CPU picks a reduced precision only on evidence: native on this CPU (a probe the tests
fake), measured faster than fp32 on a CPU of that kind, and measured to keep downstream quality, for every encoder
whose features are joined. The choice is part of the cache key and of the saved model, and round-trips through
training, saving and load_model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open

from genrefusion.features import calibrate, fingerprints, precision
from genrefusion.config import Config
from genrefusion.data.loader import load_catalog
from genrefusion.encoders import create_encoder
from genrefusion.training.experiment import run_experiment
from genrefusion.features.cache import FeatureCache
from genrefusion.features.spec import FeatureSpec
from genrefusion.data.images import load_poster
from genrefusion.features.precision import CpuCapability, choose, keeps_quality, probe_cpu, verdicts
from genrefusion.cli.predict import load_model

from calibration_helpers import FakeSpeed

AVX2 = CpuCapability(frozenset({"avx2"}), "AVX2", "fake AVX2")
BF16 = CpuCapability(frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}), "AVX512", "fake AVX512-BF16")


def table(encoders, speedup=1.7, verdict="pass", native=("bf16",)) -> dict:
    return {"speed": [{"native": list(native), "encoders": {e: {"bf16": {"speedup": speedup, "min_cosine": 0.999}}
                                                           for e in encoders}},
                      {"native": [], "encoders": {e: {"bf16": {"speedup": 0.2, "min_cosine": 0.999}}
                                                  for e in encoders}}],
            "quality": {e: {"bf16": {"verdict": verdict}} for e in encoders if verdict is not None}}


def test_probe_reads_the_cpu_flags_that_decide_native_precisions(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Fake EPYC\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 "
                    "avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    cap = probe_cpu(info)
    assert cap.model == "Fake EPYC" and cap.native == ("bf16",)
    assert {"avx2", "avx512_bf16", "avx512_vnni"} <= cap.flags and "fpu" not in cap.flags
    assert probe_cpu(tmp_path / "absent").native == ()  # not Linux: nothing counts as native


def test_auto_picks_bf16_only_when_native_faster_and_quality_kept():
    enc = ["minilm-l6"]
    assert choose(enc, BF16, table(enc)) == "bf16"
    assert choose(enc, AVX2, table(enc)) == "fp32"  # emulated bf16: slower (the AVX2 entry says x0.2)
    assert choose(enc, BF16, table(enc, verdict="fail")) == "fp32"
    assert choose(enc, BF16, table(enc, verdict=None)) == "fp32"  # quality never measured: no guess
    assert choose(enc, BF16, table(enc, speedup=0.9)) == "fp32"
    assert choose(enc, BF16, table(enc, native=("bf16", "fp16"))) == "fp32"  # measured on another kind of CPU
    assert choose(["unmeasured-encoder"], BF16, table(enc)) == "fp32"
    assert choose(enc, BF16, {}) == "fp32"  # no table at all
    # A joined encoder gets one precision: bf16 only when every part qualifies.
    assert choose(["minilm-l6", "mpnet-base"], BF16, table(enc)) == "fp32"
    assert choose(["minilm-l6", "mpnet-base"], BF16, table(["minilm-l6", "mpnet-base"])) == "bf16"
    why = verdicts(enc, AVX2, table(enc))["bf16"]["minilm-l6"]
    assert "no native bf16" in why and "avx512_bf16" in why


@pytest.mark.parametrize("computed_on, chosen", [
    ({"emulated": False, "native": ["bf16"]}, "bf16"),
    ({"emulated": True, "matmul_agreement": 0.99998}, "bf16"),  # PyTorch's emulation on an AVX2 CPU
    ({"emulated": True, "matmul_agreement": 0.62}, "fp32"),  # an emulation that does not compute like hardware
    ({"emulated": True}, "fp32"),  # emulated, agreement never checked
])
def test_a_quality_verdict_from_an_emulating_cpu_counts_only_when_its_products_match_native(computed_on, chosen):
    enc = ["minilm-l6"]
    t = table(enc)
    t["quality"]["minilm-l6"]["bf16"]["computed_on"] = computed_on
    assert choose(enc, BF16, t) == chosen
    if chosen == "fp32":
        assert "emulated bf16" in verdicts(enc, BF16, t)["bf16"]["minilm-l6"]


def _row(macro, micro):
    return {m: {"diff": d, "ci_low": lo, "ci_high": hi} for m, (d, lo, hi) in (("f1_macro", macro), ("f1_micro", micro))}


def test_the_quality_rule_is_the_issues():
    assert keeps_quality([_row((-0.008, -0.02, 0.004), (0.001, -0.01, 0.012))])  # within 0.01
    assert keeps_quality([_row((-0.018, -0.04, 0.003), (0.0, -0.01, 0.01))])  # beyond 0.01, but 0 in the interval
    assert not keeps_quality([_row((-0.018, -0.03, -0.006), (0.0, -0.01, 0.01))])  # reliably worse
    assert not keeps_quality([_row((0.0, -0.01, 0.01), (0.0, -0.01, 0.01)), _row((0.0, -0.01, 0.01),
                                                                                (-0.02, -0.03, -0.011))])
    assert not keeps_quality([])  # no rows, no evidence


def test_resolve_precision_asks_the_probe_on_a_cpu_and_keeps_explicit_choices(monkeypatch, tmp_path):
    path = tmp_path / "cpu_precision.json"
    path.write_text(json.dumps(table(["minilm-l6"])))
    monkeypatch.setattr(precision, "TABLE", path)
    monkeypatch.setattr(precision, "_probe", lambda: BF16)
    assert fingerprints.resolve_precision("auto", "cpu", ["minilm-l6"]) == "bf16"
    assert fingerprints.resolve_precision(None, "cpu", ["minilm-l6"]) == "bf16"
    assert fingerprints.resolve_precision("fp32", "cpu", ["minilm-l6"]) == "fp32"  # explicit wins
    assert fingerprints.resolve_precision("auto", "cpu") == "fp32"  # no encoder named: nothing to go on
    precision.set_cpu_probe(lambda: AVX2)
    try:
        assert fingerprints.resolve_precision("auto", "cpu", ["minilm-l6"]) == "fp32"
    finally:
        precision.set_cpu_probe(None)
    assert isinstance(precision.cpu_capability(), CpuCapability)  # the real probe is back


def test_the_committed_table_is_well_formed_and_names_the_machine_it_was_measured_on():
    t = precision.load_table()
    assert t, f"{precision.TABLE} is missing or not JSON"
    assert t["speed"] and all({"native", "flags", "encoders", "cpu"} <= set(e) for e in t["speed"])
    for entry in t["speed"]:
        for name, by_p in entry["encoders"].items():
            assert set(by_p) <= {"fp32", "bf16", "fp16", "int8-dynamic", "onnxruntime"}, name  # + the fp32 backend
            for p, m in by_p.items():
                assert m["speedup"] > 0 and -1 <= m["min_cosine"] <= 1.0 + 1e-6, (name, p)
    for name, by_p in t.get("quality", {}).items():
        for p, q in by_p.items():
            assert q["verdict"] in ("pass", "fail") and q["seeds"] >= 1 and q["rows"], (name, p)
            assert {"flags", "native", "emulated", "matmul_agreement"} <= set(q["computed_on"]), (name, p)
            assert q["computed_on"]["emulated"] == (p not in q["computed_on"]["native"]), (name, p)


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory, synthetic_catalog, tiny_bert, tiny_vit):
    """A run trained with precision=auto on a faked bf16 CPU whose evidence table qualifies both tiny encoders, and
    where calibration (a fake clock) measures bf16 fastest."""
    root = tmp_path_factory.mktemp("auto-precision")
    names = [create_encoder(str(tiny_bert), modality="text").name, create_encoder(str(tiny_vit), modality="image").name]
    path = root / "cpu_precision.json"
    path.write_text(json.dumps(table(names)))
    speed = FakeSpeed({"torch fp32": 1.0, "torch bf16": 0.5, "onnxruntime fp32": 0.9}, {"torch bf16": 1e-3})
    mp = pytest.MonkeyPatch()
    mp.setattr(precision, "TABLE", path)
    mp.setattr(precision, "_probe", lambda: BF16)
    mp.setattr(calibrate, "clock", speed.clock)
    mp.setattr(calibrate, "make_runner", speed.runners)
    mp.setattr(calibrate, "MIN_WORK", 10)  # the synthetic catalog counts as a job large enough to calibrate
    cfg = Config(data=str(synthetic_catalog), split="official", modalities="any", model="gmu",
                 text_encoder=str(tiny_bert), image_encoder=str(tiny_vit), pooling="mean", epochs=3, lr=3e-3,
                 cache_dir=str(root / "cache"), precision="auto").validate()
    try:
        run_experiment(cfg, run_dir=root / "run", log=None)
        enc = create_encoder(str(tiny_bert), modality="text", pooling="mean")
        cache = FeatureCache(enc, FeatureSpec(cache_root=root / "cache", precision="auto"))
    finally:
        mp.undo()
    return root / "run", cache, enc


def test_auto_on_a_bf16_cpu_round_trips_through_cache_training_saving_and_loading(auto_run, synthetic_catalog):
    run, cache, enc = auto_run
    # The cache keys the folder on the chosen precision, not on the word "auto".
    fp = enc.fingerprint()
    assert cache.precision == "bf16" and cache.dir.name.endswith(fingerprints.cache_key(fp, "bf16")[:16])
    assert cache.dir.name != f"{enc.name}-{fingerprints.cache_key(fp, 'fp32')[:16]}"
    assert list(cache.dir.glob("part-*.safetensors")), "the run's bf16 features are in that folder"
    meta = json.loads((run / "model" / "model.json").read_text())
    assert {r["precision"] for r in meta["encoders"].values()} == {"bf16"}
    # Loaded on a machine with another CPU, the model still encodes at the precision it was trained on.
    predictor = load_model(run / "model")
    assert predictor.precision == {"text": "bf16", "image": "bf16"}
    with safe_open(str(run / "test_predictions.safetensors"), "np") as f:
        stored, ids = f.get_tensor("probs"), json.loads(f.metadata()["ids"])
    by_id = {m.id: m for m in load_catalog(synthetic_catalog).movies}
    movies = [by_id[i] for i in ids]
    got = np.array([[r["probabilities"][g] for g in predictor.genres] for r in predictor.predict(
        [load_poster(m.poster) if m.poster else None for m in movies], [m.plot for m in movies])])
    assert np.abs(got - stored).max() <= 1e-5
