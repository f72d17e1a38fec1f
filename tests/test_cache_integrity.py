"""A damaged feature cache is never used: every shard carries checksums of its keys and tensors, and a shard that
fails any check (checksum, unreadable header, empty or truncated file, another encoder's shard, wrong feature size,
non-finite values, no checksum at all) is named in a warning, deleted, and its movies are encoded again, so the
table is bit-identical to a clean cache's."""
from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from genrefusion.data.loader import load_catalog
from genrefusion.encoders import create_encoder
from genrefusion.features.cache import FeatureCache, dataset_features
from genrefusion.features.spec import FeatureSpec
from genrefusion.features.shards import shard_checksums

from conftest import WORDS

N, BATCH = 40, 8  # shard_batches=1: five shards of eight movies


def _catalog(tmp_path: Path) -> Path:
    rng = random.Random(3)
    path = tmp_path / "movies.jsonl"
    path.write_text("\n".join(json.dumps({"id": str(i), "plot": " ".join(rng.choice(WORDS) for _ in range(
        rng.randint(2, 30))) + ".", "genres": ["Drama"]}) for i in range(N)))
    return path


def _features(ds, model, cache, **kw):
    features = FeatureSpec(cache_root=cache, batch_size=BATCH, shard_batches=1, progress=False)
    return dataset_features(ds, create_encoder(str(model), **kw.pop("enc", {})), features, **kw)


@pytest.fixture
def cached(tmp_path, tiny_bert):
    """(dataset, cache root, clean table, the cache's shards) after one clean extraction."""
    ds = load_catalog(_catalog(tmp_path))
    table = _features(ds, tiny_bert, tmp_path / "cache", sequences=True)
    shards = sorted((tmp_path / "cache").glob("features/*/part-*.safetensors"))
    assert table.encoded_now == N and len(shards) == N // BATCH
    return ds, tmp_path / "cache", table, shards


def _header(path: Path) -> tuple[bytearray, int, dict]:
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    return raw, n, json.loads(raw[8:8 + n])


def _flip(path: Path, tensor: str = "pooled", byte: int = 3, mask: int = 0x40) -> None:
    """Flip one bit of `tensor`'s data (default: the top exponent bit of its first float32)."""
    raw, n, header = _header(path)
    raw[8 + n + header[tensor]["data_offsets"][0] + byte] ^= mask
    path.write_bytes(bytes(raw))


def _rewrite(path: Path, change) -> None:
    """Rewrite a shard with `change(tensors, metadata)` applied and its checksums recomputed (a shard that is
    internally consistent but wrong in another way)."""
    with safe_open(str(path), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    change(tensors, meta)
    meta["sha256"] = shard_checksums(meta["keys"], tensors)
    save_file(tensors, str(path), metadata=meta)


def _reread(ds, cache, tiny_bert, caplog, **kw):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="genrefusion.features.cache"):
        return _features(ds, tiny_bert, cache, **kw)


def _garble_header(p: Path) -> None:
    raw = bytearray(p.read_bytes())
    raw[12:20] = b"\x00\xff{{]]\x01\x02"
    p.write_bytes(bytes(raw))


DAMAGE = {
    "flipped bit in the features": (lambda p: _flip(p), "checksum"),
    "flipped bit in the keys": (lambda p: _flip_key(p), "checksum"),
    "garbled header": (_garble_header, "unreadable"),
    "zero-byte file": (lambda p: p.write_bytes(b""), "unreadable"),
    "truncated file": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "unreadable"),
    "feature size differs from the encoder's": (
        lambda p: _rewrite(p, lambda t, m: t.update(pooled=torch.cat([t["pooled"], t["pooled"][:, :1]], 1))),
        "size"),
    "non-finite values": (lambda p: _rewrite(p, lambda t, m: t["pooled"].__setitem__((1, 2), float("nan"))),
                          "non-finite"),
    "no checksum (written before checksums)": (lambda p: _strip_checksums(p), "no checksum"),
}


def _flip_key(path: Path) -> None:
    """Change one hex digit of a content key inside the metadata: still valid JSON, still a plausible key."""
    raw, n, header = _header(path)
    keys = json.loads(header["__metadata__"]["keys"])
    at = raw.index(keys[0].encode(), 8, 8 + n)
    raw[at] = ord("0") if raw[at] != ord("0") else ord("1")
    path.write_bytes(bytes(raw))


