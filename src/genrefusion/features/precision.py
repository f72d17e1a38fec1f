"""Which autocast precision `--precision auto` picks on a CPU, by evidence rather than by default.

A reduced precision is worth using on a CPU only when (1) the CPU computes it natively (bf16 matrix products need
AVX512-BF16 or AMX; without them PyTorch emulates bf16 and runs several times slower than fp32), (2) it was measured
faster than fp32 for that encoder on a CPU of the same kind, and (3) features computed at it keep downstream
quality: the 5-seed mean test macro- and micro-F1 of the recommended grid within 0.01 of fp32's, or zero inside the
paired bootstrap interval of the difference (benchmarks/cpu_precision.py runs that comparison with the grid).

The evidence is `cpu_precision.json` next to this module, written by benchmarks/cpu_precision.py (never by hand):
  "speed":   one entry per kind of CPU measured ("native": the precisions it computes natively, "flags": its
             /proc/cpuinfo flags of interest), with, per encoder and precision, the throughput ratio to fp32 and
             the worst item's cosine to fp32 features;
  "quality": per encoder and precision, the grid comparison and its verdict ("pass" / "fail"), and the CPU the
             features were computed on: a verdict from a CPU that emulates the precision counts when its matrix
             products agree with native ones (`computed_on.matmul_agreement`), since native bf16 hardware rounds
             the same inputs and accumulates in fp32 as PyTorch's emulation does; speed never carries over.
An encoder or precision the table does not cover stays at fp32, so `auto` never guesses. The speed entry also
measures the onnxruntime feature backend (fp32, "onnxruntime" next to the precisions): `backend_for` reads it.

`probe_cpu` reads what this CPU supports; tests swap it through `set_cpu_probe`. On a GPU `auto` keeps its rule
(bf16 where supported, else fp16), see fingerprints.resolve_precision.
"""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

TABLE = Path(__file__).with_name("cpu_precision.json")
# /proc/cpuinfo flags that decide which reduced precisions run natively (and which int8 kernels exist).
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16", "avx512_vnni",
                     "avx_vnni", "amx_int8")
NATIVE_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}
TOLERANCE = 0.01  # largest accepted drop of the 5-seed mean test macro- / micro-F1
# The onnxruntime feature backend (feature_backends.py) computes fp32 features too; it is used for an encoder when it
# was measured faster than torch on a CPU of this kind and its features agreed with torch's on every measured item.
BACKEND_MIN_SPEEDUP = 1.2  # below it the gain is within the noise of a shared 2-core machine
BACKEND_MIN_COSINE = 0.9999
# A quality verdict measured on features of an emulated precision (bf16 on an AVX2 CPU) stands for native hardware
# only when the emulation computes like it: this share of a matrix product's elements equal to the exact product of
# the rounded inputs, rounded once (benchmarks/cpu_precision.py records it over products and convolutions;
# PyTorch 2.13's emulation on the AVX2 development machine: 0.99998).
MIN_MATMUL_AGREEMENT = 0.999


@dataclass(frozen=True)
class CpuCapability:
    """What a CPU supports, as far as precision goes."""

    flags: frozenset[str] = field(default_factory=frozenset)
    torch_capability: str = ""  # torch.backends.cpu.get_cpu_capability(): "AVX2", "AVX512", ...
    model: str = ""

    @property
    def native(self) -> tuple[str, ...]:
        """The reduced precisions this CPU computes natively (fp32 is always there)."""
        return tuple(p for p, flags in NATIVE_FLAGS.items() if self.flags.intersection(flags))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "torch_capability": self.torch_capability, "flags": sorted(self.flags),
                "native": list(self.native)}


def probe_cpu(cpuinfo: str | Path = "/proc/cpuinfo") -> CpuCapability:
    """This machine's CPU: flags from /proc/cpuinfo (Linux; elsewhere none, so nothing counts as native) and
    PyTorch's own view of its vector units."""
    flags: set[str] = set()
    model = platform.processor()
    try:
        for line in Path(cpuinfo).read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split()) & set(FLAGS_OF_INTEREST)
            elif key.strip() == "model name" and value.strip():
                model = value.strip()
    except OSError:
        pass
    try:
        import torch

        capability = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # an old torch without the call: the flags still decide
        capability = ""
    return CpuCapability(frozenset(flags), capability, model)


_probe: Callable[[], CpuCapability] = lru_cache(maxsize=1)(probe_cpu)


def set_cpu_probe(probe: Callable[[], CpuCapability] | None) -> None:
    """Replace the CPU probe (tests fake a CPU with it); None restores the real one."""
    global _probe
    _probe = probe or lru_cache(maxsize=1)(probe_cpu)


def cpu_capability() -> CpuCapability:
    return _probe()


