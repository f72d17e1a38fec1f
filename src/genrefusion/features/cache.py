"""Feature cache: encode every plot / poster once per encoder, reuse it across models, runs and subsets.

Layout: `<cache root>/features/<encoder-name>-<fingerprint[:16]>/` holds `encoder.json` (the full fingerprint) and
shards `part-<plan>-<n>.safetensors`. Each shard stores the pooled features (float32) of a group of items, their
content keys (sha256 of the plot text / poster bytes) in its metadata, and optionally the fp16 token / patch
sequences (flattened, with offsets). Items are content-addressed, so a subset of a dataset (`--modalities both`)
or another dataset with the same movies reuses what is there.

Crash safety: a shard is written to a temporary name in the same folder, fsynced and renamed into place, so a
reader sees either a complete shard or none; temporary files are never read. After kill -9 the next run loads the
completed shards and encodes only the rest. Batches are planned over the whole request (sorted by length, then
key) before anything is encoded, so a resumed run encodes exactly the batches an uninterrupted run would have, and
the features are bit-identical.

Integrity (see shards.py): every shard carries SHA-256 checksums of its keys and tensors. Its header is checked
whenever the cache is indexed, its tensors (checksums, finite values) whenever they are read. A shard that fails
(a flipped bit, a damaged header, a zero-byte or truncated file, a shard of another encoder copied in, the wrong
feature size, NaN/inf) is named in a warning and deleted, and its movies are encoded again, so a run never reads a
damaged value. Shards written before checksums existed cannot be verified, so they are treated the same way: their
movies are encoded once more (bit-identical features, the plan being the same). encoder.json only documents the
folder (every shard names its own fingerprint); a damaged one is rewritten with a warning.

Companions (Encoder.companions: a text encoder's other pooling) are filled from the same forward pass, shard by
shard with this plan's names, so the second pooling costs no encoding. On a CPU the fp32 model may run in ONNX
Runtime instead of torch (feature_backends.py; the same features, the same cache folder).

On a GPU the encoder runs under bf16 autocast (fp16 where bf16 is missing; the precision is part of the cache key);
on a CPU `auto` picks per encoder what the measured evidence supports (precision.py: fp32 unless bf16 is native,
faster and keeps downstream quality). On a GPU worker processes decode / tokenise upcoming batches into pinned memory. Under torchrun the ranks split the
shards of that same plan and write them into the one cache folder; then every rank reads the whole table.

How features are made (the cache root, the precision, the backend, batch size, workers, progress) is one value,
a `FeatureSpec` (spec.py), given to `dataset_features` and `FeatureCache`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import atomic, distributed
from . import backends as feature_backends
from . import calibrate
from . import fingerprints
from . import shards as shard_io
from ..atomic import remove_stale_tmp
from ..data.loader import Movie, MovieDataset
from .fingerprints import PRECISIONS, resolve_precision  # noqa: F401  (public here since before fingerprints.py)
from ..data.modalities import spec
from ..paths import encoder_folder
from .prefetch import prefetched_inputs
from .spec import SHARD_BATCHES, FeatureSpec  # noqa: F401  (SHARD_BATCHES: public here since before spec.py)

REPAIR_ATTEMPTS = 3  # extract + load rounds before a cache whose fresh shards still fail is reported as broken
logger = logging.getLogger(__name__)


@dataclass
class FeatureTable:
    """Features for a list of items in request order. `present[i]` is False where the movie lacks the modality."""

    pooled: torch.Tensor  # (N, D) float32, zeros where absent
    present: torch.Tensor  # (N,) bool
    sequences: list[torch.Tensor | None] | None = None  # per item (L_i, D) fp16, when requested
    encoder: str = ""
    fingerprint: str = ""  # fingerprints.identity_sha256 of the encoder's fingerprint and the precision
    precision: str = "fp32"  # the autocast the features were computed under
    encoder_fingerprint: dict | None = None  # the encoder's full fingerprint()
    # What producing the table took (dataset_features): items encoded by this call (the rest came from the cache),
    # its wall time, and how many damaged shards were discarded and their items encoded again.
    encoded_now: int = 0
    seconds: float = 0.0
    repaired: int = 0
    backend: str | None = None  # what encoded the `encoded_now` items (feature_backends.py); None: none were

    @property
    def dim(self) -> int:
        return self.pooled.shape[1]


def join_tables(encoder, tables: Sequence[FeatureTable]) -> FeatureTable:
    """The table of an encoder joined from parts (Encoder.feature_parts), from each part's table: its `join` of
    the parts' pooled vectors. A movie has the modality only where every part has it (the parts read the same
    file, so they agree unless one failed on it)."""
    precision = {t.precision for t in tables}
    if len(precision) != 1:
        raise ValueError(f"encoder {encoder.name!r}: its parts' features were computed at different precisions "
                         f"{precision}")
    present = tables[0].present.clone()
    for t in tables[1:]:
        present &= t.present
    pooled = encoder.join([t.pooled for t in tables]) * present[:, None]  # zeros where absent, as elsewhere
    p, fingerprint = precision.pop(), encoder.fingerprint()
    return FeatureTable(pooled, present, None, encoder.name, fingerprints.identity_sha256(fingerprint, p), p,
                        fingerprint, encoded_now=sum(t.encoded_now for t in tables),
                        seconds=sum(t.seconds for t in tables), repaired=sum(t.repaired for t in tables),
                        backend="+".join(dict.fromkeys(t.backend for t in tables if t.backend)) or None)


class FeatureCache:
    """The cache folder of one encoder (weights + preprocessing) at one precision, see the module docstring.
    `features` (default: FeatureSpec()) says where the cache is, the precision (resolved here, once) and how
    extract() encodes."""

    def __init__(self, encoder, features: FeatureSpec | None = None):
        self.encoder = encoder
        self.features = FeatureSpec() if features is None else features
        self.backend: str | None = None  # what the last extract() encoded with (None: nothing was encoded)
        self.precision = self.features.precision_for(encoder)  # an encoder outside torch: its own
        fp = encoder.fingerprint()
        self.encoder_fingerprint = fp
        # Shards name the identity hash; the folder keeps the key of earlier releases (fp32 without precision).
        self.fingerprint = fingerprints.identity_sha256(fp, self.precision)
        key = fingerprints.cache_key(fp, self.precision)
        self.dir = encoder_folder(self.features.cache_root, "features", encoder.name, key)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.discarded: list[tuple[Path, str]] = []  # shards found damaged and deleted, with the reason
        self._check_encoder_json(fp)

    def _check_encoder_json(self, fp: dict) -> None:
        """encoder.json documents the folder (each shard names its own fingerprint, so none is trusted on this
        file's word): a missing one is written, a damaged or foreign one is rewritten with a warning."""
        path = self.dir / "encoder.json"
        text = json.dumps(fingerprints.identity(fp, self.precision), indent=2, sort_keys=True, default=str)
        want = json.loads(text)  # as it reads back (tuples become lists)
        problem = None
        try:
            got = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            got = None
        except (OSError, ValueError) as e:  # not UTF-8 / not JSON (an empty file included)
            got, problem = None, f"unreadable ({e})"
        else:
            if got == want:
                return
            # The release before wrote an fp32 folder's file without the precision: upgraded without a word.
            if not (self.precision == "fp32" and isinstance(got, dict) and {**got, "precision": "fp32"} == want):
                fields = fingerprints.differences(got, want) if isinstance(got, dict) else ["its type"]
                problem = f"describes another encoder (it differs in {', '.join(fields)})"
        if problem:
            logger.warning("feature cache: %s %s; rewritten", path, problem)
        atomic.write_text(path, text)

    # -- reading ---------------------------------------------------------------------------------------------
    def _discard(self, shard: Path, reason: str, n_items: int | None = None) -> None:
        what = f"its {n_items} item(s) will be encoded again" if n_items else "its items will be encoded again"
        logger.warning("feature cache: discarding shard %s: %s; %s", shard, reason, what)
        self.discarded.append((shard, reason))
        shard.unlink(missing_ok=True)

    def _index(self) -> dict[str, tuple[Path, int, bool]]:
        """key -> (shard, row, has_sequence) over every complete shard whose header checks out (shard_io.inspect);
        the others are discarded."""
        index: dict[str, tuple[Path, int, bool]] = {}
        unchecked: list[Path] = []
        for shard in sorted(self.dir.glob("part-*.safetensors")):
            try:
                header = shard_io.inspect(shard, self.fingerprint, self.encoder.dim)
            except FileNotFoundError:  # discarded meanwhile by another process sharing the cache
                continue
            except shard_io.UncheckedShard:
                unchecked.append(shard)
                continue
            except shard_io.ShardError as e:
                self._discard(shard, str(e))
                continue
            for row, key in enumerate(header.keys):
                # Prefer a shard that also holds sequences; otherwise the first one found (sorted: deterministic).
                if key not in index or (header.has_sequences and not index[key][2]):
                    index[key] = (shard, row, header.has_sequences)
        if unchecked:  # one warning for them all: a cache of an earlier release has many
            names = ", ".join(p.name for p in unchecked[:3])
            names += f" and {len(unchecked) - 3} more" if len(unchecked) > 3 else ""
            logger.warning("feature cache %s: %d shard(s) carry no checksum (written before shard checksums "
                           "existed), so they cannot be verified; deleted, their items are encoded once more "
                           "(%s)", self.dir, len(unchecked), names)
            for shard in unchecked:
                self.discarded.append((shard, "no checksum"))
                shard.unlink(missing_ok=True)
        return index

    def missing(self, keys: Sequence[str], sequences: bool = False) -> list[str]:
        index = self._index()
        return [k for k in dict.fromkeys(keys) if k not in index or (sequences and not index[k][2])]

    def load(self, keys: Sequence[str | None], sequences: bool = False) -> FeatureTable:
        """The table of `keys` (None: the movie lacks the modality). KeyError when some are not cached, and
        DamagedShards (a KeyError) when shards failed their checks while being read: they are discarded and
        extract() encodes their items again."""
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
        damaged = 0
        for shard, shard_keys in by_shard.items():
            try:  # the header again: the shard may have been replaced since the index was built
                header = shard_io.inspect(shard, self.fingerprint, self.encoder.dim)
                t = shard_io.read(shard, header, sequences)
            except FileNotFoundError:  # discarded by another process meanwhile
                damaged += 1
                continue
            except shard_io.ShardError as e:
                self._discard(shard, str(e), len(shard_keys))
                damaged += 1
                continue
            row_of = {k: i for i, k in enumerate(header.keys)}
            if not row_of.keys() >= set(shard_keys):  # replaced by another process with other items: index again
                damaged += 1
                continue
            for k in shard_keys:
                row = row_of[k]
                pooled_of[k] = t["pooled"][row]
                if sequences:
                    seq_of[k] = t["sequence"][t["offsets"][row]:t["offsets"][row + 1]].clone()
        if damaged:
            raise DamagedShards(f"{damaged} shard(s) of the feature cache {self.dir} failed their checks and were "
                                "discarded (named in the warnings); run extract() again")
        dim = self.encoder.dim
        out = torch.zeros(len(keys), dim, dtype=torch.float32)
        present = torch.zeros(len(keys), dtype=torch.bool)
        for i, k in enumerate(keys):
            if k is not None:
                out[i] = pooled_of[k]
                present[i] = True
        seqs = [seq_of.get(k) if k is not None else None for k in keys] if sequences else None
        return FeatureTable(out, present, seqs, self.encoder.name, self.fingerprint, self.precision,
                            self.encoder_fingerprint)

    # -- writing ---------------------------------------------------------------------------------------------
    def extract(self, keys: Sequence[str], load_item: Callable[[str], object], *, sequences: bool = False,
                lengths: Callable[[list], list[int]] | None = None, desc: str | None = None) -> int:
        """Encode the items among `keys` that are not cached yet. `load_item(key)` returns the raw item (plot string
        or PIL image). `lengths(items)` (text) lets batches be grouped by length. Returns the number encoded.
        How (self.features): `batch_size` items per batch (default: by modality and device), `shard_batches`
        batches per shard (the unit of work a kill can lose), `num_workers` processes that decode and preprocess
        upcoming batches while the GPU encodes (default: none on CPU, where the output is the same either way, up
        to 12 on a GPU), `backend` what runs the encoder (backends.py: auto, torch, onnxruntime; the one used is
        left in `self.backend`), `progress` a progress bar.

        Under torchrun every rank calls this with the same keys; rank r encodes the shards n with
        n % world_size == r of the shared plan, and on every rank the call returns once all ranks have written
        their shards, with the total number encoded."""
        return distributed.all_reduce_sum(  # also the barrier after which every rank can read every shard
            self._extract_local(keys, load_item, sequences, lengths, desc))

    def _check_finite(self, tensors: dict[str, torch.Tensor], keys: list[str]) -> None:
        """Refuse to cache NaN / inf (fp16 autocast overflowing, a broken checkpoint): training on it would make
        every later number NaN, and encoding again would give the same values."""
        if all(shard_io.all_finite(t) for n, t in tensors.items() if n != "offsets"):
            return
        bad = ~torch.isfinite(tensors["pooled"]).all(dim=1)
        if "sequence" in tensors:
            off = tensors["offsets"]
            finite = torch.isfinite(tensors["sequence"]).all(dim=1)
            bad |= torch.tensor([not bool(finite[off[i]:off[i + 1]].all()) for i in range(len(keys))])
        if bool(bad.any()):
            first = keys[int(bad.nonzero()[0])]
            hint = "; fp16 overflows easily, try precision bf16 or fp32" if self.precision == "fp16" else ""
            raise ValueError(f"encoder {self.encoder.name!r} produced non-finite features (NaN or inf) for "
                             f"{int(bad.sum())} item(s) under precision {self.precision} (first: key {first}); "
                             f"nothing of them was cached{hint}")

    def _extract_local(self, keys, load_item, sequences: bool, lengths, desc: str | None) -> int:
        """This rank's part of extract(): plan, find the shards still to write, encode and write them."""
        still_missing = set(self.missing(keys, sequences))
        if not still_missing:
            return 0
        remove_stale_tmp(self.dir)
        batch_size = self.features.batch_size or default_batch_size(self.encoder.modality, self.encoder.device)
        plan = _plan(keys, load_item, lengths, batch_size, sequences, self.features.shard_batches)
        world, rank = distributed.world_size(), distributed.rank()
        mine = [(n, shard) for n, shard in enumerate(plan.shards) if n % world == rank]
        companions = self._companions(plan.keys, sequences)
        work, done = self._work(plan, mine, still_missing, companions)
        # the backend first: one that cannot run (or a graph that disagrees) stops before any output
        run = self._runner(companions, sequences) if work else None
        bar = tqdm(total=sum(len(b) for _, shard in mine for b in shard), initial=done, unit="movie",
                   dynamic_ncols=True, disable=not self.features.progress or rank != 0,
                   desc=(desc or f"encode {self.encoder.name}") + (f" [rank {rank}/{world}]" if world > 1 else ""))
        raw = (lambda k: plan.items[k]) if plan.items is not None else load_item  # noqa: E731
        inputs_of = prefetched_inputs(self.encoder, [b for _, shard in work for b in shard], raw,
                                       self.features.num_workers)
        encoded = 0
        self.encoder.eval()
        try:
            for target, shard in work:
                tensors, also, shard_keys = self._encode_shard(shard, inputs_of, run, sequences, len(companions), bar)
                encoded += self._write_shard(target, shard, tensors, also, shard_keys, companions, still_missing)
        finally:
            inputs_of.close()
            bar.close()
        return encoded

    def _work(self, plan: "_Plan", mine: list[tuple[int, list[list[str]]]], still_missing: set[str],
              companions: list[tuple["FeatureCache", set[str]]]) -> tuple[list[tuple[Path, list[list[str]]]], int]:
        """(shard file, batches) of each of this rank's shards still to be written, for this cache or a companion,
        and how many items the others hold (written by an earlier, interrupted run)."""
        work, done = [], 0
        for n, shard in mine:
            target = self.dir / f"part-{plan.name}-{n:05d}.safetensors"
            if (_needs(target, still_missing, shard)
                    or any(_needs(c.dir / target.name, lacks, shard) for c, lacks in companions)):
                work.append((target, shard))
            else:
                done += sum(len(b) for b in shard)
        return work, done

    def _runner(self, companions: list[tuple["FeatureCache", set[str]]], sequences: bool):
        """What encodes a batch into (pooled, companions' pooled): the chosen backend's runner, or None for the
        encoder's own encode (sequences always come from torch). Sets self.backend."""
        backend = self.features.backend
        record = calibrate.recorded(self.encoder, self.features.cache_root) if backend == "auto" else None
        calibrated = calibrate.best(record, precision=self.precision).backend if record else None
        resolved = feature_backends.resolve_backend(backend, self.encoder, self.precision, sequences, calibrated)
        if sequences:
            self.backend = "torch"
            return None
        self.backend, run = feature_backends.runner(resolved, self.encoder, tuple(c.encoder for c, _ in companions),
                                                    self.features.cache_root, explicit=backend == "onnxruntime")
        return run

    def _encode_shard(self, shard: list[list[str]], inputs_of: Iterator[dict], run, sequences: bool,
                      n_companions: int, bar) -> tuple[dict[str, torch.Tensor], list[list[torch.Tensor]], list[str]]:
        """One shard's batches through the encoder: its tensors (pooled; with sequences, the fp16 token / patch
        rows and their offsets), each companion's pooled batches, and its keys in order."""
        device = self.encoder.device
        pooled, seqs, shard_keys = [], [], []
        also: list[list[torch.Tensor]] = [[] for _ in range(n_companions)]
        for batch_keys in shard:
            inputs = next(inputs_of)
            with torch.inference_mode(), fingerprints.autocast(device, self.precision):
                inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
                if run is None:
                    out = self.encoder.encode(inputs, return_sequence=sequences)
                    batch_pooled, others = out.pooled, []
                else:
                    batch_pooled, others = run(inputs)
            pooled.append(batch_pooled.float().cpu())
            for acc, o in zip(also, others):
                acc.append(o.float().cpu())
            if sequences:  # one device-to-host copy per batch, then per-row slicing on the CPU
                seq, mask = out.sequence.to(torch.float16).cpu(), out.mask.cpu()
                seqs.extend(seq[row][mask[row]] for row in range(len(batch_keys)))
            shard_keys.extend(batch_keys)
            bar.update(len(batch_keys))
        tensors = {"pooled": torch.cat(pooled).contiguous()}
        if sequences:
            tensors["sequence"] = torch.cat(seqs).contiguous()
            tensors["offsets"] = torch.tensor(np.cumsum([0] + [len(s) for s in seqs]), dtype=torch.int64)
        return tensors, also, shard_keys

    def _write_shard(self, target: Path, shard: list[list[str]], tensors: dict[str, torch.Tensor],
                     also: list[list[torch.Tensor]], shard_keys: list[str],
                     companions: list[tuple["FeatureCache", set[str]]], still_missing: set[str]) -> int:
        """Write an encoded shard into this cache and each companion that lacks it; how many of its items this
        cache lacked."""
        self._check_finite(tensors, shard_keys)
        for (c, lacks), acc in zip(companions, also):  # first: a kill before this one's shard repeats it
            if _needs(c.dir / target.name, lacks, shard):
                c_tensors = {"pooled": torch.cat(acc).contiguous()}
                c._check_finite(c_tensors, shard_keys)
                shard_io.write(c.dir / target.name, shard_keys, c_tensors, c.encoder.name, c.fingerprint)
        if _needs(target, still_missing, shard):
            shard_io.write(target, shard_keys, tensors, self.encoder.name, self.fingerprint)
        return len(still_missing.intersection(shard_keys))

    def _companions(self, keys: Sequence[str], sequences: bool) -> list[tuple["FeatureCache", set[str]]]:
        """(cache, keys it lacks) of each of the encoder's companions (Encoder.companions) that lacks some of
        `keys`, at this cache's precision: this pass fills them too. Not when sequences are asked for (those are
        this encoder's alone). Their shards carry this plan's names and batches, so they hold exactly what the
        companion's own run would have written, and a resumed run finds them as an uninterrupted one would."""
        if sequences:
            return []
        out = []
        for c in self.encoder.companions():
            cache = FeatureCache(c, self.features.at_precision(self.precision))
            lacks = set(cache.missing(keys))
            if lacks:
                remove_stale_tmp(cache.dir)
                out.append((cache, lacks))
        return out


@dataclass
class _Plan:
    """How one extraction request is encoded: planned over the WHOLE request, not just its missing part, so that
    a resumed run meets the same shards and batches as an uninterrupted one and skips those already written.
    Every rank computes the same plan."""

    keys: list[str]  # every key of the request once, in encoding order
    shards: list[list[list[str]]]  # shard n: its batches of keys
    name: str  # names the shard files: a hash of the keys, the batch size and whether sequences are kept
    items: dict[str, object] | None  # the raw items, when they were loaded to sort by length


def _plan(keys: Sequence[str], load_item: Callable[[str], object], lengths: Callable[[list], list[int]] | None,
          batch_size: int, sequences: bool, shard_batches: int) -> _Plan:
    todo = sorted(set(keys))
    items = {k: load_item(k) for k in todo} if lengths is not None else None
    if lengths is not None:
        lens = dict(zip(todo, lengths([items[k] for k in todo])))
        todo.sort(key=lambda k: (-lens[k], k))  # longest first: memory peaks early, padding stays minimal
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    name = hashlib.sha256(("\n".join(todo) + f"|{batch_size}|{int(sequences)}").encode()).hexdigest()[:12]
    return _Plan(todo, [batches[i:i + shard_batches] for i in range(0, len(batches), shard_batches)], name, items)


def _needs(target: Path, lacks: set[str], shard: list[list[str]]) -> bool:
    """Whether shard file `target` still has to be written: it is not there and its cache lacks some of its items."""
    return not target.exists() and bool(lacks.intersection(k for b in shard for k in b))


class DamagedShards(KeyError):
    """Raised by FeatureCache.load after it discarded shards that failed their checks."""

    def __str__(self) -> str:  # KeyError's str() would quote the message
        return str(self.args[0])


# -- dataset-level helpers -------------------------------------------------------------------------------------
def modality_keys(movies: Sequence[Movie], modality: str) -> list[str | None]:
    """Each movie's cache key for `modality` (None where the movie lacks it)."""
    return [spec(modality).key(m) for m in movies]


def default_batch_size(modality: str, device: torch.device | str) -> int:
    """Small batches on the CPU (no gain from larger ones), large ones to keep a GPU busy."""
    if torch.device(device).type == "cuda":
        return 128
    return spec(modality).cpu_batch_size


def dataset_features(dataset: MovieDataset, encoder, features: FeatureSpec | None = None, *,
                     sequences: bool = False) -> FeatureTable:
    """Features of every movie in `dataset` for `encoder` (text or image), encoding what the cache lacks.

    The encoder runs where it is (`encoder.to(device)` first, or built by features.create_encoder). `features`
    (default: FeatureSpec()) says how: the cache root, the precision (the autocast used while encoding: auto is
    bf16 on a GPU, on the CPU precision.choose; resolved once per encoder), the backend that runs the encoder
    (backends.py; the features are the same either way), batch size, workers, progress. An encoder joined from
    parts (`encoder.feature_parts()`, e.g. "a+b") is cached part by part and its table joined from theirs. Under
    torchrun the ranks share the work (see FeatureCache.extract) and every rank gets the whole table."""
    features = FeatureSpec() if features is None else features
    parts = encoder.feature_parts()
    if parts:  # each part through its own cache folder, then joined
        if sequences:
            raise ValueError(f"encoder {encoder.name!r} concatenates pooled vectors only; sequences need one encoder")
        # One precision for all parts (their tables are joined): auto resolves over every part's evidence.
        for part in parts:
            calibrate.calibrate_on(dataset, part, features)
        pinned = features.at_precision(features.precision_for(encoder))
        return join_tables(encoder, [dataset_features(dataset, part, pinned) for part in parts])
    calibrate.calibrate_on(dataset, encoder, features)  # before the cache: it may decide the precision
    modality = spec(encoder.modality)
    cache = FeatureCache(encoder, features)
    keys = modality_keys(dataset.movies, modality.name)
    source: dict[str, Movie] = {}
    for m, k in zip(dataset.movies, keys):
        if k is not None:
            source.setdefault(k, m)
    load_item = lambda k: modality.load_raw(source[k])  # noqa: E731
    # An encoder that can tell its items' lengths (text: tokens) gets batches grouped by length.
    lengths = encoder.token_lengths
    t0 = time.perf_counter()
    n = 0
    for _ in range(REPAIR_ATTEMPTS):
        # Shards whose data fail their checksums are found only when read: load discards them, and the next
        # extract encodes their items again. Every rank takes the same number of rounds (extract is collective).
        n += cache.extract([k for k in keys if k is not None], load_item, sequences=sequences, lengths=lengths)
        try:
            table, damaged = cache.load(keys, sequences=sequences), 0
        except DamagedShards:
            table, damaged = None, 1
        if not distributed.all_reduce_sum(damaged):
            break
    else:
        reasons = sorted({r for _, r in cache.discarded})
        raise ValueError(f"feature cache {cache.dir}: freshly written shards keep failing their checks "
                         f"({'; '.join(reasons)}); the disk or memory may be faulty")
    table.encoded_now, table.seconds, table.repaired = n, time.perf_counter() - t0, len(cache.discarded)
    table.backend = cache.backend if n else None
    return table
