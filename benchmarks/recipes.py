"""Thesis recipe vs the recommended recipe, all nine models, several seeds, on the same data and features.

1. Both presets on `--split stratified --modalities both` (the sample's benchmark setting), N seeds each:
   side-by-side macro/micro-F1 (mean ± std over seeds) for every row.
2. The recommended fusions over the best text encoder (chosen by the recommended unimodal rows' mean VALIDATION
   macro-F1; the thesis likewise fused its best text model) with the best image encoder, and with both image
   encoders side by side (the joined slot ResNet50+ViT); then the best fusion vs the best unimodal row (both chosen
   by mean validation macro-F1, never test), with paired-bootstrap 95% intervals of the test difference over
   seed-averaged scores.
3. With --any: the recommended fusions trained on every movie (`--modalities any`, missing posters handled by the
   learned stand-in and modality dropout), test scores for movies with both modalities and with text only.

    .venv/bin/python benchmarks/recipes.py --data ../shared/data/mmimdb-sample --seeds 5 --cache-dir /tmp/gfcache
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from genrefusion.evaluation.compare import compare
from genrefusion.data.loader import DataSpec
from genrefusion.training.grid import GridSpec, run_grid
from genrefusion.evaluation.runs import read_metrics


def _fmt(m: dict, key: str) -> str:
    v = m[key]
    return f"{v['mean']:.4f} ± {v['std']:.4f}" if isinstance(v, dict) else f"{v:.4f}"


def _val_macro(out: Path, row: dict) -> float:
    return float(np.mean([read_metrics(out / r)["val"]["f1_macro"] for r in row["runs"]]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default="runs/recipes")
    ap.add_argument("--any", action="store_true", help="also train the recommended fusions on --modalities any")
    ap.add_argument("--any-seeds", type=int, default=1, help="seeds for the --any part (it trains on 2.5x the movies)")
    args = ap.parse_args()
    out = Path(args.out)
    grids = {}
    for preset in ("thesis", "recommended"):
        t = time.perf_counter()
        grids[preset] = run_grid(GridSpec(DataSpec(args.data, "stratified", "both"), preset=preset,
                                          seeds=args.seeds, cache_dir=args.cache_dir, out=out / preset,
                                          report=False), log=lambda *_: None)
        print(f"{preset}: {time.perf_counter() - t:.0f} s", flush=True)

    print(f"\nTest F1 on {args.data} (stratified, both modalities), mean ± std over {args.seeds} seeds")
    print(f"{'model':<46} {'thesis macro':>17} {'recommended macro':>19} {'thesis micro':>17} {'recommended micro':>19}")
    improved = 0
    for a, b in zip(grids["thesis"]["rows"], grids["recommended"]["rows"]):
        print(f"{b['label']:<46} {_fmt(a['test'], 'f1_macro'):>17} {_fmt(b['test'], 'f1_macro'):>19} "
              f"{_fmt(a['test'], 'f1_micro'):>17} {_fmt(b['test'], 'f1_micro'):>19}")
        improved += b["test"]["f1_macro"]["mean"] > a["test"]["f1_macro"]["mean"]
    print(f"recommended improves macro-F1 on {improved}/9 models")

    rec = grids["recommended"]
    rec_out = out / "recommended"
    uni = [r for r in rec["rows"] if r["kind"] == "unimodal"]
    best_slot = {m: max((r for r in uni if r["model"] == m), key=lambda r: _val_macro(rec_out, r))
                 for m in ("text", "image")}
    # The fusions read the best text encoder with the best image encoder, and with both image encoders side by side
    # (a joined slot: two frozen views of the poster for one head).
    fused_runs = []
    for image_slot in dict.fromkeys((best_slot["image"]["row"], "ResNet50+ViT")):
        fuse = (best_slot["text"]["row"], image_slot)
        fused_out = out / f"recommended-fuse-{'-'.join(fuse).replace('+', '-')}"
        t = time.perf_counter()
        fused = run_grid(GridSpec(DataSpec(args.data, "stratified", "both"), preset="recommended", seeds=args.seeds,
                                  cache_dir=args.cache_dir, out=fused_out, report=False,
                                  rows=["early", "late", "attention", "gmu", "cross-attention"], fuse=fuse),
                         log=lambda *_: None)
        print(f"\nrecommended fusions over {' + '.join(fuse)} ({time.perf_counter() - t:.0f} s):")
        for r in fused["rows"]:
            print(f"{r['label']:<66} macro {_fmt(r['test'], 'f1_macro')}  micro {_fmt(r['test'], 'f1_micro')}")
        fused_runs += [(fused_out, r) for r in fused["rows"]]
    candidates = [(rec_out, r) for r in rec["rows"]] + fused_runs
    best = {kind: max((c for c in candidates if c[1]["kind"] == kind), key=lambda c: _val_macro(*c))
            for kind in ("unimodal", "fusion")}
    print(f"\nbest by validation macro-F1: unimodal {best['unimodal'][1]['label']}, fusion {best['fusion'][1]['label']}")
    row_dir = lambda c: c[0] / Path(c[1]["runs"][0]).parent  # noqa: E731
    for ensemble in (False, True):
        res = compare(row_dir(best["unimodal"]), row_dir(best["fusion"]), ensemble=ensemble)
        print(f" {'each row as the ensemble of its ' + str(args.seeds) + ' seeds' if ensemble else 'seed-averaged scores'}:")
        for metric in ("f1_macro", "f1_micro"):
            m = res[metric]
            print(f"  {metric}: unimodal {m['score_a']:.4f}  fusion {m['score_b']:.4f}  diff {m['diff']:+.4f}  "
                  f"95% CI [{m['ci_low']:+.4f}, {m['ci_high']:+.4f}]")

    if args.any:
        t = time.perf_counter()
        g = run_grid(GridSpec(DataSpec(args.data, "stratified", "any"), preset="recommended", seeds=args.any_seeds,
                              cache_dir=args.cache_dir, out=out / "recommended-any", report=False,
                              rows=[best_slot["text"]["row"], "early", "late", "attention", "gmu", "cross-attention"],
                              fuse=(best_slot["text"]["row"], best_slot["image"]["row"])), log=lambda *_: None)
        print(f"\nrecommended, --modalities any ({sum(g['n'].values())} movies, {time.perf_counter() - t:.0f} s): "
              "test F1 macro / micro by what the movie has (seed 0)")
        for row in g["rows"]:
            m = read_metrics(out / "recommended-any" / row["runs"][0])
            parts = [f"{k} (n={v['n']}) {v['f1_macro']:.4f} / {v['f1_micro']:.4f}"
                     for k, v in m.get("test_by_modality", {}).items()]
            print(f"  {row['label']:<46} all {m['test']['f1_macro']:.4f} / {m['test']['f1_micro']:.4f}  " + "  ".join(parts))


if __name__ == "__main__":
    main()
