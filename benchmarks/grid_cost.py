"""What the recommended grid's training costs under a cheaper setting (a "lever", given as config overrides), and
whether the lever keeps its results: issue 25, item 2.

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grid_cost.py \
        --lever patience-3:early_stopping_patience=3 [--lever NAME:key=value,...] \
        [--baseline key=value,...] [--rows RoBERTa,GMU,ResNet50] [--seeds 5] [--out DIR] [--resume]

Each chosen row of the recommended grid (grid row names) is trained for `--seeds` seeds under the preset as it is,
or with `--baseline`'s overrides (the baseline), and under each lever (its overrides on top of the baseline's), on
the sample (stratified split, both modalities, fp32 features from the cache, as `benchmarks/cpu_precision.py
quality` runs it). The configurations are interleaved: seed by seed and row by row, each configuration trains the
row once, in an order that is reversed every other seed, so that a change of the machine's load falls on all of
them alike. Printed per row and lever: the training seconds of each
configuration (train_oof_s summed over the seeds: the row's model and its out-of-fold heads) and their ratio, the
epochs the row's model trained and its best epoch (seed means), how many seeds gave bit-identical test
predictions and thresholds, and the paired comparison of test macro- and micro-F1 (evaluation.compare.compare on
the two row folders: seed-averaged scores, difference lever - baseline and its 95% bootstrap interval). A lever
passes when, on every row, both differences are within 0.01 or zero lies inside the interval (the project's rule,
features.precision.keeps_quality). The load average and the CPU model are printed with the figures, and
everything printed is also written to OUT/grid_cost.json. A run stopped midway continues with `--resume` (the
same arguments): the runs it finished are read, not trained again.

A smaller early_stopping_patience changes nothing before the epoch a training stops at (the schedule depends on
`epochs`, not on the patience), so a training's result changes only when it would have found a new best epoch
after `patience` epochs without one; the baseline's recorded histories say how often that happened to the rows'
models for every smaller patience, which is printed too.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mmimdb-sample"
# The same cached features for every configuration: fp32, computed by torch (no calibration run on the way).
COMMON = {"precision": "fp32", "feature_backend": "torch"}
BASELINE = "baseline"


@dataclass(frozen=True)
class Setting:
    name: str
    overrides: dict[str, Any]


def parse_overrides(text: str) -> dict[str, Any]:
    """'key=value,key=value' -> config overrides (values parsed as on the command line)."""
    from genrefusion.config import parse_override

    return dict(parse_override(item) for item in text.split(",") if item.strip())


def parse_lever(text: str) -> Setting:
    """'NAME:key=value,key=value' -> Setting (values parsed as config overrides are)."""
    name, sep, rest = text.partition(":")
    if not sep or not name or not rest or name == BASELINE or "/" in name:
        raise argparse.ArgumentTypeError(f"--lever {text!r}: expected NAME:key=value[,key=value...]")
    return Setting(name, parse_overrides(rest))


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def stop_epoch(val_losses: list[float], patience: int) -> tuple[int, int]:
    """(the epoch train.fit stops at, its best epoch) for these validation losses under `patience`."""
    best, best_epoch, bad = float("inf"), 0, 0
    for epoch, loss in enumerate(val_losses, 1):
        if loss < best:
            best, best_epoch, bad = loss, epoch, 0
        else:
            bad += 1
            if bad >= patience:
                return epoch, best_epoch
    return len(val_losses), best_epoch


def finished_run(out: Path, setting: Setting, row: str, seed: int) -> Path | None:
    """The run folder an earlier, interrupted invocation finished for this row, seed and setting (--resume)."""
    from genrefusion.evaluation.runs import predictions_file

    for metrics in sorted((out / setting.name).glob(f"*/seed-{seed}/metrics.json")):
        run_dir = metrics.parent
        if (json.loads(metrics.read_text(encoding="utf-8")).get("grid_row") == row
                and all((run_dir / predictions_file(s)).is_file() for s in ("test", "val"))):
            return run_dir
    return None


def train_one(args, setting: Setting, row: str, seed: int, out: Path) -> dict[str, Any]:
    """One row, one seed, under `setting`: the grid's own code (run_grid) over the cached features; with --resume,
    what an earlier invocation finished is read instead of trained again."""
    from genrefusion.data.loader import DataSpec
    from genrefusion.training.grid import GridSpec, run_grid

    run_dir = finished_run(out, setting, row, seed) if args.resume else None
    resumed = run_dir is not None
    if run_dir is None:
        overrides = {**COMMON, **args.baseline, **setting.overrides, "seed": seed}  # a lever: on the baseline
        g = run_grid(GridSpec(DataSpec(args.data, "stratified", "both"), "recommended", config_overrides=overrides,
                              cache_dir=args.cache_dir, out=out / setting.name, rows=[row], seeds=1, report=False),
                     log=lambda *_: None)
        (entry,) = g["rows"]
        run_dir = out / setting.name / entry["runs"][0]
    m = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return {"row": row, "folder": run_dir.parent.name, "run": str(run_dir), "seed": seed,
            "train_s": m["timings"]["train_oof_s"], "epochs": len(m["history"]), "best_epoch": m["best_epoch"],
            "val_losses": [h["val_loss"] for h in m["history"]], "f1_macro": m["test"]["f1_macro"],
            "f1_micro": m["test"]["f1_micro"], "load": "(earlier run)" if resumed else load_avg()}


def identical(run_a: str, run_b: str) -> bool:
    """Whether two runs gave bit-identical test probabilities and thresholds."""
    import numpy as np

    from genrefusion.evaluation.runs import read_predictions

    a, b = read_predictions(run_a, "test"), read_predictions(run_b, "test")
    return bool(np.array_equal(a.probs, b.probs) and np.array_equal(np.asarray(a.thresholds),
                                                                   np.asarray(b.thresholds)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--rows", default="RoBERTa,GMU,ResNet50", help="comma-separated grid row names")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--lever", type=parse_lever, action="append", required=True,
                    help="NAME:key=value[,key=value]: config overrides compared with the baseline (repeatable)")
    ap.add_argument("--baseline", type=parse_overrides, default={},
                    help="key=value[,key=value]: the baseline's overrides of the preset (default: the preset as it "
                         "is); e.g. early_stopping_patience=8 for the preset before 7 December 2026")
    ap.add_argument("--out", default=None, help="default: runs/grid-cost-<time>")
    ap.add_argument("--cache-dir", default=None, help="the feature cache (default: $GENREFUSION_CACHE or "
                                                      "~/.cache/genrefusion)")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted run in --out: runs it finished are read, not trained again")
    args = ap.parse_args(argv)

    import torch

    from genrefusion.config import load_config
    from genrefusion.evaluation.compare import compare
    from genrefusion.features.precision import TOLERANCE, keeps_quality, probe_cpu

    levers = args.lever
    settings = [Setting(BASELINE, args.baseline), *levers]
    if len({s.name for s in settings}) != len(settings):
        ap.error("--lever names must differ")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    out = Path(args.out or f"runs/grid-cost-{datetime.now():%Y%m%d-%H%M%S}")
    if out.exists() and any(out.iterdir()) and not args.resume:
        ap.error(f"--out {out}: exists and is not empty (the row folders must hold this run's seeds only; "
                 "--resume continues an interrupted run there)")
    base = load_config(preset="recommended", overrides=dict(args.baseline))
    cpu = probe_cpu()
    header = {"cpu": cpu.model, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "fold_workers": base.fold_workers, "load_start": load_avg(),
              "started": f"{datetime.now():%Y-%m-%d %H:%M}",
              "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}
    changed = ", ".join(f"{k}={v}" for k, v in args.baseline.items())
    print(f"{cpu.model} ({os.cpu_count()} CPUs), torch {torch.__version__}, {header['threads']} thread(s); "
          f"baseline: the recommended preset{' with ' + changed if changed else ''} (epochs {base.epochs}, "
          f"early_stopping_patience {base.early_stopping_patience}); load average {header['load_start']}", flush=True)
    for s in levers:
        print(f"lever {s.name}: {', '.join(f'{k}={v}' for k, v in s.overrides.items())}", flush=True)

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {s.name: {r: [] for r in rows} for s in settings}
    t0 = time.perf_counter()
    for seed in range(base.seed, base.seed + args.seeds):
        for row in rows:
            for s in settings if (seed - base.seed) % 2 == 0 else settings[::-1]:
                r = train_one(args, s, row, seed, out)
                runs[s.name][row].append(r)
                print(f"  seed {seed} {row:<10} {s.name:<12} {r['train_s']:6.1f} s  epochs {r['epochs']:>2} "
                      f"(best {r['best_epoch']})  test macro-F1 {r['f1_macro']:.4f} micro {r['f1_micro']:.4f}  "
                      f"[load {r['load']}]", flush=True)

    import numpy as np

    result: dict[str, Any] = {**header, "load_end": load_avg(), "wall_s": round(time.perf_counter() - t0, 1),
                              "seeds": args.seeds, "rows": rows, "tolerance": TOLERANCE, "levers": []}
    print(f"\n{args.seeds} seeds per row and configuration; training seconds: train_oof_s (the row's model and its "
          f"{base.threshold_folds} out-of-fold heads) summed over the seeds; scores: test, lever - baseline, "
          "paired bootstrap 95% CI")
    for s in levers:
        per_row = []
        print(f"\n{s.name} ({', '.join(f'{k}={v}' for k, v in s.overrides.items())}) vs baseline")
        print(f"{'row':<10} {'baseline s':>10} {s.name + ' s':>14} {'ratio':>6}  {'epochs':>11}  {'best':>9}  "
              f"{'same':>4}  {'macro-F1 diff [95% CI]':<30} {'micro-F1 diff [95% CI]':<30}")
        for row in rows:
            a, b = runs[BASELINE][row], runs[s.name][row]
            folder = a[0]["folder"]
            c = compare(out / BASELINE / folder, out / s.name / folder, n_boot=args.n_boot)
            sa, sb = sum(x["train_s"] for x in a), sum(x["train_s"] for x in b)
            entry = {"row": row, "baseline_s": round(sa, 1), "lever_s": round(sb, 1), "ratio": round(sb / sa, 3),
                     "epochs": [float(np.mean([x["epochs"] for x in v])) for v in (a, b)],
                     "best_epoch": [float(np.mean([x["best_epoch"] for x in v])) for v in (a, b)],
                     "identical_seeds": sum(identical(x["run"], y["run"]) for x, y in zip(a, b)),
                     **{m: {k: round(c[m][k], 4) for k in ("score_a", "score_b", "diff", "ci_low", "ci_high")}
                        for m in ("f1_macro", "f1_micro")}}
            per_row.append(entry)
            print(f"{row:<10} {sa:10.1f} {sb:14.1f} {sb / sa:6.2f}  "
                  f"{entry['epochs'][0]:4.1f} -> {entry['epochs'][1]:4.1f}"
                  f"  {entry['best_epoch'][0]:3.1f} -> {entry['best_epoch'][1]:3.1f}  "
                  f"{entry['identical_seeds']}/{len(a)}  "
                  + "  ".join(f"{c[m]['score_a']:.4f} -> {c[m]['score_b']:.4f} {c[m]['diff']:+.4f} "
                              f"[{c[m]['ci_low']:+.4f}, {c[m]['ci_high']:+.4f}]" for m in ("f1_macro", "f1_micro")))
        total_a = sum(e["baseline_s"] for e in per_row)
        total_b = sum(e["lever_s"] for e in per_row)
        ok = keeps_quality(per_row)
        print(f"{'all':<10} {total_a:10.1f} {total_b:14.1f} {total_b / total_a:6.2f}")
        print(f"{s.name}: {'PASSES' if ok else 'FAILS'} (every row: |diff| <= {TOLERANCE} or 0 inside the CI, for "
              "macro- and micro-F1)")
        result["levers"].append({"name": s.name, "overrides": s.overrides, "rows": per_row,
                                 "ratio_all": round(total_b / total_a, 3), "passes": ok})

    # What any smaller patience would have done to the rows' models, read from the baseline's histories.
    n = sum(len(v) for v in runs[BASELINE].values())
    counts = {}
    for p in range(1, base.early_stopping_patience):
        changed, epochs = 0, 0
        for v in runs[BASELINE].values():
            for x in v:
                stop, best = stop_epoch(x["val_losses"], p)
                changed += best != x["best_epoch"]
                epochs += stop
        counts[p] = {"changed": changed, "epochs": epochs}
    full = sum(x["epochs"] for v in runs[BASELINE].values() for x in v)
    print(f"\nthe baseline's {n} row models (histories), under a smaller early_stopping_patience: models whose best "
          f"epoch it would miss, epochs trained (baseline {full})")
    print("  " + "  ".join(f"patience {p}: {c['changed']} missed, {c['epochs']} epochs" for p, c in counts.items()))
    result["smaller_patience"] = {"models": n, "baseline_epochs": full, **{str(p): c for p, c in counts.items()}}
    print(f"\nload average at the end {result['load_end']} (start {header['load_start']}); {cpu.model}; "
          f"wall {result['wall_s']:.0f} s")
    result["runs"] = {k: {r: [{kk: vv for kk, vv in x.items() if kk != "val_losses"} for x in v]
                          for r, v in d.items()} for k, d in runs.items()}
    (out / "grid_cost.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"written: {out / 'grid_cost.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
