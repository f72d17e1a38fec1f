"""Calibration (features/calibrate.py): under auto on a CPU, the first run of an encoder times every candidate that
applies (torch fp32, torch bf16 where bf16 is native, onnxruntime fp32) on real items, refuses one whose features
disagree with fp32's or whose reduced precision lacks downstream-quality evidence, keeps the fastest that passes,
records the verdict atomically under a key of CPU, versions and encoder, and reuses it. A fake CPU probe and a fake
clock make the timings deterministic."""
from __future__ import annotations

import json

import pytest

from genrefusion import atomic
from genrefusion.cli.commands import main
from genrefusion.data.loader import load_catalog
from genrefusion.encoders import create_encoder
from genrefusion.features import calibrate, precision
from genrefusion.features.cache import dataset_features
from genrefusion.features.precision import CpuCapability
from genrefusion.features.spec import FeatureSpec

from calibration_helpers import FakeSpeed

AVX2 = CpuCapability(frozenset({"avx2"}), "AVX2", "fake AVX2")
BF16 = CpuCapability(frozenset({"avx2", "avx512f", "avx512_bf16"}), "AVX512", "fake AVX512-BF16")
REAL_CLOCK, REAL_RUNNERS = calibrate.clock, calibrate.make_runner  # before conftest's steady_calibration
PLOTS = ["A detective hunts a killer.", "Two friends start a band.", "A ship sinks in the cold sea at night."] * 6


@pytest.fixture
def encoder(tiny_bert):
    return create_encoder(str(tiny_bert), modality="text")


@pytest.fixture
def evidence(monkeypatch, tmp_path, encoder):
    """A shipped table whose downstream-quality evidence passes bf16 for the tiny encoder; no speed entries."""
    def write(verdict: str | None = "pass"):
        path = tmp_path / "cpu_precision.json"
        quality = {encoder.name: {"bf16": {"verdict": verdict}}} if verdict else {}
        path.write_text(json.dumps({"speed": [], "quality": quality}))
        monkeypatch.setattr(precision, "TABLE", path)
    write()
    return write


def _ensure(encoder, tmp_path, speed, cap=BF16, **kw):
    features = FeatureSpec(cache_root=tmp_path / "cache", progress=False)
    return calibrate.ensure(encoder, features, PLOTS, cap=cap, timer=speed.clock, runners=speed.runners, **kw)


def _choice(record):
    return record["choice"]["backend"], record["choice"]["precision"]


@pytest.mark.parametrize("cost, noise, verdict, cap, chosen", [
    ({"torch fp32": 1.0, "torch bf16": 0.4, "onnxruntime fp32": 0.6}, {"torch bf16": 1e-3}, "pass", BF16,
     ("torch", "bf16")),
    # no quality evidence for bf16: the next fastest that passes
    ({"torch fp32": 1.0, "torch bf16": 0.4, "onnxruntime fp32": 0.6}, {}, None, BF16, ("onnxruntime", "fp32")),
    # bf16 evidence fails downstream
    ({"torch fp32": 1.0, "torch bf16": 0.4, "onnxruntime fp32": 0.6}, {}, "fail", BF16, ("onnxruntime", "fp32")),
    # onnxruntime's features disagree, bf16 lacks evidence: fp32 torch
    ({"torch fp32": 1.0, "torch bf16": 0.4, "onnxruntime fp32": 0.5}, {"onnxruntime fp32": 0.5}, None, BF16,
     ("torch", "fp32")),
    # bf16's features disagree beyond its tolerance although its evidence passes
    ({"torch fp32": 1.0, "torch bf16": 0.3, "onnxruntime fp32": 0.8}, {"torch bf16": 0.5}, "pass", BF16,
     ("onnxruntime", "fp32")),
    # within MIN_GAIN of fp32: noise, so fp32 torch
    ({"torch fp32": 1.0, "torch bf16": 0.95, "onnxruntime fp32": 0.95}, {}, "pass", BF16, ("torch", "fp32")),
    # no native bf16: bf16 is not even a candidate
    ({"torch fp32": 1.0, "onnxruntime fp32": 0.5}, {}, "pass", AVX2, ("onnxruntime", "fp32")),
])
def test_calibration_keeps_the_fastest_candidate_that_passes(encoder, evidence, tmp_path, cost, noise, verdict, cap,
                                                              chosen):
    evidence(verdict)
    speed = FakeSpeed(cost, noise)
    record = _ensure(encoder, tmp_path, speed, cap=cap)
    assert _choice(record) == chosen
    assert {r["backend"] + " " + r["precision"] for r in record["candidates"]} == set(cost)
    assert record["why"].startswith(f"calibrated {encoder.name} on {cap.model}") and "\n" not in record["why"]
    by = {f"{r['backend']} {r['precision']}": r for r in record["candidates"]}
    assert by["torch fp32"]["speedup"] == 1.0 and by["torch fp32"]["min_cosine"] > 0.99999
    for label, c in cost.items():  # speed is the fake clock's: cost ratio
        assert by[label]["speedup"] == pytest.approx(cost["torch fp32"] / c, rel=1e-3)
    if noise.get("onnxruntime fp32", 0) >= 0.5:
        assert by["onnxruntime fp32"]["verdict"].startswith("features disagree with torch fp32")
    if cap is BF16 and verdict is None:
        assert by["torch bf16"]["verdict"] == "downstream quality not measured"


