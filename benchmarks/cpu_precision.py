"""The evidence `--precision auto` reads on a CPU (src/genrefusion/cpu_precision.json), produced here, never by hand.

    # speed and agreement of each precision (and of the onnxruntime backend) on THIS CPU, into the entry for CPUs of
    # its kind (what is measured replaces its earlier measurement)
    PYTHONPATH=src .venv/bin/python benchmarks/cpu_precision.py speed [--limit 48] [--precisions onnxruntime]
    # downstream quality: the recommended grid, 5 seeds, fp32 vs PRECISION features, paired bootstrap per row
    PYTHONPATH=src .venv/bin/python benchmarks/cpu_precision.py quality --precision bf16 [--seeds 5] [--out DIR]
    # what auto picks on this CPU, and why (reads the table only)
    PYTHONPATH=src .venv/bin/python benchmarks/cpu_precision.py decide

Quality rule (issue 12): a precision keeps downstream quality for an encoder when, on every grid row that reads
that encoder, the 5-seed mean test macro-F1 and micro-F1 are within 0.01 of fp32's, or zero lies inside the paired
bootstrap interval of the difference (compare.compare on the two row folders, seed-averaged scores). The verdict is
written per encoder; the rows, seeds, differences and intervals behind it are written with it, and so is the CPU
the features were computed on. The verdict needs no native support: where the CPU emulates the precision (bf16 on
an AVX2 CPU, several times slower than fp32) the features are still the ones a CPU with native bf16 computes,
which `matmul_agreement` checks (see reduced_matmul_agreement). Speed, by contrast, is only ever read for the kind
of CPU it was measured on.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _cpu_bench():
    spec = importlib.util.spec_from_file_location("benchmarks_cpu", HERE / "cpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(table: dict[str, Any]) -> Path:
    from genrefusion import atomic
    from genrefusion.features.precision import TABLE

    atomic.write_text(TABLE, json.dumps(table, indent=1, sort_keys=True) + "\n")
    return TABLE


def cmd_speed(args) -> int:
    """Measure encoder by encoder, writing this CPU's entry after each one (a long run stopped midway keeps what
    it measured)."""
    from genrefusion.features.precision import load_table, probe_cpu

    bench = _cpu_bench()
    cap = probe_cpu()
    measured: dict[str, Any] = {}
    precisions = ["fp32", *args.precisions.split(",")]
    for name in args.encoders.split(","):
        rows = bench.encoder_precisions(args.data, [name], precisions, limit=args.limit)[name]
        now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        measured[name] = rows
        table = load_table()
        old = [e for e in table.get("speed", []) if sorted(e.get("native", [])) == sorted(cap.native)]
        entry = old[0] if old else {"encoders": {}}
        entry.update({"cpu": cap.model, "torch_capability": cap.torch_capability, "flags": sorted(cap.flags),
                      "native": list(cap.native), "measured": now, "load": bench.load_avg(), "items": args.limit})
        # Precisions measured now replace their earlier measurement; the others are kept, each with its own date.
        for p, r in rows.items():
            if p != "fp32":
                entry["encoders"].setdefault(name, {})[p] = {
                    **{k: round(v, 4) for k, v in r.items() if k in ("speedup", "min_cosine", "mean_cosine",
                                                                    "items_per_s")},
                    "measured": now, "load": bench.load_avg(), "items": args.limit}
        table["speed"] = [e for e in table.get("speed", []) if sorted(e.get("native", [])) != sorted(cap.native)]
        table["speed"].append(entry)
        print(f"written: {_write(table)} ({name})", flush=True)
    print(bench.format_encoders(measured, args.limit, measured=precisions))
    return 0


def args_tolerance() -> float:
    from genrefusion.features.precision import TOLERANCE

    return TOLERANCE


def reduced_matmul_agreement(precision: str, seed: int = 0) -> float:
    """The share of reduced-precision matrix products' and convolutions' elements on THIS CPU that equal the exact
    result for the same rounded inputs, rounded once to that precision: what hardware with native bf16 dot
    products and fp32 accumulation (AVX512-BF16, AMX) computes, up to the order of its fp32 sums. A share near 1
    says features computed here, even where the precision is emulated, are the features such a CPU computes, so
    the quality verdict carries over (it is kept per encoder, not per CPU); the speed never does."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    g = torch.Generator().manual_seed(seed)
    equal = total = 0
    for m, k, n in ((16, 384, 1536), (257, 384, 384), (64, 1536, 384)):  # encoder-shaped products
        a = torch.randn(m, k, generator=g).to(dtype)
        b = torch.randn(k, n, generator=g).to(dtype)
        reference = (a.double() @ b.double()).to(dtype)
        equal += int(((a @ b) == reference).sum())
        total += m * n
    # and convolutions: a ViT's patch embedding, an EfficientNet's pointwise and depthwise layers
    for c_in, c_out, kernel, stride, groups in ((3, 384, 14, 14, 1), (32, 96, 1, 1, 1), (96, 96, 3, 1, 96)):
        x = torch.randn(2, c_in, 56, 56, generator=g).to(dtype)
        w = torch.randn(c_out, c_in // groups, kernel, kernel, generator=g).to(dtype)
        out = torch.nn.functional.conv2d(x, w, stride=stride, groups=groups)
        reference = torch.nn.functional.conv2d(x.double(), w.double(), stride=stride, groups=groups).to(dtype)
        equal += int((out == reference).sum())
        total += out.numel()
    return equal / total


def cmd_quality(args) -> int:
    from genrefusion.evaluation.compare import compare
    from genrefusion.data.loader import DataSpec
    from genrefusion.training.grid import GridSpec, run_grid
    from genrefusion.features.precision import keeps_quality, load_table, probe_cpu

    out = Path(args.out)
    grids = {}
    for p in ("fp32", args.precision):
        grids[p] = run_grid(GridSpec(DataSpec(args.data, "stratified", "both"), "recommended", seeds=args.seeds,
                                     cache_dir=args.cache_dir, out=out / p,
                                     rows=args.rows.split(",") if args.rows else None,
                                     config_overrides=[f"precision={p}"], report=False))
    per_row = []
    for row in grids["fp32"]["rows"]:
        r = compare(out / "fp32" / row["runs"][0].split("/")[0], out / args.precision / row["runs"][0].split("/")[0],
                    n_boot=args.n_boot)
        per_row.append({"row": row["row"], "encoders": sorted(set(row["encoders"].values())),
                        **{m: {k: round(r[m][k], 4) for k in ("score_a", "score_b", "diff", "ci_low", "ci_high")}
                           for m in ("f1_macro", "f1_micro")}})
        print(f"{row['row']:<18} " + "  ".join(
            f"{m} {r[m]['score_a']:.4f} -> {r[m]['score_b']:.4f} ({r[m]['diff']:+.4f}, CI [{r[m]['ci_low']:+.4f}, "
            f"{r[m]['ci_high']:+.4f}])" for m in ("f1_macro", "f1_micro")))
    cap = probe_cpu()
    emulated = args.precision not in cap.native
    agreement = reduced_matmul_agreement(args.precision)
    print(f"features computed on {cap.model} ({', '.join(sorted(cap.flags)) or 'no flags of interest'}): "
          f"{args.precision} {'emulated' if emulated else 'native'}; {agreement:.4%} of its matrix products' and "
          "convolutions' elements equal the once-rounded exact result")
    table = load_table()
    quality = table.setdefault("quality", {})
    for enc in sorted({e for r in per_row for e in r["encoders"]}):
        # A joined encoder's parts each count: minilm-l6+mpnet-base is read by rows of both.
        rows = [r for r in per_row if enc in r["encoders"]]
        ok = keeps_quality(rows)
        quality.setdefault(enc, {})[args.precision] = {
            "verdict": "pass" if ok else "fail", "seeds": args.seeds, "rows": rows, "preset": "recommended",
            "split": "stratified", "modalities": "both", "tolerance": args_tolerance(),
            "computed_on": {**cap.to_dict(), "emulated": emulated, "matmul_agreement": round(agreement, 6)},
            "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
        print(f"{enc}: {args.precision} {'keeps' if ok else 'does NOT keep'} downstream quality")
    print(f"written: {_write(table)}")
    return 0


def cmd_decide(args) -> int:
    print(_cpu_bench().format_auto(args.encoders.split(",")))
    return 0


def main(argv=None) -> int:
    bench = _cpu_bench()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, fn in (("speed", cmd_speed), ("quality", cmd_quality), ("decide", cmd_decide)):
        p = sub.add_parser(name)
        p.add_argument("--data", default=str(bench.DEFAULT_DATA))
        p.add_argument("--encoders", default=",".join(bench.ENCODERS))
        p.set_defaults(func=fn)
        if name == "speed":
            p.add_argument("--limit", type=int, default=48)
            p.add_argument("--precisions", default=",".join(bench.PRECISIONS[1:]),
                           help="what to measure against fp32 (others already in the table are kept)")
        if name == "quality":
            p.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
            p.add_argument("--seeds", type=int, default=5)
            p.add_argument("--rows", default=None, help="comma-separated grid rows (default: all nine)")
            p.add_argument("--out", default="runs/cpu-precision")
            p.add_argument("--cache-dir", default=None)
            p.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
