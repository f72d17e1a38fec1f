"""The feature cache: warm runs return at once, batches are length-grouped, a killed run resumes to identical
features, and half-written files are never read."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from genrefusion.data.loader import load_catalog
from genrefusion.encoders import create_encoder
from genrefusion.features.cache import FeatureCache, dataset_features
from genrefusion.features.spec import FeatureSpec

from conftest import WORDS


def _plots(n: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) + "." for _ in range(n)]


def _catalog(tmp_path: Path, n: int) -> Path:
    import json

    path = tmp_path / "movies.jsonl"
    path.write_text("\n".join(json.dumps({"id": str(i), "plot": p, "genres": ["Drama"]})
                              for i, p in enumerate(_plots(n))))
    return path


def test_warm_cache_returns_at_once_with_identical_features(tmp_path, tiny_bert):
    ds = load_catalog(_catalog(tmp_path, 50))
    enc = create_encoder(str(tiny_bert))
    first = dataset_features(ds, enc, FeatureSpec(cache_root=tmp_path / "cache", progress=False))
    assert first.encoded_now == 50 and first.pooled.shape == (50, 32) and bool(first.present.all())
    second = dataset_features(ds, create_encoder(str(tiny_bert)), FeatureSpec(cache_root=tmp_path / "cache",
                                                                              progress=False))
    assert second.encoded_now == 0
    assert torch.equal(first.pooled, second.pooled)
    # a subset of the same movies is served from the same cache (content-addressed)
    sub = ds.subset(range(10))
    assert dataset_features(sub, enc, FeatureSpec(cache_root=tmp_path / "cache", progress=False)).encoded_now == 0
    # other preprocessing is another cache entry
    short = dataset_features(ds, create_encoder(str(tiny_bert), max_length=8),
                             FeatureSpec(cache_root=tmp_path / "cache", progress=False))
    assert short.encoded_now == 50 and not torch.equal(short.pooled, first.pooled)


def test_the_other_pooling_is_cached_in_the_same_pass_bit_for_bit(tmp_path, tiny_bert):
    """Encoding with CLS pooling fills the mean-pooling folder from the same forward pass (the thesis recipe, then
    the recommended one, encode each plot once), with exactly what a mean-pooling run of its own writes."""
    ds = load_catalog(_catalog(tmp_path, 40))
    cls_enc = create_encoder(str(tiny_bert), pooling="cls")
    calls = []
    forward = cls_enc.model.forward
    cls_enc.model.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    cls = dataset_features(ds, cls_enc, FeatureSpec(cache_root=tmp_path / "shared", batch_size=8, progress=False))
    assert cls.encoded_now == 40 and len(calls) == 5  # one forward per batch, for both poolings
    mean_enc = create_encoder(str(tiny_bert), pooling="mean")
    mean = dataset_features(ds, mean_enc, FeatureSpec(cache_root=tmp_path / "shared", batch_size=8, progress=False))
    assert mean.encoded_now == 0 and not torch.equal(mean.pooled, cls.pooled)
    alone = dataset_features(ds, create_encoder(str(tiny_bert), pooling="mean"),
                             FeatureSpec(cache_root=tmp_path / "alone", batch_size=8, progress=False))
    assert alone.encoded_now == 40 and torch.equal(alone.pooled, mean.pooled)
    assert alone.fingerprint == mean.fingerprint
    names = lambda root, enc: sorted(p.name for p in  # noqa: E731
                                     FeatureCache(enc, FeatureSpec(cache_root=root)).dir.glob("part-*"))
    assert names(tmp_path / "shared", mean_enc) == names(tmp_path / "alone", mean_enc)  # the same plan and shards
    # a subclass that replaces encode has no companions (the shared pass would bypass its encode)
    class Custom(type(cls_enc)):
        def encode(self, batch, return_sequence=False):
            return super().encode(batch, return_sequence)

    assert cls_enc.companions() and not Custom(str(tiny_bert)).companions()
    patched = create_encoder(str(tiny_bert))
    patched.encode = lambda batch, return_sequence=False: None
    assert not patched.companions()


def test_an_image_transformers_other_poolings_are_cached_in_the_same_pass(tmp_path, synthetic_catalog, tiny_vit):
    """A ViT's [CLS] run fills its mean and cls+mean folders too (one forward per batch), with what their own
    runs would write."""
    ds = load_catalog(synthetic_catalog)
    ds = ds.subset([i for i, m in enumerate(ds.movies) if m.poster is not None][:24])
    enc = create_encoder(str(tiny_vit))
    calls = []
    forward = enc.model.forward
    enc.model.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    spec = FeatureSpec(cache_root=tmp_path / "shared", batch_size=8, progress=False, backend="torch")
    cls = dataset_features(ds, enc, spec)
    assert cls.encoded_now == 24 and len(calls) == 3
    for pooling, dim in (("mean", 32), ("cls+mean", 64)):
        shared = dataset_features(ds, create_encoder(str(tiny_vit), pooling=pooling), spec)
        alone = dataset_features(ds, create_encoder(str(tiny_vit), pooling=pooling),
                                 FeatureSpec(cache_root=tmp_path / pooling, batch_size=8, progress=False,
                                             backend="torch"))
        assert shared.encoded_now == 0 and alone.encoded_now == 24 and shared.pooled.shape == (24, dim)
        assert torch.equal(shared.pooled, alone.pooled) and shared.fingerprint == alone.fingerprint
    assert torch.equal(dataset_features(ds, create_encoder(str(tiny_vit), pooling="cls+mean"), spec).pooled[:, :32],
                       cls.pooled)


def test_batches_are_grouped_by_length_and_padded_to_their_own_longest(tmp_path, tiny_bert):
    ds = load_catalog(_catalog(tmp_path, 64))
    enc = create_encoder(str(tiny_bert))
    widths, real = [], []
    orig = enc.preprocess

    def spy(items, train=False):
        out = orig(items, train)
        widths.append(out["input_ids"].shape[1])
        real.append(out["attention_mask"].sum(dim=1).tolist())
        return out

    enc.preprocess = spy
    # fp32 torch given: auto's calibration would preprocess a few batches of its own first
    dataset_features(ds, enc, FeatureSpec(cache_root=tmp_path / "cache", batch_size=8, progress=False,
                                          precision="fp32", backend="torch"))
    assert len(widths) == 8
    for w, lens in zip(widths, real):
        assert w == max(lens) < 64  # padded to the batch's longest, not to the model maximum
    assert widths == sorted(widths, reverse=True)  # longest first
    spread = [max(l) - min(l) for l in real]
    assert sum(spread) < 0.5 * (max(max(l) for l in real) - min(min(l) for l in real)) * len(real)


def test_sequences_are_stored_in_fp16_with_their_true_lengths(tmp_path, tiny_bert):
    ds = load_catalog(_catalog(tmp_path, 12))
    enc = create_encoder(str(tiny_bert))
    table = dataset_features(ds, enc, FeatureSpec(cache_root=tmp_path / "cache", progress=False), sequences=True)
    lengths = enc.token_lengths([m.plot for m in ds.movies])
    assert [s.shape[0] for s in table.sequences] == lengths
    assert all(s.dtype == torch.float16 and s.shape[1] == 32 for s in table.sequences)


def test_half_written_files_are_ignored_and_cleaned(tmp_path, tiny_bert):
    ds = load_catalog(_catalog(tmp_path, 20))
    enc = create_encoder(str(tiny_bert))
    cache = FeatureCache(enc, FeatureSpec(cache_root=tmp_path / "cache"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    junk = cache.dir / f".tmp-{host}-{dead.pid}-part-junk-00000.safetensors"
    junk.write_bytes(b"\x00garbage")  # what a writer killed mid-write leaves behind
    live = cache.dir / f".tmp-{host}-{os.getpid()}-part-other-00000.safetensors"
    live.write_bytes(b"\x00being written")  # another live process's file in progress
    table = dataset_features(ds, enc, FeatureSpec(cache_root=tmp_path / "cache", progress=False))
    assert table.encoded_now == 20 and not junk.exists() and live.exists()


# The writer dies by SIGKILL at a deterministic point: while writing the shard after KILL_AFTER complete ones, with
# that shard's temporary file half written (what a kill -9 or a power cut mid-write leaves behind).
_KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from genrefusion import atomic
    from genrefusion.features import shards
    from genrefusion.data.loader import load_catalog
    from genrefusion.encoders import create_encoder
    from genrefusion.features.cache import dataset_features
    from genrefusion.features.spec import FeatureSpec

    kill_after, write, written = int(sys.argv[4]), shards.write, []

    def write_then_die(target, *args, **kwargs):
        if len(written) == kill_after:
            atomic.tmp_path(target).write_bytes(b"\\x00half a shard")
            os.kill(os.getpid(), signal.SIGKILL)
        write(target, *args, **kwargs)
        written.append(target)

    shards.write = write_then_die
    ds = load_catalog(sys.argv[1])
    dataset_features(ds, create_encoder(sys.argv[2]),
                     FeatureSpec(cache_root=sys.argv[3], batch_size=2, shard_batches=1, progress=False,
                                 precision="fp32", backend="torch"))
""")
KILL_AFTER = 5  # writes: 3 of the companion, 2 of the encoder's own
# Bit-identity holds for one backend: auto's calibration could pick onnxruntime in the killed run's process.
TORCH_FP32 = {"precision": "fp32", "backend": "torch"}