def test_the_record_is_reused_and_a_changed_key_measures_again(encoder, evidence, tmp_path, monkeypatch):
    cost = {"torch fp32": 1.0, "torch bf16": 0.4, "onnxruntime fp32": 0.6}
    first = FakeSpeed(cost)
    record = _ensure(encoder, tmp_path, first)
    path = calibrate.record_path(tmp_path / "cache", encoder, record["key"])
    assert path.exists() and json.loads(path.read_text()) == record
    again = FakeSpeed(cost)
    assert _ensure(encoder, tmp_path, again) == record and again.calls == {}  # reused: nothing ran
    other_cpu = CpuCapability(BF16.flags | {"amx_bf16"}, "AVX512", "fake Sapphire Rapids")
    moved = FakeSpeed(cost)
    assert _ensure(encoder, tmp_path, moved, cap=other_cpu)["key"] != record["key"] and moved.calls
    monkeypatch.setattr(calibrate, "_onnxruntime_version", lambda: "99.0")  # an upgraded onnxruntime
    upgraded = FakeSpeed({"torch fp32": 1.0, "torch bf16": 0.4, "onnxruntime fp32": 0.6})
    assert _ensure(encoder, tmp_path, upgraded)["key"] != record["key"] and upgraded.calls
    monkeypatch.undo()
    forced = FakeSpeed(cost)
    assert _ensure(encoder, tmp_path, forced, again=True)["key"] == record["key"] and forced.calls


def test_a_crash_halfway_leaves_no_partial_record(encoder, evidence, tmp_path):
    cost = {"torch fp32": 1.0, "torch bf16": 0.4, "onnxruntime fp32": 0.6}
    with pytest.raises(KeyboardInterrupt):
        _ensure(encoder, tmp_path, FakeSpeed(cost, fail_after=3))
    folder = tmp_path / "cache" / "calibration"
    assert not list(folder.glob("*.json")) and not list(folder.glob(atomic.TMP_PREFIX + "*"))
    assert calibrate.recorded(encoder, tmp_path / "cache", BF16) is None
    assert _choice(_ensure(encoder, tmp_path, FakeSpeed(cost))) == ("torch", "bf16")  # measured anew


@pytest.mark.parametrize("damage", ["{not json", json.dumps({"format": 1, "key": "another"}), "[]",
                                    json.dumps({"format": 1, "candidates": "x"})])
def test_a_damaged_or_foreign_record_is_deleted_and_measured_again(encoder, evidence, tmp_path, damage, caplog):
    cost = {"torch fp32": 1.0, "torch bf16": 0.4, "onnxruntime fp32": 0.6}
    record = _ensure(encoder, tmp_path, FakeSpeed(cost))
    path = calibrate.record_path(tmp_path / "cache", encoder, record["key"])
    path.write_text(damage)
    speed = FakeSpeed(cost)
    assert _ensure(encoder, tmp_path, speed)["key"] == record["key"] and speed.calls
    assert "is not used" in caplog.text and str(path) in caplog.text


def test_a_tampered_choice_is_not_trusted_beyond_its_measurements(encoder, evidence, tmp_path):
    """The choice is recomputed from the measured rows (calibrate.best), so editing "choice" changes nothing."""
    record = _ensure(encoder, tmp_path, FakeSpeed({"torch fp32": 1.0, "torch bf16": 1.0, "onnxruntime fp32": 1.0}))
    assert _choice(record) == ("torch", "fp32")
    assert calibrate.best(dict(record, choice={"backend": "onnxruntime", "precision": "bf16"})) == calibrate.REFERENCE


