"""Calibration: how `--precision auto` and `--backend auto` run an encoder on a CPU, measured on this machine.

The fastest way to run an encoder depends on the CPU, not on the encoder alone. On a 2-core AMD EPYC with native
AVX512-BF16, bf16 autocast was x1.4 (MPNet) to x2.5 (EfficientNet-Lite0) faster than fp32 torch; on an AVX2-only
CPU bf16 is emulated and several times slower, while ONNX Runtime was x1.7 (MPNet) and x4.1 (EfficientNet-Lite0)
faster. A table measured on one CPU therefore says nothing about the next one. So the first time an encoder's
features are made on a machine under auto for a job of at least MIN_WORK items (a smaller one cannot win back the
3-30 s the measurement costs per encoder, and runs as before), `ensure` times every candidate that can apply here
on a few dozen of the items about to be encoded:

  torch fp32         the reference;
  torch bf16         autocast, only where the CPU computes bf16 natively (AVX512-BF16 or AMX);
  onnxruntime fp32   the same fp32 model traced to ONNX (backends.py), where onnxruntime is installed.

Int8 is not a candidate: dynamic int8 quantisation moves the features away from fp32's on any CPU (worst cosine
0.90 for MiniLM and 0.986 for DINOv2, benchmarks/cpu_precision.py speed), since the error is the quantisation's.

A candidate is eligible when its features agree with torch fp32's on every measured item (worst cosine at least
MIN_COSINE for its precision) and, for a reduced precision, the shipped downstream-quality evidence passes
(precision.quality_verdict: the recommended grid with features at that precision, which does not depend on the
CPU). The choice is the fastest eligible candidate that beats torch fp32 by MIN_GAIN (a smaller gap is the noise
of a shared machine), else torch fp32. Each candidate is timed in rounds, interleaved with the others so that a
change of load hits all of them, and its best round counts.

The verdict is a JSON record under `<cache root>/calibration/`, keyed by what the speed depends on: the CPU model
and flags, the torch and onnxruntime versions and the encoder's fingerprint. It is written atomically (a crash
leaves no record, so the next run measures again), reused while the key holds, and a changed key measures again.
A record that cannot be read or does not match its key is deleted with a warning and measured again. Timings
taken while the machine is busy (load average above its CPU count) are recorded as such, used, and measured again
at the first run that finds the machine at most half loaded. Two
processes calibrating the same encoder take turns (a file lock); under torchrun rank 0 measures and the others
use its record, so every rank computes the same features. `genrefusion calibrate` runs or shows it; an explicit
--precision or --backend overrides it.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from filelock import FileLock

from .. import atomic, distributed
from ..data.modalities import spec
from ..files import read_json_object
from ..paths import encoder_folder
from . import backends, fingerprints
from .precision import CpuCapability, cpu_capability, load_table, quality_verdict

# Part of every record's key: bumped whenever what is timed, or how, changes, so that a record measured the old
# way is measured again rather than trusted.
FORMAT = 2
ITEMS = 24  # posters timed per candidate: a few CPU batches (plots: _sample)
POOL = 8 * ITEMS  # plots whose lengths are looked at to pick the timed ones
TEXT_QUANTILES = (0.25, 0.75)  # a batch of plots around each of these quantiles of the tokens (_sample)
# Timed passes over the items per candidate. The first carries first-call costs (kernel selection, buffers) and
# is rarely the best; the best round counts, so it needs no separate untimed warm-up pass.
MIN_ROUNDS, MAX_ROUNDS = 2, 4
# Distinct items a job must have for the first run to calibrate: on the 2-core development machine calibrating the
# four default encoders cost about 50 s (MPNet 25 s, 13 s of it tracing its ONNX graph), while the fastest candidate
# saved 0.01-0.04 s per item.
MIN_WORK = 1000
BUDGET_S = 2.0  # after MIN_ROUNDS, stop once every candidate has run this long in all
MIN_GAIN = 1.1  # a candidate must beat torch fp32 by this factor to be chosen
# Worst per-item cosine to torch fp32's features: ONNX Runtime computes the same fp32 features (up to rounding);
# bf16 features differ by ~1e-3 and their downstream quality is what the shipped evidence measured.
MIN_COSINE = {"fp32": 0.9999, "bf16": 0.99}
logger = logging.getLogger(__name__)
clock = time.perf_counter  # what candidates are timed with
load = os.getloadavg  # how busy the machine is (a record measured while busy is measured again later)

Runner = Callable[[dict[str, torch.Tensor]], torch.Tensor]
MakeRunner = Callable[["Candidate", Any, Path], Runner]


class CalibrationError(ValueError):
    """A calibration record that cannot be used (the message names the file and the problem)."""


@dataclass(frozen=True)
class Candidate:
    """One way of running an encoder: a feature backend and an autocast precision."""

    backend: str
    precision: str

    def label(self) -> str:
        return f"{self.backend} {self.precision}"


REFERENCE = Candidate("torch", "fp32")


def candidates(cap: CpuCapability) -> list[Candidate]:
    """What can apply on a CPU with capability `cap` (the reference first)."""
    out = [REFERENCE]
    if "bf16" in cap.native:
        out.append(Candidate("torch", "bf16"))
    if _onnxruntime_version():
        out.append(Candidate("onnxruntime", "fp32"))
    return out


def _onnxruntime_version() -> str | None:
    try:
        return importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        return None


def record_key(encoder, cap: CpuCapability) -> str:
    """The hash of everything the speed depends on: CPU, library versions, the encoder itself. Not its pooling: the
    poolings of one model are one forward pass (an encoder's companions), so they share one record."""
    model = {k: v for k, v in encoder.fingerprint().items() if k != "pooling"}
    return fingerprints.sha256_json({
        "format": FORMAT, "cpu": {"model": cap.model, "flags": sorted(cap.flags), "torch": cap.torch_capability},
        "torch": torch.__version__, "onnxruntime": _onnxruntime_version(), "encoder": model})


def record_path(cache_root: str | os.PathLike, encoder, key: str) -> Path:
    folder = encoder_folder(cache_root, "calibration", encoder.name, key)
    return folder.with_name(folder.name + ".json")


def applies(encoder, features) -> bool:
    """Whether auto has something to decide for `encoder` under FeatureSpec `features`: a torch encoder running as
    one model on the CPU, with its precision or the backend left to auto."""
    if encoder.device.type != "cpu" or encoder.fixed_precision is not None or encoder.feature_parts():
        return False
    return features.precisions.get(encoder.name, features.precision) == "auto" or features.backend == "auto"


def recorded(encoder, cache_root: str | os.PathLike, cap: CpuCapability | None = None) -> dict[str, Any] | None:
    """This machine's record for `encoder`, or None when there is none (or it was damaged: deleted, warned)."""
    cap = cap or cpu_capability()
    key = record_key(encoder, cap)
    path = record_path(cache_root, encoder, key)
    if not path.exists():
        return None
    try:
        return check_record(read_json_object(path, CalibrationError), key, path)
    except (CalibrationError, OSError) as e:
        logger.warning("calibration record %s is not used (%s); it is deleted and measured again", path, e)
        path.unlink(missing_ok=True)
        return None


def check_record(record: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    """`record` when it is a whole record of this key, else a CalibrationError naming `path` and the problem."""
    if record.get("format") != FORMAT or record.get("key") != key:
        raise CalibrationError(f"{path}: not a calibration record of this CPU, library versions and encoder")
    rows = record.get("candidates")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise CalibrationError(f"{path}: no measured candidates")
    for r in rows:
        if r.get("backend") not in ("torch", "onnxruntime") or r.get("precision") not in MIN_COSINE:
            raise CalibrationError(f"{path}: unknown candidate {r.get('backend')!r} {r.get('precision')!r}")
        if not isinstance(r.get("verdict"), str) or not isinstance(r.get("speedup"), (int, float)):
            raise CalibrationError(f"{path}: candidate {r['backend']} {r['precision']} lacks its verdict or speed")
    return record


def best(record: dict[str, Any], precision: str | None = None, backend: str | None = None) -> Candidate:
    """The fastest eligible candidate of `record` (at `precision`, on `backend` where they are given) that beats
    torch fp32 (torch at `precision` when given) by MIN_GAIN; else that torch reference."""
    rows = [r for r in record["candidates"]
            if precision in (None, r["precision"]) and backend in (None, r["backend"])]
    base = next((r["speedup"] for r in record["candidates"]
                 if r["backend"] == "torch" and r["precision"] == (precision or "fp32")), 1.0)
    fast = [r for r in rows if r["verdict"] == "ok" and r["speedup"] >= base * MIN_GAIN]
    if not fast:
        return Candidate("torch", precision or "fp32")
    top = max(fast, key=lambda r: r["speedup"])
    return Candidate(top["backend"], top["precision"])


def calibrate_on(dataset, encoder, features, *, again: bool = False,
                 min_work: int | None = None) -> dict[str, Any] | None:
    """`ensure` for the encoder, measured on a sample of the dataset's distinct items of its modality (`_sample`)
    when there is no record yet (or `again`) and the dataset has at least `min_work` (default MIN_WORK) of them:
    measuring costs 3-30 s per encoder (tracing its ONNX graph included), which a smaller job cannot win back; it
    then runs as without a record."""
    if not applies(encoder, features):
        return None
    items: list[Any] = []
    record = None if again else recorded(encoder, features.cache_root)
    if record is None and _distinct_items(dataset, encoder.modality) < (MIN_WORK if min_work is None else min_work):
        return None
    if record is None or not settled(record):
        items = _sample(dataset, encoder)
    return ensure(encoder, features, items, again=again)


def _sample(dataset, encoder) -> list[Any]:
    """Distinct raw items of the dataset to time: the first ITEMS posters; for plots, of the first POOL sorted
    longest first, one batch of the feature cache's size around each of TEXT_QUANTILES of their cumulative token
    count, so that the timed batches are padded and sized like the job's and lengths weigh as in its time. Both
    matter: ONNX Runtime computes attention unfused, ahead of torch on short plots and at half its speed on batches
    of 32 plots of 512 tokens (MiniLM, MPNet), and a batch of random plots is padded to its longest. An item that
    cannot be loaded is left out here (the extraction names it)."""
    modality, seen, items = spec(encoder.modality), set(), []
    lengths = encoder.token_lengths  # None: the encoder cannot count tokens (posters, a joined encoder)
    for movie in dataset.movies:
        key = modality.key(movie)
        if key is None or key in seen:
            continue
        seen.add(key)
        try:
            items.append(modality.load_raw(movie))
        except Exception:  # a broken poster: skipped here, reported by the extraction
            continue
        if len(items) == (POOL if callable(lengths) else ITEMS):
            break
    if not callable(lengths):
        return items
    ranked = sorted(zip(lengths(items), range(len(items))), reverse=True)  # longest first
    tokens = torch.tensor([n for n, _ in ranked], dtype=torch.float64).cumsum(0)
    size, picked = modality.cpu_batch_size, set()
    for q in TEXT_QUANTILES:  # one batch of the job's size around each quantile of the token count
        centre = int(torch.searchsorted(tokens, q * tokens[-1]))
        start = max(0, min(len(items) - size, centre - size // 2))
        picked.update(range(start, start + size))
    return [items[ranked[k][1]] for k in sorted(picked)]


def _distinct_items(dataset, modality: str) -> int:
    return len({k for k in map(spec(modality).key, dataset.movies) if k is not None})


def ensure(encoder, features, items: Sequence[Any], *, cap: CpuCapability | None = None,
           timer: Callable[[], float] | None = None, runners: MakeRunner | None = None,
           again: bool = False) -> dict[str, Any] | None:
    """The calibration record of `encoder` on this machine: the one recorded, or measured now on `items` (raw
    items: plots, decoded posters) and recorded. None where auto decides nothing (`applies`) or there is neither a
    record nor an item to measure. `again` measures even when a record exists. Under torchrun every rank gets rank
    0's record (every rank must call it)."""
    if not applies(encoder, features):
        return None
    cap = cap or cpu_capability()
    record = None
    if distributed.rank() == 0:
        record = _ensure_here(encoder, features.cache_root, items, cap, timer, runners, again)
    if distributed.is_distributed():  # one verdict for all ranks, or they would compute different features
        record = distributed.all_gather_objects(record)[0]
        if record is not None and distributed.rank() != 0:
            path = record_path(features.cache_root, encoder, record["key"])
            if not path.exists():  # another machine's cache root
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic.write_json(path, record)
    return record


def busy() -> bool:
    """Whether this machine is too busy for timings to mean much: a load average above its CPU count."""
    return load()[0] > (os.cpu_count() or 1)


def settled(record: dict[str, Any]) -> bool:
    """Whether a record stands: measured on a quiet machine, or the machine is still busy (then measuring again
    would be no better). A record measured while busy is measured again once the machine is at most half loaded."""
    return not record.get("busy") or load()[0] > 0.5 * (os.cpu_count() or 1)


def _ensure_here(encoder, cache_root: Path, items: Sequence[Any], cap: CpuCapability, timer, runners,
                 again: bool) -> dict[str, Any] | None:
    record = None if again else recorded(encoder, cache_root, cap)
    if (record is not None and settled(record)) or not items:
        return record
    path = record_path(cache_root, encoder, record_key(encoder, cap))
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):  # a second process waits, then reuses the first one's record
        if not again and (record := recorded(encoder, cache_root, cap)) is not None and settled(record):
            return record
        record = measure(encoder, items, cache_root, cap, timer, runners)
        atomic.write_json(path, record)
    logger.info("%s (recorded in %s)", record["why"], path)
    return record


def measure(encoder, items: Sequence[Any], cache_root: Path, cap: CpuCapability,
            timer: Callable[[], float] | None = None, runners: MakeRunner | None = None) -> dict[str, Any]:
    """Time every candidate on `items` and judge it (see the module docstring); the record, not yet written.
    `timer` and `runners` default to the module's `clock` and `make_runner` (tests fake them)."""
    if not items:
        raise CalibrationError(f"calibrating {encoder.name!r} needs at least one item to encode")
    items = list(items)
    batches = _batches(encoder, items)
    rows = {c: {"backend": c.backend, "precision": c.precision} for c in candidates(cap)}
    runs = {}
    for c in rows:
        try:  # the reference must run: its failure is the encoder's, and propagates
            runs[c] = (runners or make_runner)(c, encoder, cache_root)
        except Exception as e:
            if c == REFERENCE:
                raise
            rows[c]["error"] = f"{type(e).__name__}: {e}"[:300]
            runs.pop(c, None)
    seconds, outputs = _timed_rounds(dict(runs), batches, timer or clock)
    for c in set(runs) - set(seconds):
        rows[c]["error"] = "failed on the timed items"
        runs.pop(c)
    table = load_table()
    for c, row in rows.items():
        if c in runs:
            row["items_per_s"] = round(len(items) / seconds[c], 3)
            row["speedup"] = round(seconds[REFERENCE] / seconds[c], 4)
            row["min_cosine"] = round(_worst_cosine(outputs[c], outputs[REFERENCE]), 6)
        else:
            row["speedup"] = 0.0
        row["verdict"] = _verdict(c, row, encoder.name, table)
    return _record(encoder, cap, items, list(rows.values()))


def _batches(encoder, items: list[Any]) -> list[dict[str, torch.Tensor]]:
    """The items as the feature cache would batch them on a CPU (preprocessed once: decoding is not timed)."""
    size = spec(encoder.modality).cpu_batch_size
    return [encoder.preprocess(items[i:i + size]) for i in range(0, len(items), size)]


def make_runner(candidate: Candidate, encoder, cache_root: Path) -> Runner:
    """The pooled-vector runner of a candidate (the feature cache's own: backends.runner)."""
    _, run = backends.runner(candidate.backend, encoder, (), Path(cache_root), explicit=True)
    return lambda inputs: run(inputs)[0]


def _pass(run: Runner, batches: list[dict[str, torch.Tensor]], precision: str) -> torch.Tensor:
    with torch.inference_mode(), fingerprints.autocast("cpu", precision):
        return torch.cat([run(b).float() for b in batches])


def _timed_rounds(runs: dict[Candidate, Runner], batches,
                  timer: Callable[[], float]) -> tuple[dict[Candidate, float], dict[Candidate, torch.Tensor]]:
    """Each candidate's best pass time over interleaved rounds, and its features from the first round."""
    times: dict[Candidate, list[float]] = {c: [] for c in runs}
    outputs: dict[Candidate, torch.Tensor] = {}
    for n in range(MAX_ROUNDS):
        for c in list(runs):
            t0 = timer()
            try:
                out = _pass(runs[c], batches, c.precision)
            except Exception:  # a candidate that cannot encode these items: measure() refuses it
                if c == REFERENCE:
                    raise
                del runs[c], times[c]
                continue
            times[c].append(timer() - t0)
            outputs.setdefault(c, out)
        if n + 1 >= MIN_ROUNDS and all(sum(t) >= BUDGET_S for t in times.values()):
            break
    # a clock too coarse to see a pass: no division by zero
    return {c: max(min(t), 1e-9) for c, t in times.items()}, outputs


def _worst_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return -1.0
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12)
    return float(torch.nan_to_num(cos, nan=-1.0).min())


def _verdict(c: Candidate, row: dict[str, Any], name: str, table: dict[str, Any]) -> str:
    if "error" in row:
        return f"could not run ({row['error']})"
    if row["min_cosine"] < MIN_COSINE[c.precision]:
        return f"features disagree with torch fp32 (worst cosine {row['min_cosine']:.4f} < {MIN_COSINE[c.precision]})"
    if c.precision != "fp32":
        return quality_verdict(name, c.precision, table)
    return "ok"


def _record(encoder, cap: CpuCapability, items: list[Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    record = {"format": FORMAT, "key": record_key(encoder, cap), "encoder": encoder.name, "cpu": cap.to_dict(),
              "torch": torch.__version__, "onnxruntime": _onnxruntime_version(), "items": len(items),
              "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "load": "load average " + " ".join(f"{x:.2f}" for x in load()) + f" on {os.cpu_count()} CPUs",
              "busy": busy(), "candidates": rows}
    choice = best(record)
    record["choice"] = {"backend": choice.backend, "precision": choice.precision}
    record["why"] = explain(record)
    return record


def explain(record: dict[str, Any]) -> str:
    """One line: what was chosen for the encoder and why, with what each other candidate measured."""
    choice = best(record)
    parts = []
    for r in record["candidates"]:
        c = Candidate(r["backend"], r["precision"])
        if c == REFERENCE:
            continue
        said = f"x{r['speedup']:.2f}" if "error" not in r else "did not run"
        verdict = r["verdict"] if r["verdict"] != "ok" else (
            "chosen" if c == choice else f"agrees, but under x{MIN_GAIN} or slower than the choice")
        parts.append(f"{c.label()} {said} ({verdict})")
    cpu = record.get("cpu", {})
    native = "/".join(cpu.get("native", [])) or "no reduced precision"
    busy_note = (f" [measured while busy, {record['load']}: measured again once the machine is quiet]"
                 if record.get("busy") else "")
    return (f"calibrated {record['encoder']} on {cpu.get('model') or 'this CPU'} (native {native}): "
            f"{choice.label()}; vs torch fp32: " + ("; ".join(parts) or "no other candidate applies here") + busy_note)
