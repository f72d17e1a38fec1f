"""Feature cache: encode every plot / poster once per encoder, reuse it across models, runs and subsets.

Layout: `<cache_dir>/features/<encoder-name>-<fingerprint[:16]>/` holds `encoder.json` (the full fingerprint) and
shards `part-<plan>-<n>.safetensors`. Each shard stores the pooled features (float32) of a group of items, their
content keys (sha256 of the plot text / poster bytes) in its metadata, and optionally the fp16 token / patch
sequences (flattened, with offsets). Items are content-addressed, so a subset of a dataset (`--modalities both`)
or another dataset with the same movies reuses what is there.

Crash safety: a shard is written to a temporary name in the same folder, fsynced and renamed into place, so a
reader sees either a complete shard or none; temporary files are never read. After kill -9 the next run loads the
completed shards and encodes only the rest. Batches are planned over the whole request (sorted by length, then
key) before anything is encoded, so a resumed run encodes exactly the batches an uninterrupted run would have, and
the features are bit-identical.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .data import Movie, MovieDataset

SHARD_BATCHES = 8  # batches per shard: bounds the work lost to a kill and the number of files


def default_cache_dir() -> Path:
    return Path(os.environ.get("GENREFUSION_CACHE") or Path.home() / ".cache" / "genrefusion")


@dataclass
class FeatureTable:
    """Features for a list of items in request order. `present[i]` is False where the movie lacks the modality."""

    pooled: torch.Tensor  # (N, D) float32, zeros where absent
    present: torch.Tensor  # (N,) bool
    sequences: list[torch.Tensor | None] | None = None  # per item (L_i, D) fp16, when requested
    encoder: str = ""
    fingerprint: str = ""

    @property
    def dim(self) -> int:
        return self.pooled.shape[1]


def _fingerprint_hash(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[-48:] or "encoder"


class FeatureCache:
    """The cache folder of one encoder (weights + preprocessing), see the module docstring."""

    def __init__(self, encoder, cache_dir: str | Path | None = None):
        self.encoder = encoder
        fp = encoder.fingerprint()
        self.fingerprint = _fingerprint_hash(fp)
        self.dir = Path(cache_dir or default_cache_dir()) / "features" / f"{_slug(encoder.name)}-{self.fingerprint[:16]}"
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "encoder.json"
        if not meta.exists():
            _atomic_write_bytes(meta, json.dumps(fp, indent=2, sort_keys=True, default=str).encode())

    # -- reading ---------------------------------------------------------------------------------------------
    def _index(self) -> dict[str, tuple[Path, int, bool]]:
        """key -> (shard, row, has_sequence) over every complete shard."""
        index: dict[str, tuple[Path, int, bool]] = {}
        for shard in sorted(self.dir.glob("part-*.safetensors")):
            with safe_open(str(shard), framework="pt") as f:
                meta = f.metadata() or {}
                keys = json.loads(meta["keys"])
                has_seq = meta.get("sequences") == "1"
            for row, key in enumerate(keys):
                # Prefer a shard that also holds sequences; otherwise the first one found (sorted: deterministic).
                if key not in index or (has_seq and not index[key][2]):
                    index[key] = (shard, row, has_seq)
        return index

    def missing(self, keys: Sequence[str], sequences: bool = False) -> list[str]:
        index = self._index()
        return [k for k in dict.fromkeys(keys) if k not in index or (sequences and not index[k][2])]

    def load(self, keys: Sequence[str | None], sequences: bool = False) -> FeatureTable:
        index = self._index()
        need = [k for k in keys if k is not None]
        absent = [k for k in need if k not in index or (sequences and not index[k][2])]
        if absent:
            raise KeyError(f"{len(absent)} item(s) are not in the feature cache {self.dir}; run extract() first")
        by_shard: dict[Path, list[str]] = {}
        for k in dict.fromkeys(need):
            by_shard.setdefault(index[k][0], []).append(k)
        pooled_of: dict[str, torch.Tensor] = {}
        seq_of: dict[str, torch.Tensor] = {}
        for shard, shard_keys in by_shard.items():
            with safe_open(str(shard), framework="pt") as f:
                pooled = f.get_tensor("pooled")
                if sequences:
                    flat, offsets = f.get_tensor("sequence"), f.get_tensor("offsets")
            for k in shard_keys:
                row = index[k][1]
                pooled_of[k] = pooled[row]
                if sequences:
                    seq_of[k] = flat[offsets[row]:offsets[row + 1]].clone()
        dim = self.encoder.dim
        out = torch.zeros(len(keys), dim, dtype=torch.float32)
        present = torch.zeros(len(keys), dtype=torch.bool)
        for i, k in enumerate(keys):
            if k is not None:
                out[i] = pooled_of[k]
                present[i] = True
        seqs = [seq_of.get(k) if k is not None else None for k in keys] if sequences else None
        return FeatureTable(out, present, seqs, self.encoder.name, self.fingerprint)

    # -- writing ---------------------------------------------------------------------------------------------
    def extract(self, keys: Sequence[str], load_item: Callable[[str], object], *, sequences: bool = False,
                batch_size: int = 32, lengths: Callable[[list], list[int]] | None = None,
                progress: bool = True, desc: str | None = None, shard_batches: int = SHARD_BATCHES) -> int:
        """Encode the items among `keys` that are not cached yet. `load_item(key)` returns the raw item (plot string
        or PIL image). `lengths(items)` (text) lets batches be grouped by length. Returns the number encoded.
        `shard_batches` batches go into one shard (the unit of work a kill can lose)."""
        if not self.missing(keys, sequences):
            return 0
        for stale in self.dir.glob(".tmp-*"):  # left by a killed writer; never read, safe to drop
            stale.unlink(missing_ok=True)
        # Plan over the WHOLE request, not just the missing part: a resumed run then meets the same shards and
        # batches as an uninterrupted one and skips those already written.
        todo = sorted(set(keys))
        items = {k: load_item(k) for k in todo} if lengths is not None else None
        if lengths is not None:
            lens = dict(zip(todo, lengths([items[k] for k in todo])))
            todo.sort(key=lambda k: (-lens[k], k))  # longest first: memory peaks early, padding stays minimal
        batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
        plan = hashlib.sha256(("\n".join(todo) + f"|{batch_size}|{int(sequences)}").encode()).hexdigest()[:12]
        shards = [batches[i:i + shard_batches] for i in range(0, len(batches), shard_batches)]
        still_missing = set(self.missing(todo, sequences))
        bar = tqdm(total=len(todo), desc=desc or f"encode {self.encoder.name}", unit="movie", disable=not progress,
                   dynamic_ncols=True)
        self.encoder.eval()
        try:
            for n, shard_batches in enumerate(shards):
                target = self.dir / f"part-{plan}-{n:05d}.safetensors"
                shard_keys_all = [k for b in shard_batches for k in b]
                if target.exists() or not still_missing.intersection(shard_keys_all):
                    bar.update(len(shard_keys_all))  # written by an earlier (interrupted) run
                    continue
                pooled, seqs, shard_keys = [], [], []
                for batch_keys in shard_batches:
                    raw = [items[k] for k in batch_keys] if items is not None else [load_item(k) for k in batch_keys]
                    with torch.inference_mode():
                        inputs = self.encoder.preprocess(raw)
                        inputs = {k: v.to(self.encoder.device) for k, v in inputs.items()}
                        out = self.encoder.encode(inputs, return_sequence=sequences)
                    pooled.append(out.pooled.float().cpu())
                    if sequences:
                        for row in range(len(batch_keys)):
                            seqs.append(out.sequence[row][out.mask[row]].to(torch.float16).cpu())
                    shard_keys.extend(batch_keys)
                    bar.update(len(batch_keys))
                tensors = {"pooled": torch.cat(pooled).contiguous()}
                if sequences:
                    tensors["sequence"] = torch.cat(seqs).contiguous()
                    tensors["offsets"] = torch.tensor(np.cumsum([0] + [len(s) for s in seqs]), dtype=torch.int64)
                _atomic_save(tensors, target, {"keys": json.dumps(shard_keys), "sequences": str(int(sequences)),
                                               "encoder": self.encoder.name, "fingerprint": self.fingerprint})
        finally:
            bar.close()
        return len(still_missing)


def _atomic_save(tensors: dict[str, torch.Tensor], target: Path, metadata: dict[str, str]) -> None:
    tmp = target.parent / f".tmp-{os.getpid()}-{target.name}"
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _atomic_write_bytes(target: Path, data: bytes) -> None:
    tmp = target.parent / f".tmp-{os.getpid()}-{target.name}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


# -- dataset-level helpers -------------------------------------------------------------------------------------
def modality_keys(movies: Sequence[Movie], modality: str) -> list[str | None]:
    if modality == "text":
        return [m.text_key for m in movies]
    if modality == "image":
        return [m.poster_sha256 for m in movies]
    raise ValueError(f"unknown modality {modality!r}")


def dataset_features(dataset: MovieDataset, encoder, cache_dir: str | Path | None = None, *,
                     sequences: bool = False, batch_size: int | None = None, progress: bool = True,
                     shard_batches: int = SHARD_BATCHES) -> FeatureTable:
    """Features of every movie in `dataset` for `encoder` (text or image), encoding what the cache lacks."""
    from .images import load_poster

    cache = FeatureCache(encoder, cache_dir)
    keys = modality_keys(dataset.movies, encoder.modality)
    source: dict[str, Movie] = {}
    for m, k in zip(dataset.movies, keys):
        if k is not None:
            source.setdefault(k, m)
    if encoder.modality == "text":
        load_item = lambda k: source[k].plot  # noqa: E731
        lengths = encoder.token_lengths
    else:
        load_item = lambda k: load_poster(source[k].poster)  # noqa: E731
        lengths = None
    t0 = time.perf_counter()
    n = cache.extract([k for k in keys if k is not None], load_item, sequences=sequences,
                      batch_size=batch_size or (32 if encoder.modality == "text" else 16), lengths=lengths,
                      progress=progress, shard_batches=shard_batches)
    table = cache.load(keys, sequences=sequences)
    table.encoded_now = n  # type: ignore[attr-defined]
    table.seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
    return table
