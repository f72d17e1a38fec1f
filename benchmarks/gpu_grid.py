"""Full-size benchmark: the thesis grid with the thesis's encoder architectures on synthetic MM-IMDb-sized data.

1. builds BERT-base, RoBERTa-base, ResNet-50 and ViT-B/16 from their transformers configs with random weights
   (nothing is downloaded) and saves them as local model folders, with tokenizers made for the synthetic text;
2. writes a synthetic MM-IMDb folder in the official layout: 25,959 movies split 15,552 / 2,608 / 7,799, plots of
   200-500 words, 224 x 320 JPEG posters (the real posters are about 220 x 320);
3. encodes every movie with each encoder through the feature cache, exactly as `genrefusion features` does, and
   reports the throughput in movies/s;
4. trains and evaluates the nine models of the thesis grid (preset `thesis`) on those features and reports the time.

With random weights the scores are meaningless; the timings are the point. Everything is built in --work and reused
by a second run (only the feature cache is cleared, so the encoders are timed again). --small runs a tiny version
(small models, a few hundred movies) that finishes on a CPU in a minute or two.

    benchmarks/gpu_grid.sh            # on a GPU machine: target under 10 minutes on one H100
    benchmarks/gpu_grid.sh --small    # anywhere, as a check of the script itself
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from genrefusion.data.labels import GENRES

MMIMDB_SPLIT = {"train": 15_552, "dev": 2_608, "test": 7_799}  # 25,959 movies
SLOTS = ("BERT", "RoBERTa", "ResNet50", "ViT")


# -- synthetic text ------------------------------------------------------------------------------------------------
def vocabulary(n: int = 6000, seed: int = 0) -> list[str]:
    """Pronounceable pseudo-words; every one is a single token for both tokenizers built below."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def plot_text(rng: random.Random, words: list[str], lo: int, hi: int) -> str:
    n = rng.randint(lo, hi)
    out = rng.choices(words, k=n)
    for i in range(12, n, 15):  # sentences, so the text is not one run-on line
        out[i] += "."
    return " ".join(out) + "."


# -- models --------------------------------------------------------------------------------------------------------
def build_models(dest: Path, words: list[str], corpus: list[str], small: bool) -> dict[str, Path]:
    """Local folders of randomly initialised encoders: the thesis's four, or tiny ones with --small."""
    from transformers import (BertConfig, BertModel, BertTokenizerFast, ResNetConfig, ResNetModel, RobertaConfig,
                              RobertaModel, RobertaTokenizerFast, ViTConfig, ViTModel)

    size = ({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
            if small else {})
    paths = {slot: dest / slot for slot in SLOTS}
    if all((p / "config.json").exists() and (p / "model.safetensors").exists() for p in paths.values()):
        return paths
    shutil.rmtree(dest, ignore_errors=True)
    torch.manual_seed(0)

    p = paths["BERT"]
    p.mkdir(parents=True)
    (p / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *words]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(p / "vocab.txt"), do_lower_case=True)
    tok.model_max_length = 512
    tok.save_pretrained(p)
    BertModel(BertConfig(**size), add_pooling_layer=False).save_pretrained(p)  # bert-base-uncased: 768-d, 12 layers

    p = paths["RoBERTa"]
    p.mkdir(parents=True)
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=len(words) + 1000, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(p))
    tok = RobertaTokenizerFast(vocab_file=str(p / "vocab.json"), merges_file=str(p / "merges.txt"))
    tok.model_max_length = 512
    tok.save_pretrained(p)
    RobertaModel(RobertaConfig(max_position_embeddings=514, type_vocab_size=1, **size),  # roberta-base
                 add_pooling_layer=False).save_pretrained(p)

    p = paths["ResNet50"]
    resnet = (ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1]) if small
              else ResNetConfig(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
                                layer_type="bottleneck"))  # microsoft/resnet-50
    ResNetModel(resnet).save_pretrained(p)

    p = paths["ViT"]
    vit = ViTConfig(image_size=224, patch_size=32 if small else 16, **size)  # google/vit-base-patch16-224
    ViTModel(vit, add_pooling_layer=False).save_pretrained(p)
    return paths


# -- data ----------------------------------------------------------------------------------------------------------
def _poster(args: tuple[int, str]) -> None:
    from PIL import Image

    seed, path = args
    rng = np.random.default_rng(seed)
    # Smooth random colour fields (like the flat areas of real posters) plus grain, so JPEG sizes are realistic.
    low = Image.fromarray(rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)).resize((224, 320), Image.BICUBIC)
    pixels = np.asarray(low, dtype=np.int16) + rng.integers(-12, 13, (320, 224, 3))
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=85)


def build_dataset(root: Path, n: int, words: list[str], small: bool, workers: int) -> None:
    """An MM-IMDb folder: split.json + dataset/<id>.json (imdb_id, title, plot, genres) + dataset/<id>.jpeg."""
    marker = root / ".complete"
    if marker.exists() and marker.read_text() == str(n):
        return
    shutil.rmtree(root, ignore_errors=True)
    (root / "dataset").mkdir(parents=True)
    rng = random.Random(1)
    ids = [f"{i:07d}" for i in range(1, n + 1)]
    total = sum(MMIMDB_SPLIT.values())
    n_train = round(n * MMIMDB_SPLIT["train"] / total)
    n_dev = round(n * MMIMDB_SPLIT["dev"] / total)
    split = {"train": ids[:n_train], "dev": ids[n_train:n_train + n_dev], "test": ids[n_train + n_dev:]}
    weights = [1.0 / (1 + i) for i in range(len(GENRES))]  # a long tail, as in MM-IMDb (Drama first)
    lo, hi = (20, 60) if small else (200, 500)
    for mid in ids:
        genres = sorted(set(rng.choices(GENRES, weights=weights, k=rng.randint(1, 4))))
        record = {"imdb_id": mid, "title": f"Movie {mid}", "plot": [plot_text(rng, words, lo, hi)], "genres": genres}
        (root / "dataset" / f"{mid}.json").write_text(json.dumps(record))
    (root / "split.json").write_text(json.dumps(split))
    jobs = [(int(mid), str(root / "dataset" / f"{mid}.jpeg")) for mid in ids]
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pool.map(_poster, jobs, chunksize=256)
    else:
        for job in jobs:
            _poster(job)
    marker.write_text(str(n))


