"""threshold_source=oof's trainings (the final model and its fold heads) one after the other in this process
(fold_workers=1) vs side by side in single-thread worker processes (fold_workers=0, the default: the final model
trains beside its fold heads), on cached sample features: train_oof_s (the wall time of all the trainings) of the
same recommended-preset runs side by side, interleaved over rounds (best of each), with the thresholds each chose
(they should agree: the same trainings, each fold head seeded by its fold).

    PYTHONPATH=src .venv/bin/python benchmarks/fold_workers.py --data ../shared/data/mmimdb-sample [--models text,gmu]

With --grid, instead: the thesis grid (whose rows have no fold heads, so the rows themselves go to the workers),
training+evaluation time with its rows one after the other in this process vs side by side, and the largest
difference of a row's test macro-F1 between the two.

The features must be in the cache (e.g. after `make demo`, or `genrefusion features`).
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch

from genrefusion.training import workers
from genrefusion.config import load_config
from genrefusion.data.loader import load_dataset
from genrefusion.features.spec import FeatureSpec
from genrefusion.training.experiment import load_features, model_modalities, run_experiment


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", default="text,gmu")
    ap.add_argument("--text-encoder", default="mpnet-base")
    ap.add_argument("--image-encoder", default="efficientnet-lite0")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--grid", action="store_true", help="time the thesis grid's rows instead of fold heads")
    args = ap.parse_args()
    if args.grid:
        return grid_rows(args)
    auto = workers.plan(0, 5, torch.device("cpu"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fold_workers=0 -> {auto} worker(s), "
          f"load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as out:
        dataset = None
        for model in args.models.split(","):
            seconds: dict[str, list[float]] = {"1": [], "0": []}
            thresholds = {}
            for _ in range(args.rounds):
                for kind in seconds:
                    cfg = load_config(preset="recommended", overrides=[
                        f"model={model}", f"data={args.data}", "split=stratified", "modalities=both",
                        f"fold_workers={kind}", f"text_encoder={args.text_encoder}",
                        f"image_encoder={args.image_encoder}", f"out={out}"]
                        + ([f"cache_dir={args.cache_dir}"] if args.cache_dir else []))
                    dataset = dataset or load_dataset(cfg.data, cfg.split, cfg.modalities, cfg.strict,
                                                      cfg.plot_mode, cfg.split_seed)
                    feats, _ = load_features(cfg, dataset, model_modalities(cfg.model),
                                             FeatureSpec.from_config(cfg, progress=False))
                    m = run_experiment(cfg, dataset=dataset, features=feats, log=None)
                    seconds[kind].append(m["timings"]["train_oof_s"])
                    thresholds[kind] = np.asarray(m["thresholds"])
            one, side = min(seconds["1"]), min(seconds["0"])
            print(f"{model:<8} final + fold heads one after the other {one:6.1f} s  side by side {side:6.1f} s  "
                  f"side/one x{side / one:.2f}  largest threshold difference "
                  f"{np.abs(thresholds['1'] - thresholds['0']).max():.3f}", flush=True)
    print(f"load at the end {os.getloadavg()[0]:.2f}")


def grid_rows(args: argparse.Namespace) -> None:
    from genrefusion.data.loader import DataSpec
    from genrefusion.training.grid import GridSpec, run_grid

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    seconds: dict[str, list[float]] = {"1": [], "0": []}
    macro: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as out:
        for r in range(args.rounds):
            for kind in seconds:
                g = run_grid(GridSpec(DataSpec(args.data, "stratified", "both"), preset="thesis",
                                      cache_dir=args.cache_dir, out=os.path.join(out, f"{kind}-{r}"), report=False,
                                      config_overrides=[f"fold_workers={kind}"]), log=lambda *_: None)
                seconds[kind].append(g["timings"]["train_eval_s"])
                macro[kind] = [row["test"]["f1_macro"] for row in g["rows"]]
    one, side = min(seconds["1"]), min(seconds["0"])
    print(f"thesis grid, 9 rows: one after the other {one:6.1f} s  side by side {side:6.1f} s  side/one "
          f"x{side / one:.2f}  largest test macro-F1 difference "
          f"{np.abs(np.subtract(macro['1'], macro['0'])).max():.4f}  (load {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
