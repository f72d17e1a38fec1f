"""`genrefusion demo` (what `make demo` runs): the thesis grid, then the recommended preset over the same cached
features, side by side, ending with the model worth using and how to use it.

1. The thesis grid (`--preset thesis`), faithful to the thesis's recipe.
2. The recommended preset's grid: its unimodal rows first, then its fusions over the text and image slots whose
   unimodal rows score best on VALIDATION (grid.run_grid with fuse=auto; the test split never enters the choice).
   The encoders are the thesis grid's, so their features come from the cache (the recommended preset pools text by
   its mean, so the text slots are encoded once more on the first run).
3. One table, every row, thesis recipe vs recommended (test macro/micro-F1), and a one-line reading of it, both
   computed from the two grid folders' files; each grid's report links the other.
4. The best model of either grid by validation score (grid.validation_score), and the exact `genrefusion serve` and
   `genrefusion predict` commands for it, with a real poster and plot from the data's test split.

Everything is written under one folder (default runs/demo-<time>/): thesis/, recommended/ and demo.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..atomic import write_text
from ..config import CHOICES
from ..data.loader import DataSpec
from ..evaluation.report import write_report
from ..evaluation.runs import read_grid
from .commands import grid_data

if TYPE_CHECKING:  # a type only: the parser imports this module, and the grid imports torch
    from ..training.grid import GridSpec

GRIDS = (("thesis", "thesis recipe"), ("recommended", "recommended"))


def _row_scores(grid: dict[str, Any], key: str) -> dict[str, float]:
    out = {}
    for r in grid["rows"]:
        v = r["test"].get(key)
        out[r["row"]] = v["mean"] if isinstance(v, dict) else v
    return out


def side_by_side(thesis: dict[str, Any], recommended: dict[str, Any]) -> tuple[str, str]:
    """(table, reading) from the two grids' grid.json: every row's test macro/micro-F1 under both recipes, and one
    line saying what changed."""
    t_label = {r["row"]: r["label"] for r in thesis["rows"]}
    r_label = {r["row"]: r["label"] for r in recommended["rows"]}
    names = [r["row"] for r in thesis["rows"]] + [r["row"] for r in recommended["rows"] if r["row"] not in t_label]
    tm, tu = _row_scores(thesis, "f1_macro"), _row_scores(thesis, "f1_micro")
    rm, ru = _row_scores(recommended, "f1_macro"), _row_scores(recommended, "f1_micro")
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    head = (f"{'row':<18} {'thesis recipe':<42} {'macro':>7} {'micro':>7}   {'recommended':<42} {'macro':>7} "
            f"{'micro':>7}")
    lines = ["Test F1, thesis recipe vs recommended preset (same data, same encoders' cached features)", head,
             "-" * len(head)]
    for n in names:
        enc = lambda lab: lab.split("[", 1)[1].rstrip("]") if lab and "[" in lab else (lab or "-")  # noqa: E731
        lines.append(f"{n:<18} {enc(t_label.get(n)):<42} {f(tm.get(n)):>7} {f(tu.get(n)):>7}   "
                     f"{enc(r_label.get(n)):<42} {f(rm.get(n)):>7} {f(ru.get(n)):>7}")
    both = [n for n in names if tm.get(n) is not None and rm.get(n) is not None]
    if not both:
        return "\n".join(lines), "No row was trained under both recipes."
    mean = lambda d: sum(d[n] for n in both) / len(both)  # noqa: E731
    up_macro = sum(rm[n] > tm[n] for n in both)
    up_micro = sum(ru[n] > tu[n] for n in both if tu.get(n) is not None and ru.get(n) is not None)
    best_t, best_r = max(both, key=lambda n: tm[n]), max(both, key=lambda n: rm[n])
    reading = (f"Reading: the recommended preset scores higher macro-F1 on {up_macro} of {len(both)} rows and higher "
               f"micro-F1 on {up_micro} (mean macro-F1 {mean(tm):.4f} -> {mean(rm):.4f}, micro-F1 {mean(tu):.4f} -> "
               f"{mean(ru):.4f}); best row on test: {best_t} {tm[best_t]:.4f} under the thesis recipe, {best_r} "
               f"{rm[best_r]:.4f} under the recommended one.")
    return "\n".join(lines), reading


def best_model(grid_dirs: dict[str, Path]) -> dict[str, Any]:
    """The run with the best validation score (grid.validation_score) over every row and seed of the grids."""
    from ..training.grid import validation_score  # lazy: keeps cli.demo free of safetensors, scipy, sklearn, torch

    best = None
    for name, d in grid_dirs.items():
        g = read_grid(d)
        for r in g.rows:
            for run in g.run_dirs(r):
                s = validation_score(run)
                if best is None or s > best["val_score"]:
                    best = {"grid": name, "row": r["row"], "label": r["label"], "run": run, "val_score": s,
                            "test_f1_macro": g.metrics[r["row"]][g.run_dirs(r).index(run)]["test"]["f1_macro"]}
    assert best is not None
    return best


def example_movie(data: DataSpec):
    """A real test movie with a poster and a plot (the shortest plot of at least 12 words, for a readable command)."""
    ds = data.load()
    movies = [ds.movies[i] for i in ds.splits.get("test", [])] or ds.movies
    both = [m for m in movies if m.poster is not None and m.plot is not None]
    if not both:
        return None
    long_enough = [m for m in both if len(m.plot.split()) >= 12] or both
    return min(long_enough, key=lambda m: (len(m.plot), m.id))


def usage_commands(model_dir: Path, movie) -> list[str]:
    q = lambda p: shlex.quote(str(p))  # noqa: E731
    cmds = [f"genrefusion serve --model {q(model_dir)}"]
    if movie is not None:
        cmds.append(f"genrefusion predict --model {q(model_dir)} --poster {q(movie.poster)} --plot {q(movie.plot)}")
    cmds.append(f"genrefusion evaluate --model {q(model_dir)} --data YOUR_LABELLED.csv --score-split all")
    return cmds


def run_demo(grid: GridSpec, out: str | Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run both grids into `out` and print the comparison (see the module docstring); returns what it printed
    (table, reading, best model, commands) and the folders. `grid` says what both grids share (the data, the
    seeds, the cache, the slot and config overrides), so both recipes see the same encoders and changes; the
    demo sets each one's preset, fused slots, folder and report link."""
    from ..training.grid import AUTO, run_grid  # lazy: keeps cli.demo free of safetensors, scipy, sklearn, torch

    t0 = time.perf_counter()
    out = Path(out) if out else Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    dirs = {name: out / name for name, _ in GRIDS}
    grids, seconds = {}, {}
    for (name, label), (other, other_label) in zip(GRIDS, reversed(GRIDS)):
        log(f"\n== {label} grid ==")
        t = time.perf_counter()
        grids[name] = run_grid(dataclasses.replace(
            grid, preset=name, out=dirs[name], report=False,
            fuse=(AUTO,) if name == "recommended" else ("BERT", "ResNet50"),
            related={"label": other_label, "path": os.path.relpath(dirs[other], dirs[name])}), log=log)
        seconds[name] = time.perf_counter() - t
    reports = {name: write_report(dirs[name]) for name in dirs}  # after both: each links the other
    table, reading = side_by_side(grids["thesis"], grids["recommended"])
    best = best_model(dirs)
    movie = example_movie(grid.data)
    model_dir = best["run"] / "model"
    cmds = usage_commands(model_dir, movie)
    choice = grids["recommended"].get("fuse_choice", {})
    lines = ["", table, "", reading, "",
             f"Recommended fusions fuse {choice.get('text')} + {choice.get('image')} ({choice.get('by')}).",
             f"Best model by validation macro-F1: {best['label']} ({best['grid']} preset), validation "
             f"{best['val_score']:.4f} (thresholds cross-fitted), test {best['test_f1_macro']:.4f}.",
             f"Its model card: {model_dir / 'README.md'}", "", "Use it:", *(f"  {c}" for c in cmds), "",
             "Reports: " + "  ".join(str(reports[n]["html"]) for n in dirs),
             f"Time: thesis grid {seconds['thesis']:.1f} s, recommended grid {seconds['recommended']:.1f} s, "
             f"total {time.perf_counter() - t0:.1f} s."]
    text = "\n".join(lines)
    log(text)
    write_text(out / "demo.md", "# genrefusion demo\n\n```\n" + text.strip() + "\n```\n")
    return {"out": str(out), "table": table, "reading": reading, "best": {**best, "run": str(best["run"])},
            "commands": cmds, "seconds": seconds, "fuse_choice": choice}


