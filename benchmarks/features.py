"""Feature-extraction throughput of the offline encoders on the real sample, and what length-grouped batching buys.

Prints movies/s for the text encoder (minilm-l6) and the image encoder (efficientnet-lite0), each through the real
feature cache (a fresh temporary cache, so everything is encoded), then times the text encoder on the same plots
three ways: the cache's length-grouped batches, random batches padded to their own longest plot, and batches padded
to 512 tokens.

    .venv/bin/python benchmarks/features.py [--data ../shared/data/mmimdb-sample] [--limit 600]
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from genrefusion.data.loader import load_dataset
from genrefusion.encoders import create_encoder
from genrefusion.features.cache import dataset_features
from genrefusion.features.spec import FeatureSpec

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mmimdb-sample"


def time_batches(encoder, texts: list[str], batch_size: int, padding: str) -> float:
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            if padding == "longest":
                inputs = encoder.preprocess(chunk)
            else:
                inputs = dict(encoder.tokenizer(chunk, truncation=True, max_length=encoder.max_length,
                                                padding="max_length", return_tensors="pt"))
            encoder.encode(inputs)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--limit", type=int, default=600, help="movies per measurement (a random, fixed subset)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    full = load_dataset(args.data)
    rng = random.Random(0)
    text_ds = full.subset(rng.sample(range(len(full)), min(args.limit, len(full))))
    with_poster = [i for i, m in enumerate(full.movies) if m.has_poster]
    image_ds = full.subset(rng.sample(with_poster, min(args.limit, len(with_poster))))

    with tempfile.TemporaryDirectory() as cache:
        for name, ds in (("minilm-l6", text_ds), ("efficientnet-lite0", image_ds)):
            enc = create_encoder(name)
            t = time.perf_counter()
            table = dataset_features(ds, enc, FeatureSpec(cache_root=cache, progress=False))
            dt = time.perf_counter() - t
            n = int(table.present.sum())
            print(f"{name:<20} {n:>5} movies  {dt:7.1f} s  {n / dt:7.1f} movies/s  (cold cache, through the cache)")
            t = time.perf_counter()
            dataset_features(ds, enc, FeatureSpec(cache_root=cache, progress=False))
            print(f"{name:<20} warm cache: {time.perf_counter() - t:.2f} s")

    enc = create_encoder("minilm-l6")
    texts = [m.plot for m in text_ds.movies]
    lengths = enc.token_lengths(texts)
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    grouped = time_batches(enc, [texts[i] for i in order], args.batch_size, "longest")
    shuffled = texts[:]
    random.Random(1).shuffle(shuffled)
    random_longest = time_batches(enc, shuffled, args.batch_size, "longest")
    padded = time_batches(enc, shuffled, args.batch_size, "max_length")
    n = len(texts)
    print(f"\nminilm-l6 on {n} plots (mean {sum(lengths) / n:.0f} tokens, max {max(lengths)}), batch {args.batch_size}:")
    for label, dt in (("length-grouped (the cache)", grouped), ("random batches, pad to longest", random_longest),
                      ("pad every batch to 512", padded)):
        print(f"  {label:<32} {dt:7.1f} s  {n / dt:7.1f} movies/s  speed-up vs pad-to-512 x{padded / dt:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
