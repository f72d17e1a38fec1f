"""Which pooling and input size of dinov2-vits14 carry the most genre signal, chosen on training movies only.

The posters of a seeded random LIMIT of the TRAIN split (stratified split over the movies with a poster and a plot,
the split the grids train on: none of their validation or test movies is read) are encoded at each input size; each
pooling of the same pass (the encoder's `pooling` option: the others are its companions, cached in the same pass)
is then probed with genrefusion.evaluation.probe (5-fold cross-validated linear and cosine-kNN probes, macro
average precision against chance). The folds are drawn with SEEDS seeds and the scores averaged; "paired" compares a
configuration's linear AP with the registered default's, seed by seed over the same folds. Features go through the
feature cache (--cache-dir), so a rerun encodes nothing.

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dinov2_pooling.py \\
        --data ../shared/data/mmimdb-sample --cache-dir /tmp/dino-cache --limit 300
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from genrefusion.data.loader import load_dataset
from genrefusion.evaluation import probe
from genrefusion.features.cache import dataset_features
from genrefusion.features.spec import FeatureSpec

ENCODER = "dinov2-vits14"


def mean_cosine(x: np.ndarray) -> float:
    """Mean cosine between the vectors of distinct movies (1: all point one way, which starves a kNN probe)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    n = len(x)
    return float((sim.sum() - np.trace(sim)) / (n * (n - 1)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--limit", type=int, default=300, help="train posters probed (a seeded random draw)")
    ap.add_argument("--sizes", default="224,280,336,448,518")
    ap.add_argument("--poolings", default="cls,mean,cls+mean")
    ap.add_argument("--seeds", type=int, default=5, help="fold seeds averaged over")
    ap.add_argument("--reference", default="efficientnet-lite0", help="another encoder probed over the same posters "
                                                                      "('' for none)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    command = "benchmarks/dinov2_pooling.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    t_all = time.perf_counter()

    dataset = load_dataset(args.data, "stratified", "both")
    train = dataset.subset(dataset.splits["train"])
    movies = probe.probe_movies(train, ("image",), args.limit, seed=0)
    y = train.labels(movies)
    features = FeatureSpec(cache_root=args.cache_dir, progress=False)

    configs = [(ENCODER, {"image_size": int(s), "pooling": p}) for s in args.sizes.split(",")
               for p in args.poolings.split(",")]
    if args.reference:
        configs.append((args.reference, {}))
    rows = []
    for name, kwargs in configs:
        encoder = features.create_encoder(name, **kwargs)
        t = time.perf_counter()
        table = dataset_features(train.subset(movies), encoder, features)
        seconds_features = time.perf_counter() - t
        x = table.pooled.numpy()
        t = time.perf_counter()
        runs = [probe.probe_features(x, y, seed=seed) for seed in range(args.seeds)]
        seconds_probe = time.perf_counter() - t
        label = name if not kwargs else f"{kwargs['pooling']} @ {kwargs['image_size']}"
        row = {"config": label, "encoder": name, "kwargs": kwargs, "dim": int(x.shape[1]),
               "fingerprint_pooling": encoder.fingerprint().get("pooling", "cls") if kwargs else None,
               "n": runs[0]["n"], "genres": len(runs[0]["genres"]), "chance": runs[0]["chance"],
               "linear_by_seed": [r["linear"] for r in runs], "knn_by_seed": [r["knn"] for r in runs],
               "linear": float(np.mean([r["linear"] for r in runs])), "knn": float(np.mean([r["knn"] for r in runs])),
               "mean_cosine": mean_cosine(x), "encoded_now": table.encoded_now,
               "seconds_features": seconds_features, "seconds_probe": seconds_probe}
        rows.append(row)
        print(f"{label:22s} linear {row['linear']:.4f}  kNN {row['knn']:.4f}  chance {row['chance']:.4f}  "
              f"n {row['n']}  mean cos {row['mean_cosine']:.3f}  features {seconds_features:6.1f} s "
              f"({table.encoded_now} encoded)  probes {seconds_probe:5.1f} s", flush=True)

    base = next(r for r in rows if r["kwargs"] == {"image_size": 224, "pooling": "cls"}) if any(
        r["kwargs"] == {"image_size": 224, "pooling": "cls"} for r in rows) else rows[0]
    for r in rows:
        diff = np.array(r["linear_by_seed"]) - np.array(base["linear_by_seed"])
        r["paired_linear_vs_base"] = {"mean": float(diff.mean()), "min": float(diff.min()), "max": float(diff.max())}

    print(f"\ndinov2-vits14 pooling x input size, {date.today().isoformat()}: {rows[0]['n']} train posters, "
          f"{rows[0]['genres']} genres scored, macro-AP averaged over {args.seeds} fold seeds; paired = linear AP "
          f"minus {base['config']}'s over the same folds (mean [min, max] over the seeds)")
    print(f"  {command}")
    print("| config | dim | linear | kNN | chance | n | mean cos | paired linear | seconds (encode + probes) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in rows:
        p = r["paired_linear_vs_base"]
        print(f"| {r['config']} | {r['dim']} | {r['linear']:.4f} | {r['knn']:.4f} | {r['chance']:.4f} | {r['n']} | "
              f"{r['mean_cosine']:.3f} | {p['mean']:+.4f} [{p['min']:+.4f}, {p['max']:+.4f}] | "
              f"{r['seconds_features']:.0f} + {r['seconds_probe']:.0f} |")
    print(f"[{time.perf_counter() - t_all:.0f} s]")
    if args.json:
        Path(args.json).write_text(json.dumps({"date": date.today().isoformat(), "command": command,
                                               "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
