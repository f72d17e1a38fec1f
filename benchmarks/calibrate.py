"""Calibrated `auto` against an earlier commit's table-driven `auto`, side by side in one run.

    git worktree add /tmp/base 6281804          # the commit issue 25 starts from
    .venv/bin/python benchmarks/calibrate.py --baseline /tmp/base [--movies N] [--rounds 1]

Each configuration runs `genrefusion features` over the same movies (every movie of the sample that has a plot, a
poster and genres, or the first --movies of them, as a CSV catalog; under calibrate.MIN_WORK of them nothing is
calibrated) with the four default offline encoders, in two calls (minilm-l6 +
efficientnet-lite0, then mpnet-base + dinov2-vits14), each into an empty feature cache:

  baseline+table   the baseline commit as it is (its cpu_precision.json, measured on other CPUs)
  baseline-table   the baseline with the table's speed entries hidden, as on any CPU they were not measured on
  calibrated       this checkout with the speed entries hidden too; its time includes calibrating each encoder

Hidden means a copy of the package whose cpu_precision.json has "speed": [] (the downstream-quality evidence stays:
it does not depend on the CPU). The offline weights are built once beforehand and shared, so every configuration
times encoding (and, for the calibrated one, calibration) only. Configurations alternate within each round; with
--rounds above 1 each one's best round counts. Prints each configuration's wall time, the backend, precision and
seconds of each encoder, the ratios, the load average and the CPU's flags, and the bound no choice can beat here:
the baselines' fastest time per encoder plus the rest of the run (start-up, data, writing), without calibrating.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catalog import cpu_line, load_line  # noqa: E402  (the CPU and load lines every CPU benchmark prints)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mmimdb-sample"
CALLS = (("minilm-l6", "efficientnet-lite0"), ("mpnet-base", "dinov2-vits14"))
LINE = re.compile(r"^\s*(text|image) (\S+): .*?(?:\((\S+), (\S+)\))?, ([\d.]+) s$")


def write_catalog(data: Path, n: int | None, dest: Path) -> Path:
    """The first n (None: all) movies of the MM-IMDb folder with a plot and a poster, as a CSV catalog with the
    posters copied beside it (a catalog's posters must be inside its folder)."""
    (dest / "posters").mkdir(parents=True, exist_ok=True)
    split = json.loads((data / "split.json").read_text())
    ids = [i for part in ("train", "dev", "test") for i in split.get(part, [])]
    rows = []
    for i in ids:
        meta, poster = data / "dataset" / f"{i}.json", data / "dataset" / f"{i}.jpeg"
        if not (meta.exists() and poster.exists()):
            continue
        plot = json.loads(meta.read_text()).get("plot") or []
        genres = json.loads(meta.read_text()).get("genres") or []
        if plot and genres:
            shutil.copyfile(poster, dest / "posters" / poster.name)
            rows.append({"id": i, "plot": " ".join(plot), "poster": f"posters/{poster.name}",
                         "genres": "|".join(genres), "split": "train"})
        if len(rows) == n:
            break
    path = dest / "catalog.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "plot", "poster", "genres", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


def hidden_copy(src: Path, dest: Path) -> Path:
    """A copy of the package under `src` (a src/ folder) whose cpu_precision.json has no speed entries."""
    shutil.copytree(src / "genrefusion", dest / "genrefusion", ignore=shutil.ignore_patterns("__pycache__"))
    table = next((dest / "genrefusion").rglob("cpu_precision.json"))
    content = json.loads(table.read_text())
    content["speed"] = []
    table.write_text(json.dumps(content, indent=1))
    return dest


def run_features(pythonpath: Path, catalog: Path, cache: Path, models: Path) -> tuple[float, dict[str, tuple]]:
    """Wall time of the two `features` calls into the empty cache `cache`, and how each encoder ran (a label and
    its seconds)."""
    cache.mkdir(parents=True)
    (cache / "models").symlink_to(models)
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "GENREFUSION_CACHE": str(models.parent)}
    how, t0 = {}, time.perf_counter()
    for text, image in CALLS:
        out = subprocess.run([sys.executable, "-m", "genrefusion", "features", "--data", str(catalog), "--text", text,
                              "--image", image, "--cache-dir", str(cache)],
                             env=env, capture_output=True, text=True, check=False)
        if out.returncode:
            raise SystemExit(f"features failed under {pythonpath}:\n{out.stderr[-3000:]}")
        for line in out.stdout.splitlines():
            if m := LINE.match(line):
                how[m.group(2)] = (f"{m.group(3) or '-'} {m.group(4) or ''}".strip(), float(m.group(5)))
    return time.perf_counter() - t0, how


def best_choice(*runs: tuple[float, dict[str, tuple]]) -> float:
    """Seconds of a run that used each encoder's fastest way among `runs` (wall time, per-encoder (label, s)) at no
    cost: the first run's time outside the encoders plus the fastest seconds per encoder."""
    wall, how = runs[0]
    rest = wall - sum(sec for _, sec in how.values())
    return rest + sum(min(r[1][e][1] for r in runs if e in r[1]) for e in how)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, type=Path, help="a worktree of the commit to compare with")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--movies", type=int, default=None, help="default: all with a plot, a poster and genres")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-calibrate-"))
    try:
        catalog = write_catalog(args.data, args.movies, work)
        configs = {"baseline+table": args.baseline / "src",
                   "baseline-table": hidden_copy(args.baseline / "src", work / "base-hidden"),
                   "calibrated": hidden_copy(REPO / "src", work / "calibrated")}
        models = work / "shared" / "models"
        models.mkdir(parents=True)
        movies = len(catalog.read_text(encoding="utf-8").splitlines()) - 1  # less the header
        print(f"{cpu_line()}\n{movies} movies; building the offline weights once ... ({load_line()})")
        (work / "warm").mkdir()
        run_features(configs["calibrated"], write_catalog(args.data, 4, work / "warm"), work / "warm" / "cache", models)
        best: dict[str, tuple[float, dict]] = {}
        for r in range(args.rounds):
            for name, path in configs.items():
                seconds, how = run_features(path, catalog, work / f"cache-{name}-{r}", models)
                print(f"round {r}: {name:<15} {seconds:7.1f} s  ({load_line()})  " +
                      ", ".join(f"{e}: {label} {sec:.0f} s" for e, (label, sec) in how.items()))
                if name not in best or seconds < best[name][0]:
                    best[name] = (seconds, how)
        base, hidden, cal = (best[k][0] for k in ("baseline+table", "baseline-table", "calibrated"))
        print(f"\ncalibrated {cal:.1f} s; baseline with its table {base:.1f} s (x{base / cal:.2f}); baseline with the "
              f"table hidden {hidden:.1f} s (x{hidden / cal:.2f})\ntargets: >= x1.00 and >= x1.30; {load_line()}")
        bound = best_choice(best["baseline+table"], best["baseline-table"])
        print(f"bound: the fastest backend per encoder from the baselines' own times, without calibrating, "
              f"{bound:.1f} s: x{base / bound:.2f} over the table, x{hidden / bound:.2f} over the table hidden")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
