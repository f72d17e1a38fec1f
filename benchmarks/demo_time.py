"""Wall time of `make demo`'s work (`genrefusion demo` on the sample, stratified split, both modalities): cold (an
empty feature cache, so every encoder runs) and then warm (the same cache), in one run, with the machine's load.

The targets (issue 13): cold within the speed issue's bound (3 minutes; 6 if that issue is not merged), warm under
90 seconds. Encoder weights come from the local model store either way (nothing is downloaded).

    PYTHONPATH=src python benchmarks/demo_time.py --data ../shared/data/mmimdb-sample
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def run(data: str, cache: str, out: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "genrefusion", "demo", "--data", data, "--split", "stratified",
                    "--modalities", "both", "--cache-dir", cache, "--out", out], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache-dir", default=None, help="default: a new empty folder (a cold first run)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or os.path.join(tmp, "cache")
        load0 = os.getloadavg()[0]
        cold = run(args.data, cache, os.path.join(tmp, "cold"))
        load1 = os.getloadavg()[0]
        warm = run(args.data, cache, os.path.join(tmp, "warm"))
        load2 = os.getloadavg()[0]
    print(f"{'run':<6} {'seconds':>8} {'target':>8}  1-min load before/after")
    print(f"{'cold':<6} {cold:>8.1f} {'<= 180':>8}  {load0:.1f} / {load1:.1f}")
    print(f"{'warm':<6} {warm:>8.1f} {'< 90':>8}  {load1:.1f} / {load2:.1f}")
    print(f"cold / warm = {cold / warm:.2f}; CPUs: {os.cpu_count()}")


if __name__ == "__main__":
    main()