def test_auto_features_follow_the_record_and_explicit_settings_override_it(synthetic_catalog, tiny_bert, evidence,
                                                                           tmp_path, monkeypatch):
    ds = load_catalog(synthetic_catalog)
    speed = FakeSpeed({"torch fp32": 1.0, "torch bf16": 0.4, "onnxruntime fp32": 0.6}, {"torch bf16": 1e-3})
    monkeypatch.setattr(precision, "_probe", lambda: BF16)
    monkeypatch.setattr(calibrate, "clock", speed.clock)
    monkeypatch.setattr(calibrate, "make_runner", speed.runners)
    monkeypatch.setattr(calibrate, "MIN_WORK", 10)  # the 90-movie catalog counts as a large job here
    enc = create_encoder(str(tiny_bert), modality="text")

    def table(**kw):
        return dataset_features(ds, enc, FeatureSpec(cache_root=tmp_path / "cache", progress=False, batch_size=8,
                                                     **kw))

    auto = table()
    assert (auto.precision, auto.backend) == ("bf16", "torch") and speed.calls
    assert calibrate.recorded(enc, tmp_path / "cache") is not None
    fp32 = table(precision="fp32")  # an explicit precision: the fastest way at it (onnxruntime, x1.67)
    assert (fp32.precision, fp32.backend) == ("fp32", "onnxruntime") and fp32.encoded_now > 0
    assert table(precision="fp32", backend="torch").encoded_now == 0  # the same features, the same cache entry
    assert table(backend="torch").precision == "bf16"  # an explicit backend: the fastest torch candidate