def load_table(path: str | Path | None = None) -> dict[str, Any]:
    """The evidence table; an absent or unreadable one is an empty table (auto then stays at fp32)."""
    try:
        table = json.loads(Path(path or TABLE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def _speed_entry(table: dict[str, Any], cap: CpuCapability) -> dict[str, Any] | None:
    """The speed measurement made on a CPU of this one's kind (the same native precisions)."""
    for entry in table.get("speed", []):
        if isinstance(entry, dict) and sorted(entry.get("native", [])) == sorted(cap.native):
            return entry
    return None


def verdicts(encoders: Iterable[str], cap: CpuCapability | None = None,
             table: dict[str, Any] | None = None) -> dict[str, dict[str, str]]:
    """Per reduced precision and encoder, why it is or is not eligible ("ok" or the reason): what `choose` reads,
    and what benchmarks/cpu.py prints."""
    cap = cap or cpu_capability()
    table = load_table() if table is None else table
    speed = _speed_entry(table, cap)
    out: dict[str, dict[str, str]] = {}
    for p in NATIVE_FLAGS:
        out[p] = {}
        for name in encoders:
            measured = (speed or {}).get("encoders", {}).get(name, {}).get(p)
            if p not in cap.native:
                why = f"this CPU has no native {p} (needs {' or '.join(NATIVE_FLAGS[p])})"
            elif not measured:
                why = f"no speed measurement of {p} on a CPU with native {'/'.join(cap.native)}"
            elif not measured.get("speedup", 0) > 1.0:
                why = f"not faster than fp32 (x{measured.get('speedup', 0):.2f})"
            else:
                why = quality_verdict(name, p, table)
            out[p][name] = why
    return out


def quality_verdict(name: str, precision: str, table: dict[str, Any] | None = None) -> str:
    """Whether the shipped evidence says features of encoder `name` at reduced `precision` keep downstream quality
    ("ok" or the reason). The evidence does not depend on the CPU the features are later computed on."""
    table = load_table() if table is None else table
    quality = table.get("quality", {}).get(name, {}).get(precision, {})
    if quality.get("verdict") != "pass":
        return ("downstream quality not measured" if not quality else
                f"downstream quality: {quality.get('verdict')}")
    if not _computes_like_native(quality):
        return (f"downstream quality was measured on emulated {precision} features that do not compute like "
                f"native {precision} (matmul agreement {quality['computed_on'].get('matmul_agreement')})")
    return "ok"


def _computes_like_native(quality: dict[str, Any]) -> bool:
    """Whether a quality entry's features are those native hardware computes: measured where the precision is
    native (or before the table recorded where), or emulated with products that agree with native ones."""
    where = quality.get("computed_on")
    if not isinstance(where, dict) or not where.get("emulated"):
        return True
    agreement = where.get("matmul_agreement")
    return isinstance(agreement, (int, float)) and agreement >= MIN_MATMUL_AGREEMENT


def keeps_quality(rows: Iterable[dict[str, Any]], tolerance: float = TOLERANCE) -> bool:
    """The issue's rule over grid rows compared with compare.compare (fp32 = A, the reduced precision = B): on every
    row, for macro- and micro-F1, the difference of 5-seed mean scores is within `tolerance`, or zero lies inside
    its paired bootstrap interval. No rows: no evidence, so False."""
    rows = list(rows)
    return bool(rows) and all(abs(r[m]["diff"]) <= tolerance or r[m]["ci_low"] <= 0.0 <= r[m]["ci_high"]
                              for r in rows for m in ("f1_macro", "f1_micro"))


def choose(encoders: Iterable[str], cap: CpuCapability | None = None, table: dict[str, Any] | None = None) -> str:
    """The precision `auto` gives features of `encoders` on this CPU: the fastest reduced precision eligible for
    every one of them (an encoder joined from parts gets one precision for all parts), else fp32."""
    encoders = list(encoders)
    table = load_table() if table is None else table
    cap = cap or cpu_capability()
    ok = verdicts(encoders, cap, table)
    speed = _speed_entry(table, cap) or {}
    best, best_speedup = "fp32", 1.0
    for p, why in ok.items():
        if encoders and all(v == "ok" for v in why.values()):
            speedup = min(speed["encoders"][e][p]["speedup"] for e in encoders)
            if speedup > best_speedup:
                best, best_speedup = p, speedup
    return best


def backend_verdict(name: str, cap: CpuCapability | None = None, table: dict[str, Any] | None = None) -> str:
    """Why the onnxruntime feature backend is or is not used for encoder `name` by `--backend auto` ("ok" or the
    reason)."""
    cap = cap or cpu_capability()
    table = load_table() if table is None else table
    measured = ((_speed_entry(table, cap) or {}).get("encoders", {}).get(name, {}).get("onnxruntime"))
    if not measured:
        return "not measured on a CPU of this kind"
    if not measured.get("speedup", 0) >= BACKEND_MIN_SPEEDUP:
        return f"not faster than torch (x{measured.get('speedup', 0):.2f})"
    if not measured.get("min_cosine", 0) >= BACKEND_MIN_COSINE:
        return f"features disagree with torch (min cosine {measured.get('min_cosine', 0):.4f})"
    return "ok"


def backend_for(name: str, cap: CpuCapability | None = None, table: dict[str, Any] | None = None) -> str:
    """The feature backend `--backend auto` uses for encoder `name` on this CPU: onnxruntime where the evidence
    supports it (backend_verdict), else torch."""
    return "onnxruntime" if backend_verdict(name, cap, table) == "ok" else "torch"