def _strip_checksums(path: Path) -> None:
    """The shard as the release before checksums wrote it: keys, sequences, encoder, fingerprint; no sha256."""
    with safe_open(str(path), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    meta.pop("sha256", None)
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_shard_is_named_discarded_and_encoded_again(cached, tiny_bert, caplog, damage):
    ds, cache, clean, shards = cached
    corrupt, reason = DAMAGE[damage]
    bad = shards[2]
    corrupt(bad)
    table = _reread(ds, cache, tiny_bert, caplog, sequences=True)
    assert table.encoded_now == BATCH and table.repaired == 1  # that shard's movies, and only them
    assert torch.equal(table.pooled, clean.pooled)  # never the damaged values
    assert all(torch.equal(a, b) for a, b in zip(table.sequences, clean.sequences))
    warned = [r.getMessage() for r in caplog.records if bad.name in r.getMessage()]
    assert warned and reason in warned[0], caplog.text
    # the shard was written again, and the next run trusts it without a word
    again = _reread(ds, cache, tiny_bert, caplog, sequences=True)
    assert again.encoded_now == 0 and again.repaired == 0 and not caplog.records
    assert torch.equal(again.pooled, clean.pooled)


def test_a_shard_of_another_encoder_copied_in_is_not_used(cached, tiny_bert, tmp_path, caplog):
    ds, cache, clean, shards = cached
    # the same plots through the same weights with other pooling: same keys, same size, other values
    _features(ds, tiny_bert, tmp_path / "other", enc={"pooling": "mean"})
    other = FeatureCache(create_encoder(str(tiny_bert), pooling="mean"),
                         FeatureSpec(cache_root=tmp_path / "other")).dir  # not its companion
    foreign = sorted(other.glob("part-*.safetensors"))[0]
    copied = shards[0].parent / "part-0-copied.safetensors"  # sorts first: it would be read before the real ones
    shutil.copy(foreign, copied)
    table = _reread(ds, cache, tiny_bert, caplog)
    assert table.encoded_now == 0 and torch.equal(table.pooled, clean.pooled)
    assert "part-0-copied.safetensors" in caplog.text and "fingerprint" in caplog.text
    assert not copied.exists()


def test_a_flipped_bit_in_the_sequences_is_caught_when_they_are_read(cached, tiny_bert, caplog):
    ds, cache, clean, shards = cached
    _flip(shards[1], "sequence", byte=1, mask=0x40)  # an fp16 exponent bit
    pooled_only = _reread(ds, cache, tiny_bert, caplog)  # the sequences are not read, so not needed intact
    assert pooled_only.encoded_now == 0 and torch.equal(pooled_only.pooled, clean.pooled)
    table = _reread(ds, cache, tiny_bert, caplog, sequences=True)
    assert table.encoded_now == BATCH and shards[1].name in caplog.text and "checksum" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(table.sequences, clean.sequences))


@pytest.mark.parametrize("content", [b"{ not json", b'{"class": "SomethingElse"}', b""])
def test_a_damaged_or_foreign_encoder_json_is_named_and_rewritten(cached, tiny_bert, caplog, content):
    ds, cache, clean, shards = cached
    meta = shards[0].parent / "encoder.json"
    good = json.loads(meta.read_text())
    meta.write_bytes(content)
    table = _reread(ds, cache, tiny_bert, caplog)
    assert table.encoded_now == 0 and torch.equal(table.pooled, clean.pooled)  # every shard checks itself
    assert "encoder.json" in caplog.text
    assert json.loads(meta.read_text()) == good


def test_encoder_json_records_the_precision(tmp_path, tiny_bert):
    enc = create_encoder(str(tiny_bert))
    for precision in ("fp32", "bf16"):
        cache = FeatureCache(enc, FeatureSpec(cache_root=tmp_path, precision=precision))
        assert json.loads((cache.dir / "encoder.json").read_text()) == {**enc.fingerprint(), "precision": precision}


def test_non_finite_features_from_the_encoder_stop_the_run_and_write_nothing(tmp_path, tiny_bert):
    ds = load_catalog(_catalog(tmp_path))
    enc = create_encoder(str(tiny_bert))
    encode = enc.encode

    def overflowing(batch, return_sequence=False):  # what fp16 autocast overflowing looks like
        out = encode(batch, return_sequence)
        out.pooled[0, 0] = float("inf")
        return out

    enc.encode = overflowing
    with pytest.raises(ValueError, match=r"non-finite features .* precision fp32"):
        dataset_features(ds, enc, FeatureSpec(cache_root=tmp_path / "cache", batch_size=BATCH, progress=False))
    assert not list((tmp_path / "cache").glob("features/*/part-*.safetensors"))


def test_features_cli_repairs_a_damaged_cache_without_a_traceback(cached, tiny_bert):
    import subprocess
    import sys

    ds, cache, clean, shards = cached
    _garble_header(shards[0])
    args = ["features", "--data", str(ds.report.source), "--split", "stratified", "--text", str(tiny_bert),
            "--image", "", "--cache-dir", str(cache), "--batch-size", str(BATCH)]
    proc = subprocess.run([sys.executable, "-m", "genrefusion", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert shards[0].name in proc.stderr and "Traceback" not in proc.stderr
    assert "8 newly encoded" in proc.stdout
