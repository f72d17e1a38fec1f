"""One feature-cache shard on disk: written with checksums, checked before anything in it is used.

A shard is a safetensors file: `pooled` (N, D) float32, optionally `sequence` (sum L_i, D) float16 and `offsets`
(N + 1,) int64, and metadata: `keys` (the N content keys, JSON), `sequences` ("0"/"1"), `encoder`, `fingerprint`
(the identity hash of the encoder + precision that computed it) and `sha256`, a JSON object holding the SHA-256 of
the `keys` string and of each tensor (its dtype, shape and bytes).

Checks come in two steps, so that reading costs what is read:
* `inspect` reads the header only (what the cache's index needs for every shard on every run): the file parses,
  it carries checksums, it was computed by this encoder at this precision, its keys match their checksum, and the
  tensors have the shapes and dtypes the encoder implies.
* `read` loads tensors and verifies their checksums and that every value is finite, just before they are used.
A failure raises ShardError with the reason; the cache then deletes the shard and encodes its movies again.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from .. import atomic

DTYPES = {"pooled": "F32", "sequence": "F16", "offsets": "I64"}


class ShardError(Exception):
    """A shard that must not be used; str(e) says why."""


class UncheckedShard(ShardError):
    """A shard without checksums (written by a release before them): nothing in it can be verified."""


@dataclass(frozen=True)
class ShardHeader:
    keys: list[str]
    has_sequences: bool
    checksums: dict[str, str]


def all_finite(t: torch.Tensor) -> bool:
    """No NaN / inf in a float32 / float16 tensor. numpy's elementwise test: torch.isfinite takes ~50x longer on
    a shard's million values on a small CPU, which a warm run would pay for every shard."""
    return bool(np.isfinite(t.detach().cpu().numpy()).all())


def tensor_sha256(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def shard_checksums(keys_json: str, tensors: dict[str, torch.Tensor]) -> str:
    """The `sha256` metadata entry of a shard holding `tensors` and the key list `keys_json`."""
    sums = {"keys": hashlib.sha256(keys_json.encode()).hexdigest()}
    sums.update((name, tensor_sha256(t)) for name, t in tensors.items())
    return json.dumps(sums, sort_keys=True)


def write(path: Path, keys: list[str], tensors: dict[str, torch.Tensor], encoder: str, fingerprint: str) -> None:
    """Write a shard atomically, with its checksums."""
    keys_json = json.dumps(keys)
    meta = {"keys": keys_json, "sequences": str(int("sequence" in tensors)), "encoder": encoder,
            "fingerprint": fingerprint, "sha256": shard_checksums(keys_json, tensors)}
    atomic.save_safetensors(tensors, path, meta)


def inspect(path: Path, fingerprint: str, dim: int) -> ShardHeader:
    """Header-level checks (see the module docstring); FileNotFoundError when the shard is gone."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            layout = {n: (f.get_slice(n).get_shape(), f.get_slice(n).get_dtype()) for n in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own error type for a damaged header, truncated data, ...
        raise ShardError(f"unreadable ({e})") from None
    if "sha256" not in meta:
        raise UncheckedShard("no checksum")
    if meta.get("fingerprint") != fingerprint:
        raise ShardError(f"its fingerprint {str(meta.get('fingerprint'))[:16]}... is not this cache's "
                         f"{fingerprint[:16]}... (computed by another encoder or precision)")
    try:
        sums = json.loads(meta["sha256"])
        keys = json.loads(meta["keys"])
    except (KeyError, ValueError):
        raise ShardError("unreadable metadata") from None
    if not isinstance(sums, dict) or set(sums) != {"keys", *layout}:
        raise ShardError("its checksums do not cover its tensors")
    if hashlib.sha256(meta["keys"].encode()).hexdigest() != sums["keys"]:
        raise ShardError("the checksum of its keys does not match (the file is damaged)")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ShardError("its keys are not a list of strings")
    has_seq = meta.get("sequences") == "1"
    want = {"pooled": ([len(keys), dim], "F32")}
    if has_seq:
        want.update(offsets=([len(keys) + 1], "I64"))
    for name, (shape, dtype) in want.items():
        if name not in layout:
            raise ShardError(f"it has no '{name}' tensor")
        if layout[name] != (shape, dtype):
            got_shape, got_dtype = layout[name]
            what = (f"feature size {got_shape[-1]} differs from the encoder's {dim}"
                    if name == "pooled" and len(got_shape) == 2 and got_shape[0] == len(keys) else
                    f"'{name}' is {got_dtype} {got_shape}, expected {dtype} {shape}")
            raise ShardError(what)
    if has_seq and (layout.get("sequence", ([], ""))[0][1:] != [dim] or layout["sequence"][1] != "F16"):
        raise ShardError(f"its sequences are not F16 rows of size {dim}")
    return ShardHeader(keys, has_seq, sums)


def read(path: Path, header: ShardHeader, sequences: bool) -> dict[str, torch.Tensor]:
    """The shard's tensors (with the sequences when asked), checksums and finiteness verified."""
    names = ["pooled", "sequence", "offsets"] if sequences else ["pooled"]
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {n: f.get_tensor(n) for n in names}
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ShardError(f"unreadable ({e})") from None
    for name, t in tensors.items():
        if tensor_sha256(t) != header.checksums[name]:
            raise ShardError(f"the checksum of '{name}' does not match (the file is damaged)")
    for name in ("pooled", "sequence"):
        if name in tensors and not all_finite(tensors[name]):
            raise ShardError(f"'{name}' holds non-finite values")
    if sequences:
        off = tensors["offsets"]
        if int(off[0]) != 0 or int(off[-1]) != len(tensors["sequence"]) or bool((off[1:] < off[:-1]).any()):
            raise ShardError("its sequence offsets are inconsistent")
    return tensors