def test_calibrate_command_measures_then_shows_the_record(synthetic_catalog, tiny_bert, evidence, tmp_path,
                                                          monkeypatch, capsys):
    speed = FakeSpeed({"torch fp32": 1.0, "torch bf16": 0.4, "onnxruntime fp32": 0.6}, {"torch bf16": 1e-3})
    monkeypatch.setattr(precision, "_probe", lambda: BF16)
    monkeypatch.setattr(calibrate, "clock", speed.clock)
    monkeypatch.setattr(calibrate, "make_runner", speed.runners)
    argv = ["calibrate", "--data", str(synthetic_catalog), "--encoders", str(tiny_bert), "--cache-dir",
            str(tmp_path / "cache")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "measured now" in out and "torch bf16" in out and "x2.50" in out
    speed.calls.clear()
    assert main(argv) == 0
    assert "recorded " in capsys.readouterr().out and speed.calls == {}
    assert main(argv + ["--again"]) == 0 and speed.calls
    assert main(["calibrate", "--data", str(synthetic_catalog), "--encoders", "no-such-encoder-xyz",
                 "--cache-dir", str(tmp_path / "cache")]) == 2


@pytest.mark.parametrize("which", ["text", "image"])
def test_real_candidates_are_timed_and_agree_with_fp32(which, tiny_bert, tiny_vit, tmp_path, evidence):
    """The real runners and clock on tiny encoders: every candidate runs, onnxruntime computes fp32's features,
    bf16 (emulated or native) stays close, and the record says so."""
    from PIL import Image

    encoder = create_encoder(str(tiny_bert if which == "text" else tiny_vit), modality=which)
    items = PLOTS if which == "text" else [Image.new("RGB", (60 + 9 * i, 90), (20 * i, 99, 180)) for i in range(10)]
    record = calibrate.measure(encoder, items, tmp_path / "cache", BF16, REAL_CLOCK, REAL_RUNNERS)
    by = {f"{r['backend']} {r['precision']}": r for r in record["candidates"]}
    assert set(by) == {"torch fp32", "torch bf16", "onnxruntime fp32"}
    assert all(r["items_per_s"] > 0 for r in by.values())
    assert by["onnxruntime fp32"]["min_cosine"] > 0.9999 and by["torch bf16"]["min_cosine"] > 0.99
    assert record["choice"] == {"backend": calibrate.best(record).backend, "precision": calibrate.best(record).precision}


def test_a_candidate_failing_after_the_warm_up_is_refused_not_fatal(encoder, evidence, tmp_path):
    speed = FakeSpeed({"torch fp32": 1.0, "torch bf16": 0.4, "onnxruntime fp32": 0.2})
    make = speed.runners

    def runners(candidate, enc, root):
        run = make(candidate, enc, root)
        if candidate.backend != "onnxruntime":
            return run
        calls = []

        def flaky(inputs):  # the warm-up batch passes, a later one fails
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("ORT: shape not supported")
            return run(inputs)
        return flaky

    features = FeatureSpec(cache_root=tmp_path / "cache", progress=False)
    record = calibrate.ensure(encoder, features, PLOTS, cap=BF16, timer=speed.clock, runners=runners)
    by = {f"{r['backend']} {r['precision']}": r for r in record["candidates"]}
    assert by["onnxruntime fp32"]["verdict"].startswith("could not run") and by["onnxruntime fp32"]["speedup"] == 0
    assert _choice(record) == ("torch", "bf16")


def test_a_record_measured_while_busy_is_measured_again_once_quiet(encoder, evidence, tmp_path, monkeypatch):
    cost = {"torch fp32": 1.0, "torch bf16": 0.4, "onnxruntime fp32": 0.6}
    monkeypatch.setattr(calibrate, "load", lambda: (9.0, 9.0, 9.0))  # far above the CPU count
    record = _ensure(encoder, tmp_path, FakeSpeed(cost))
    assert record["busy"] and "measured while busy" in record["why"]
    still_busy = FakeSpeed(cost)
    assert _ensure(encoder, tmp_path, still_busy) == record and still_busy.calls == {}  # used while still busy
    monkeypatch.setattr(calibrate, "load", lambda: (0.0, 0.0, 0.0))
    quiet = FakeSpeed(cost)
    again = _ensure(encoder, tmp_path, quiet)
    assert quiet.calls and not again["busy"] and "busy" not in again["why"]
    assert _ensure(encoder, tmp_path, FakeSpeed(cost)) == again


def test_the_poolings_of_one_model_share_one_record(tiny_bert, evidence, tmp_path):
    cls = create_encoder(str(tiny_bert), modality="text", pooling="cls")
    mean = create_encoder(str(tiny_bert), modality="text", pooling="mean")
    assert calibrate.record_key(cls, BF16) == calibrate.record_key(mean, BF16)
    cost = {"torch fp32": 1.0, "torch bf16": 0.4, "onnxruntime fp32": 0.6}
    _ensure(cls, tmp_path, FakeSpeed(cost))
    again = FakeSpeed(cost)
    _ensure(mean, tmp_path, again)
    assert again.calls == {}


def test_a_job_too_small_to_pay_for_the_measurement_is_not_calibrated(synthetic_catalog, tiny_bert, evidence,
                                                                      tmp_path, monkeypatch):
    ds = load_catalog(synthetic_catalog)
    speed = FakeSpeed({"torch fp32": 1.0, "torch bf16": 0.4, "onnxruntime fp32": 0.6})
    monkeypatch.setattr(calibrate, "clock", speed.clock)
    monkeypatch.setattr(calibrate, "make_runner", speed.runners)
    enc = create_encoder(str(tiny_bert), modality="text")
    features = FeatureSpec(cache_root=tmp_path / "cache", progress=False, batch_size=8)
    assert len(ds.movies) < calibrate.MIN_WORK
    table = dataset_features(ds, enc, features)
    assert speed.calls == {} and calibrate.recorded(enc, tmp_path / "cache") is None
    assert (table.precision, table.backend) == ("fp32", "torch")  # as without a record: the table, here empty
    assert calibrate.calibrate_on(ds, enc, features, min_work=0) is not None and speed.calls  # asked for: measured


def test_plots_are_timed_in_batches_sized_and_padded_like_the_jobs(tiny_bert):
    """The job's time goes mostly to its long plots, batched by length, and ONNX Runtime's lead over torch changes
    with both the length and the batch size. So the timed plots are distinct, longest first, one batch of the
    cache's size around each of TEXT_QUANTILES of the pool's cumulative token count."""
    from types import SimpleNamespace

    from genrefusion.data.modalities import spec

    enc = create_encoder(str(tiny_bert), modality="text")
    cap = enc.token_lengths(["word " * 10_000])[0]  # the tiny model's maximum length
    per_word = enc.token_lengths(["word " * 10])[0] - enc.token_lengths(["word " * 9])[0]
    plots = [f"{'word ' * (1 + k % ((cap - 8) // per_word))}w{k}" for k in range(calibrate.POOL)]
    movies = [SimpleNamespace(plot=p, text_key=p) for p in plots + plots[:5]]  # repeated plots count once
    picked = calibrate._sample(SimpleNamespace(movies=movies), enc)
    size = spec("text").cpu_batch_size
    assert len(picked) == len(set(picked)) == size * len(calibrate.TEXT_QUANTILES)
    lengths = enc.token_lengths(picked)
    assert lengths == sorted(lengths, reverse=True)
    pool = sorted(enc.token_lengths(plots), reverse=True)
    for q, batch in zip(calibrate.TEXT_QUANTILES, calibrate._batches(enc, picked)):
        at_q = next(n for i, n in enumerate(pool) if sum(pool[:i + 1]) >= q * sum(pool))
        assert len(batch["input_ids"]) == size
        assert min(enc.token_lengths(picked[:size] if q == calibrate.TEXT_QUANTILES[0] else picked[size:])) \
            <= at_q <= batch["input_ids"].shape[1]


def test_items_without_lengths_are_the_first_distinct_ones():
    """Posters (an encoder whose token_lengths is None) are timed on the first ITEMS distinct items."""
    from types import SimpleNamespace

    movies = [SimpleNamespace(plot=f"plot {i % 30}", text_key=f"k{i % 30}") for i in range(100)]
    enc = SimpleNamespace(modality="text", token_lengths=None)
    assert calibrate._sample(SimpleNamespace(movies=movies), enc) == [f"plot {i}" for i in range(calibrate.ITEMS)]
