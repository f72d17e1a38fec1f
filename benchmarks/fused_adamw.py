"""Head training with AdamW's fused kernel vs its default (per-tensor) implementation on the CPU, on cached sample
features: train_s of the same recommended-preset runs side by side, interleaved over rounds (best of each), with the
validation macro-F1 of each (they should agree: the same update, computed in one pass per parameter).

    PYTHONPATH=src .venv/bin/python benchmarks/fused_adamw.py --data ../shared/data/mmimdb-sample [--models image,gmu]

The features must be in the cache (e.g. after `make demo`, or `genrefusion features`); the thresholds are tuned on
validation only (threshold_source=val), so each number is one head's training.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import torch

import genrefusion.training.train as train_module
from genrefusion.config import load_config
from genrefusion.data.loader import load_dataset
from genrefusion.training.experiment import load_features, model_modalities, run_experiment


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", default="image,gmu")
    ap.add_argument("--text-encoder", default="mpnet-base")
    ap.add_argument("--image-encoder", default="efficientnet-lite0")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    original = torch.optim.AdamW

    def unfused(*a, **k):
        return original(*a, **{**k, "fused": None})

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as out:
        dataset = None
        for model in args.models.split(","):
            cfg = load_config(preset="recommended", overrides=[
                f"model={model}", f"data={args.data}", "split=stratified", "modalities=both", "threshold_source=val",
                f"text_encoder={args.text_encoder}", f"image_encoder={args.image_encoder}", f"out={out}"]
                + ([f"cache_dir={args.cache_dir}"] if args.cache_dir else []))
            dataset = dataset or load_dataset(cfg.data, cfg.split, cfg.modalities, cfg.strict, cfg.plot_mode,
                                              cfg.split_seed)
            feats, _ = load_features(cfg, dataset, model_modalities(cfg.model))
            seconds: dict[str, list[float]] = {"default": [], "fused": []}
            scores = {}
            for _ in range(args.rounds):
                for kind in seconds:
                    train_module.torch.optim.AdamW = unfused if kind == "default" else original
                    try:
                        m = run_experiment(cfg, dataset=dataset, features=feats, log=None)
                    finally:
                        train_module.torch.optim.AdamW = original
                    seconds[kind].append(m["timings"]["train_s"])
                    scores[kind] = m["val"]["f1_macro"]
            d, f = min(seconds["default"]), min(seconds["fused"])
            print(f"{model:<8} default {d:6.2f} s  fused {f:6.2f} s  fused/default x{f / d:.2f}  "
                  f"val macro-F1 {scores['default']:.4f} / {scores['fused']:.4f}", flush=True)
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
