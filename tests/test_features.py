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

from genrefusion.data import load_catalog
from genrefusion.encoders import create_encoder
from genrefusion.features import FeatureCache, dataset_features

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
    first = dataset_features(ds, enc, tmp_path / "cache", progress=False)
    assert first.encoded_now == 50 and first.pooled.shape == (50, 32) and bool(first.present.all())
    second = dataset_features(ds, create_encoder(str(tiny_bert)), tmp_path / "cache", progress=False)
    assert second.encoded_now == 0
    assert torch.equal(first.pooled, second.pooled)
    # a subset of the same movies is served from the same cache (content-addressed)
    sub = ds.subset(range(10))
    assert dataset_features(sub, enc, tmp_path / "cache", progress=False).encoded_now == 0
    # other preprocessing is another cache entry
    mean = dataset_features(ds, create_encoder(str(tiny_bert), pooling="mean"), tmp_path / "cache", progress=False)
    assert mean.encoded_now == 50 and not torch.equal(mean.pooled, first.pooled)


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
    dataset_features(ds, enc, tmp_path / "cache", batch_size=8, progress=False)
    assert len(widths) == 8
    for w, lens in zip(widths, real):
        assert w == max(lens) < 64  # padded to the batch's longest, not to the model maximum
    assert widths == sorted(widths, reverse=True)  # longest first
    spread = [max(l) - min(l) for l in real]
    assert sum(spread) < 0.5 * (max(max(l) for l in real) - min(min(l) for l in real)) * len(real)


def test_sequences_are_stored_in_fp16_with_their_true_lengths(tmp_path, tiny_bert):
    ds = load_catalog(_catalog(tmp_path, 12))
    enc = create_encoder(str(tiny_bert))
    table = dataset_features(ds, enc, tmp_path / "cache", sequences=True, progress=False)
    lengths = enc.token_lengths([m.plot for m in ds.movies])
    assert [s.shape[0] for s in table.sequences] == lengths
    assert all(s.dtype == torch.float16 and s.shape[1] == 32 for s in table.sequences)


def test_half_written_files_are_ignored_and_cleaned(tmp_path, tiny_bert):
    ds = load_catalog(_catalog(tmp_path, 20))
    enc = create_encoder(str(tiny_bert))
    cache = FeatureCache(enc, tmp_path / "cache")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    junk = cache.dir / f".tmp-{host}-{dead.pid}-part-junk-00000.safetensors"
    junk.write_bytes(b"\x00garbage")  # what a writer killed mid-write leaves behind
    live = cache.dir / f".tmp-{host}-{os.getpid()}-part-other-00000.safetensors"
    live.write_bytes(b"\x00being written")  # another live process's file in progress
    table = dataset_features(ds, enc, tmp_path / "cache", progress=False)
    assert table.encoded_now == 20 and not junk.exists() and live.exists()


# The writer dies by SIGKILL at a deterministic point: while writing the shard after KILL_AFTER complete ones, with
# that shard's temporary file half written (what a kill -9 or a power cut mid-write leaves behind).
_KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from genrefusion import atomic, shards
    from genrefusion.data import load_catalog
    from genrefusion.encoders import create_encoder
    from genrefusion.features import dataset_features

    kill_after, write, written = int(sys.argv[4]), shards.write, []

    def write_then_die(target, *args, **kwargs):
        if len(written) == kill_after:
            atomic.tmp_path(target).write_bytes(b"\\x00half a shard")
            os.kill(os.getpid(), signal.SIGKILL)
        write(target, *args, **kwargs)
        written.append(target)

    shards.write = write_then_die
    ds = load_catalog(sys.argv[1])
    dataset_features(ds, create_encoder(sys.argv[2]), sys.argv[3], batch_size=2, shard_batches=1, progress=False)
""")
KILL_AFTER = 3


def test_resume_after_kill_gives_identical_features(tmp_path, tiny_bert):
    catalog = _catalog(tmp_path, 120)
    ds = load_catalog(catalog)
    killed_cache = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(catalog), str(tiny_bert), str(killed_cache),
                           str(KILL_AFTER)], timeout=300)
    assert proc.returncode == -signal.SIGKILL, "the extraction finished before it could be killed"
    done = len(list(killed_cache.glob("features/*/part-*.safetensors")))
    assert done == KILL_AFTER and 3 <= done < 60  # 60 shards of 2 movies in all
    assert len(list(killed_cache.glob("features/*/.tmp-*"))) == 1  # the shard it died writing

    enc = create_encoder(str(tiny_bert))
    unique = len({m.plot for m in ds.movies})  # identical plots share one cache entry
    resumed = dataset_features(ds, enc, killed_cache, batch_size=2, shard_batches=1, progress=False)
    assert resumed.encoded_now == unique - 2 * done  # only what the killed run had not finished
    assert not list(killed_cache.glob("features/*/.tmp-*"))  # the dead writer's half-written file is gone
    clean = dataset_features(ds, enc, tmp_path / "clean", batch_size=2, shard_batches=1, progress=False)
    assert clean.encoded_now == unique
    assert torch.equal(resumed.pooled, clean.pooled)  # bit-identical


def test_features_cli_reports_and_second_run_encodes_nothing(tmp_path, tiny_bert, capsys):
    from genrefusion.cli import main

    catalog = _catalog(tmp_path, 10)
    args = ["features", "--data", str(catalog), "--split", "stratified", "--text", str(tiny_bert), "--image", "",
            "--cache-dir", str(tmp_path / "c")]
    assert main(args) == 0
    assert "10 newly encoded" in capsys.readouterr().out
    assert main(args) == 0
    assert "0 newly encoded" in capsys.readouterr().out