def test_resume_after_kill_gives_identical_features(tmp_path, tiny_bert):
    catalog = _catalog(tmp_path, 120)
    ds = load_catalog(catalog)
    killed_cache = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(catalog), str(tiny_bert), str(killed_cache),
                           str(KILL_AFTER)], timeout=300)
    assert proc.returncode == -signal.SIGKILL, "the extraction finished before it could be killed"
    # each step writes the mean-pooling companion's shard, then the encoder's own (60 shards of 2 movies each)
    assert len(list(killed_cache.glob("features/*/part-*.safetensors"))) == KILL_AFTER
    enc = create_encoder(str(tiny_bert))
    done = len(list(FeatureCache(enc, FeatureSpec(cache_root=killed_cache)).dir.glob("part-*.safetensors")))
    assert done == KILL_AFTER // 2 and done >= 1
    assert len(list(killed_cache.glob("features/*/.tmp-*"))) == 1  # the shard it died writing

    unique = len({m.plot for m in ds.movies})  # identical plots share one cache entry
    resumed = dataset_features(ds, enc, FeatureSpec(cache_root=killed_cache, batch_size=2, shard_batches=1,
                                                    progress=False, **TORCH_FP32))
    assert resumed.encoded_now == unique - 2 * done  # only what the killed run had not finished
    assert not list(killed_cache.glob("features/*/.tmp-*"))  # the dead writer's half-written file is gone
    clean = dataset_features(ds, enc, FeatureSpec(cache_root=tmp_path / "clean", batch_size=2, shard_batches=1,
                                                  progress=False, **TORCH_FP32))
    assert clean.encoded_now == unique
    assert torch.equal(resumed.pooled, clean.pooled)  # bit-identical
    mean = create_encoder(str(tiny_bert), pooling="mean")  # the companion too, resumed along with it
    resumed_mean = dataset_features(ds, mean, FeatureSpec(cache_root=killed_cache, batch_size=2, shard_batches=1,
                                                          progress=False, **TORCH_FP32))
    clean_mean = dataset_features(ds, mean, FeatureSpec(cache_root=tmp_path / "clean", batch_size=2, shard_batches=1,
                                                        progress=False, **TORCH_FP32))
    assert resumed_mean.encoded_now == clean_mean.encoded_now == 0
    assert torch.equal(resumed_mean.pooled, clean_mean.pooled)