def cmd_demo(args) -> int:
    from ..training.grid import GridSpec  # here: the grid imports torch, which the parser must not

    # a bare NAME fills the slot the thesis fuses, as in `genrefusion grid`
    slots = [v if "=" in v else f"{default}={v}" for values, default in ((args.text_encoder, "BERT"),
                                                                         (args.image_encoder, "ResNet50"))
             for v in values]
    data, overrides = grid_data(args)
    run_demo(GridSpec(data, config_overrides=overrides, cache_dir=args.cache_dir, slot_overrides=slots,
                      seeds=args.seeds), out=args.out)
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the thesis grid, then the recommended preset, side by side, and the best model")
    p.add_argument("--data", required=True, help="MM-IMDb folder or catalog")
    p.add_argument("--split", choices=CHOICES["split"], default="official")
    p.add_argument("--modalities", choices=CHOICES["modalities"], default="any")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", default=None, help="folder of both grids (default runs/demo-<time>)")
    p.add_argument("--text-encoder", action="append", default=[], metavar="[SLOT=]NAME",
                   help="fill a text slot in both grids (as `grid --text-encoder`)")
    p.add_argument("--image-encoder", action="append", default=[], metavar="[SLOT=]NAME",
                   help="fill an image slot in both grids (as `grid --image-encoder`)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides applied to every model of both grids")
    p.set_defaults(func=cmd_demo)
