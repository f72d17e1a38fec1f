"""What `--track` costs: the same tiny `genrefusion train` (the tests' synthetic catalog and tiny encoders, built
here; features cached first) without tracking, with `--track mlflow` into a fresh SQLite store and into the
existing one, and with `--track tensorboard`; each in its own process, so the tracker's import counts. Prints a
table of wall seconds and the ratio to the untracked run, plus what the `track` extra's packages take on disk.

    .venv/bin/python benchmarks/tracking_overhead.py [--epochs 3] [--repeats 2]

Timings depend on the machine's load: read the ratios, and the `uptime` printed with them.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXTRA = ("mlflow-skinny", "SQLAlchemy", "alembic", "tensorboardX")


def extra_footprint() -> tuple[int, float]:
    """The number of packages the extra adds to what pyproject's dependencies and test extra need (every transitive
    dependency not needed without it) and their installed size in MB, from the installed distributions' RECORDs."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    def closure(roots):
        seen, stack = set(), list(roots)
        while stack:
            name = stack.pop().lower().replace("_", "-")
            if name in seen:
                continue
            seen.add(name)
            try:
                requires = distribution(name).requires or []
            except PackageNotFoundError:  # a data carrier's declared dependency, deliberately not installed
                continue
            for r in requires:
                req = Requirement(r)
                if not req.marker or req.marker.evaluate({"extra": ""}):
                    stack.append(req.name)
        return seen

    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    direct = project["dependencies"] + [r for r in project["optional-dependencies"]["test"] if "[track]" not in r]
    track = closure(EXTRA)
    base = closure([Requirement(r).name for r in direct])
    added = sorted(track - base)
    size = sum(f.size or 0 for n in added for f in distribution(n).files or [])
    return len(added), size / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each variant (the table shows the fastest)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    import conftest

    root = Path(tempfile.mkdtemp(prefix="tracking-bench-"))
    catalog = conftest.build_synthetic_catalog(root / "catalog")
    bert, vit = conftest.build_tiny_bert(root / "bert"), conftest.build_tiny_vit(root / "vit")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}

    def train(name: str, *track: str) -> float:
        cmd = [sys.executable, "-m", "genrefusion", "train", *track, f"data={catalog}", "split=official",
               "modalities=any", "model=gmu", f"text_encoder={bert}", f"image_encoder={vit}", "pooling=mean",
               f"epochs={args.epochs}", f"cache_dir={root / 'cache'}", f"out={root / 'runs'}", f"name={name}"]
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        return time.perf_counter() - t

    train("warm-cache")  # encodes the features once; every timed run reads them
    variants = {
        "no tracking": lambda k: train(f"plain-{k}"),
        "mlflow, new store": lambda k: train(f"new-{k}", "--track", "mlflow", "--track-uri",
                                             f"sqlite:///{root / f'fresh-{k}.db'}"),
        "mlflow, existing store": lambda k: train(f"again-{k}", "--track", "mlflow"),
        "tensorboard": lambda k: train(f"tb-{k}", "--track", "tensorboard"),
    }
    train("store", "--track", "mlflow")  # creates runs/mlflow.db for the "existing store" rows
    best = {name: min(fn(k) for k in range(args.repeats)) for name, fn in variants.items()}
    base = best["no tracking"]
    print(f"uptime: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min load)")
    print(f"tiny train, {args.epochs} epochs, fastest of {args.repeats}, each in a new process")
    print(f"{'variant':<24} {'wall s':>8} {'x untracked':>12}")
    for name, s in best.items():
        print(f"{name:<24} {s:>8.2f} {s / base:>12.2f}")
    n, mb = extra_footprint()
    print(f"\nthe track extra adds {n} packages to requirements.lock, {mb:.0f} MB installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
