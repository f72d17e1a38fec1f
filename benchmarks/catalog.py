"""Catalog throughput: `genrefusion predict --input CATALOG --output OUT` against the encoders' own batched
throughput on the same rows, side by side in one run.

    .venv/bin/python benchmarks/catalog.py                          # 5,000 rows from the sample; trains a model first
    .venv/bin/python benchmarks/catalog.py --model runs/gmu/model --rows 20000
    .venv/bin/python benchmarks/catalog.py --synthetic --model M    # no sample: random plots, flat-colour posters

The catalog (CSV: id, plot, poster) is built in a temporary folder: --rows rows cycling over the sample's movies (each
row an id of its own; the posters copied beside the catalog), or synthetic rows. Without --model a small GMU over the
default offline encoders (minilm-l6 + efficientnet-lite0) is trained on the sample first (features come from the
default cache when it has them).

Then, one after the other on the same rows:
  encoders   each encoder of the model over the rows' plots / posters (posters decoded from their files), in
             batches of the encoder's CPU batch, plots grouped by length, under the model's precision: what the
             encoders alone manage, the ceiling for a catalog run;
  predict    `python -m genrefusion predict --input CATALOG --output OUT` in its own process; its movies/s is the
             command's throughput line (the catalog's chunks, without loading the model), its wall time is shown too.
It prints movies/s for both, their ratio (target: predict at least 80% of the encoders'), the load average, the
CPU model and its speed-relevant flags.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.8
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_line() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{os.cpu_count()} CPUs"
    name = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    found = re.search(r"^flags\s*:\s*(.+)$", info, re.M)
    flags = set(found.group(1).split()) if found else set()
    return (f"{os.cpu_count()} CPUs, {name.group(1) if name else 'unknown CPU'}; flags: "
            + (" ".join(f for f in FLAGS if f in flags) or "none of " + " ".join(FLAGS)))


def load_line() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def sample_movies(sample: Path) -> list[tuple[str, str, Path | None]]:
    """(imdb id, plot, poster or None) for every sample movie with a plot."""
    out = []
    for path in sorted((sample / "dataset").glob("*.json")):
        rec = json.loads(path.read_text())
        plot = rec.get("plot")
        plot = " ".join(plot) if isinstance(plot, list) else plot
        poster = path.with_suffix(".jpeg")
        if plot and plot.strip():
            out.append((path.stem, plot.strip(), poster if poster.exists() else None))
    return out


def build_catalog(folder: Path, rows: int, sample: Path | None) -> Path:
    """A CSV catalog of `rows` movies in `folder`, posters beside it."""
    posters = folder / "posters"
    posters.mkdir(parents=True)
    lines = []
    if sample is not None:
        movies = sample_movies(sample)
        for i in range(rows):
            mid, plot, poster = movies[i % len(movies)]
            name = ""
            if poster is not None:
                name = f"posters/{mid}.jpeg"
                if not (folder / name).exists():
                    shutil.copyfile(poster, folder / name)
            lines.append([f"r{i:06d}", plot, name])
    else:
        from PIL import Image

        sys.path.insert(0, str(REPO / "tests"))
        from tiny_models import WORDS

        rng = random.Random(0)
        for i in range(rows):
            name = ""
            if i % 3:
                name = f"posters/{i % 97}.jpg"
                if not (folder / name).exists():
                    Image.new("RGB", (180, 270), tuple(rng.randrange(256) for _ in range(3))).save(folder / name)
            lines.append([f"r{i:06d}", " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120))), name])
    path = folder / "catalog.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "plot", "poster"])
        w.writerows(lines)
    return path


def train_model(sample: Path, work: Path, movies: int) -> Path:
    """A GMU over the default offline encoders, trained on the first `movies` training movies of the sample."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_subset

    from genrefusion.config import Config
    from genrefusion.training.experiment import run_experiment

    data = make_subset(sample, work / "data", {"train": movies, "dev": movies // 4, "test": movies // 4})
    cfg = Config(data=str(data), split="official", modalities="any", model="gmu", epochs=3, out=str(work),
                 name="gmu").validate()
    run_experiment(cfg, run_dir=work / "gmu", log=None)
    return work / "gmu" / "model"


def encoders_alone(model: Path, catalog: Path, batch_size: int | None) -> tuple[float, dict[str, float]]:
    """Seconds for the model's encoders over the catalog's plots and posters (as the feature cache batches them),
    and the seconds per modality."""
    import torch

    from genrefusion.data.loader import load_catalog
    from genrefusion.data.posters import load_poster
    from genrefusion.inference.predictor import load_model

    predictor = load_model(model)
    if batch_size:
        predictor.batch_sizes = {m: batch_size for m in predictor.modalities}
    movies = load_catalog(catalog, require_labels=False).movies
    seconds = {}
    with torch.inference_mode():
        for m in predictor.modalities:
            items = [x.plot for x in movies if x.plot] if m == "text" else [x.poster for x in movies if x.poster]
            size, enc = predictor.batch_size(m), predictor.encoders[m]
            if m == "text":  # longest first, as the cache plans them
                items = [t for _, t in sorted(zip(enc.token_lengths(items), items), key=lambda p: -p[0])]
            predictor.encode(m, [load_poster(p) for p in items[:2]] if m == "image" else items[:2])  # warm-up
            t0 = time.perf_counter()
            for i in range(0, len(items), size):
                batch = items[i:i + size]
                predictor.encode(m, [load_poster(p) for p in batch] if m == "image" else batch)
            seconds[m] = time.perf_counter() - t0
            print(f"  {m:<5} {predictor.meta['encoders'][m]['name']}: {len(items):,} items in {seconds[m]:.1f} s "
                  f"({len(items) / seconds[m]:.1f}/s, batch {size}, {predictor.precision[m]})", flush=True)
    return sum(seconds.values()), seconds


def predict_command(model: Path, catalog: Path, out: Path, extra: list[str]) -> tuple[float, float, str]:
    """(wall seconds, the command's own movies/s, its stderr's last lines)."""
    cmd = [sys.executable, "-m", "genrefusion", "predict", "--model", str(model), "--input", str(catalog),
           "--output", str(out), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rate = re.search(r"^[\d,]+ movies in [\d.]+ s: ([\d.]+) movies/s", proc.stderr, re.M)
    tail = "\n".join(line for line in proc.stderr.splitlines() if line.startswith(("predicted", *"0123456789")))
    return wall, float(rate.group(1)), tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5000, help="catalog rows (default 5,000)")
    ap.add_argument("--model", help="saved model folder (default: train a small GMU on the sample)")
    ap.add_argument("--sample", default=str(REPO.parent / "shared" / "data" / "mmimdb-sample"))
    ap.add_argument("--synthetic", action="store_true", help="synthetic rows instead of the sample's movies")
    ap.add_argument("--train-movies", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=None, help="predict's --chunk (default: its own)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="items per encoder call, on both sides (default: the encoders' CPU batch)")
    args = ap.parse_args(argv)

    sample = None if args.synthetic else Path(args.sample)
    if sample is not None and not (sample / "split.json").exists():
        raise SystemExit(f"no sample at {sample} (give --sample, or --synthetic with --model)")
    if args.model is None and sample is None:
        raise SystemExit("--synthetic needs --model (training uses the sample)")
    work = Path(tempfile.mkdtemp(prefix="catalog-bench-"))
    try:
        print(f"machine: {cpu_line()}\n{load_line()} at the start", flush=True)
        model = Path(args.model) if args.model else train_model(sample, work / "train", args.train_movies)
        catalog = build_catalog(work / "catalog", args.rows, sample)
        print(f"catalog: {args.rows:,} rows ({'synthetic' if sample is None else 'from ' + str(sample)}), "
              f"model {model}", flush=True)
        extra = [*(["--chunk", str(args.chunk)] if args.chunk else []),
                 *(["--batch-size", str(args.batch_size)] if args.batch_size else [])]

        print("encoders alone:", flush=True)
        enc_seconds, _ = encoders_alone(model, catalog, args.batch_size)
        enc_rate = args.rows / enc_seconds
        load_mid = load_line()
        print("predict --input:", flush=True)
        wall, rate, tail = predict_command(model, catalog, work / "pred.csv", extra)
        print("  " + tail.replace("\n", "\n  "))

        print(f"\n{'':<16} {'movies/s':>9}")
        print(f"{'encoders alone':<16} {enc_rate:>9.1f}   ({enc_seconds:.1f} s for {args.rows:,} rows)")
        print(f"{'predict --input':<16} {rate:>9.1f}   (wall {wall:.1f} s with start-up and model loading: "
              f"{args.rows / wall:.1f} movies/s)")
        ratio = rate / enc_rate
        print(f"ratio {ratio:.2f} (target >= {TARGET_RATIO:.2f}: {'yes' if ratio >= TARGET_RATIO else 'NO'})")
        print(f"{load_mid} between the two; {load_line()} at the end")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