# -- the benchmark -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny models and data: a quick check on a CPU")
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cuda, cpu")
    parser.add_argument("--movies", type=int, default=None, help="default: 25,959 (MM-IMDb), 300 with --small")
    parser.add_argument("--batch-size", type=int, default=None, help="encoder batch size (default: 128 on a GPU)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "genrefusion-gpu-grid"),
                        help="folder for models, data, feature cache and grid runs (reused by a second run)")
    args = parser.parse_args(argv)

    from genrefusion.data.loader import load_dataset
    from genrefusion.distributed import resolve_device
    from genrefusion.encoders import create_encoder
    from genrefusion.features.cache import dataset_features, resolve_precision
    from genrefusion.features.spec import FeatureSpec
    from genrefusion.data.loader import DataSpec
    from genrefusion.training.grid import GridSpec, run_grid

    t_start = time.perf_counter()
    device = resolve_device(args.device)
    n = args.movies or (300 if args.small else sum(MMIMDB_SPLIT.values()))
    work = Path(args.work) / ("small" if args.small else "full")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(f"device {device} (GPU: {gpu}); torch {torch.__version__}; {os.cpu_count()} CPUs; "
          f"{n:,} movies; work folder {work}", flush=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    words = vocabulary(300 if args.small else 6000)
    build_dataset(work / "mmimdb", n, words, args.small, workers=min(16, os.cpu_count() or 1))
    timings["make_data_s"] = time.perf_counter() - t
    t = time.perf_counter()
    corpus_rng = random.Random(2)
    corpus = [plot_text(corpus_rng, words, 50, 100) for _ in range(2000)]
    models = build_models(work / "models", words, corpus, args.small)
    timings["make_models_s"] = time.perf_counter() - t
    print(f"synthetic data {timings['make_data_s']:.1f} s, random-weight models {timings['make_models_s']:.1f} s",
          flush=True)

    t = time.perf_counter()
    dataset = load_dataset(work / "mmimdb", split="official", modalities="any")
    timings["load_data_s"] = time.perf_counter() - t
    print(f"loaded {len(dataset):,} movies in {timings['load_data_s']:.1f} s", flush=True)

    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # time the encoders every run
    throughput = {}
    for slot in SLOTS:
        kwargs = {"pooling": "cls"} if slot in ("BERT", "RoBERTa") else {}  # what the grid asks for
        encoder = create_encoder(str(models[slot]), **kwargs).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        table = dataset_features(dataset, encoder, FeatureSpec(cache_root=cache, batch_size=args.batch_size,
                                                               progress=True))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t
        throughput[slot] = {"movies": table.encoded_now, "seconds": seconds, "movies_per_s": table.encoded_now / seconds,
                            "dim": table.dim, "precision": resolve_precision(None, device)}
        print(f"encoder {slot:<8} {table.encoded_now:>7,} movies  {seconds:7.1f} s  "
              f"{table.encoded_now / seconds:8.1f} movies/s  ({table.dim}-d, {throughput[slot]['precision']})",
              flush=True)
        del encoder
        if device.type == "cuda":
            torch.cuda.empty_cache()
    timings["encoders_s"] = sum(v["seconds"] for v in throughput.values())

    t = time.perf_counter()
    grid = run_grid(GridSpec(DataSpec(work / "mmimdb", "official", "any"), preset="thesis",
                             slot_overrides=[f"{slot}={models[slot]}" for slot in SLOTS], cache_dir=cache,
                             out=work / "grid", config_overrides=[f"device={device.type}"], report=False))
    timings["grid_s"] = time.perf_counter() - t
    timings["grid_train_eval_s"] = grid["timings"]["train_eval_s"]
    timings["total_s"] = time.perf_counter() - t_start

    print("\n=== gpu_grid benchmark (random weights: the scores mean nothing, the times do) ===")
    print(f"device: {device} ({gpu}), {n:,} movies")
    print(f"{'encoder':<10}{'movies/s':>10}{'seconds':>10}")
    for slot, v in throughput.items():
        print(f"{slot:<10}{v['movies_per_s']:>10.1f}{v['seconds']:>10.1f}")
    print(f"grid (9 models, thesis preset): {timings['grid_s']:.1f} s "
          f"(training + evaluation {timings['grid_train_eval_s']:.1f} s)")
    print(f"total: {timings['total_s']:.1f} s  (synthetic data {timings['make_data_s']:.1f} s, models "
          f"{timings['make_models_s']:.1f} s, loading {timings['load_data_s']:.1f} s, encoders "
          f"{timings['encoders_s']:.1f} s, grid {timings['grid_s']:.1f} s)")
    result = {"device": str(device), "gpu": gpu, "movies": n, "small": args.small, "encoders": throughput,
              "timings": timings, "torch": torch.__version__}
    (work / "benchmark.json").write_text(json.dumps(result, indent=2))
    print(f"written: {work / 'benchmark.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