def test_features_cli_reports_and_second_run_encodes_nothing(tmp_path, tiny_bert, capsys):
    from genrefusion.cli.commands import main

    catalog = _catalog(tmp_path, 10)
    args = ["features", "--data", str(catalog), "--split", "stratified", "--text", str(tiny_bert), "--image", "",
            "--cache-dir", str(tmp_path / "c")]
    assert main(args) == 0
    assert "10 newly encoded" in capsys.readouterr().out
    assert main(args) == 0
    assert "0 newly encoded" in capsys.readouterr().out


# -- how features are made: one FeatureSpec -------------------------------------------------------------------------
def test_a_feature_spec_checks_its_settings_and_resolves_each_encoders_precision(tmp_path, monkeypatch, tiny_bert):
    from genrefusion.features.fingerprints import resolve_precision
    from genrefusion.paths import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert FeatureSpec().cache_root == tmp_path / "env"  # the default, worked out once, from paths.cache_root
    monkeypatch.setenv("HOME", str(tmp_path))
    assert FeatureSpec(cache_root="~/mine").cache_root == tmp_path / "mine"
    for bad in ({"precision": "int8"}, {"precisions": {"minilm-l6": "fp8"}}):
        with pytest.raises(ValueError, match="precision=.*expected one of \\('auto', 'fp32', 'bf16', 'fp16'\\)"):
            FeatureSpec(**bad)
    with pytest.raises(ValueError, match="feature backend must be one of"):
        FeatureSpec(backend="tensorrt")
    enc = create_encoder(str(tiny_bert))
    assert FeatureSpec(precision="bf16").precision_for(enc) == "bf16"
    assert FeatureSpec(precision="bf16", precisions={enc.name: "fp32"}).precision_for(enc) == "fp32"
    assert FeatureSpec().precision_for(enc) == resolve_precision("auto", "cpu", [enc.name])
    assert FeatureSpec().at_precision("fp16").precision_for(enc) == "fp16"


def test_offline_weights_are_built_under_the_features_cache_root(tmp_path, monkeypatch):
    """An encoder built by a FeatureSpec builds its offline weights (offline_weights.py) under the spec's cache
    root, the one its features go to."""
    from genrefusion.encoders import offline_weights

    roots = []

    def stop(root=None):
        roots.append(root)
        raise RuntimeError("built here")

    monkeypatch.setattr(offline_weights, "mpnet_base_path", stop)
    monkeypatch.setattr(offline_weights, "dinov2_vits14_path", stop)
    for name in ("mpnet-base", "dinov2-vits14"):
        with pytest.raises(RuntimeError, match="built here"):
            FeatureSpec(cache_root=tmp_path / "c").create_encoder(name)
    assert roots == [tmp_path / "c", tmp_path / "c"]
