"""Which movies should per-genre thresholds be tuned on: validation (`threshold_source=val`) or out-of-fold
predictions over train + validation (`threshold_source=oof`)? Chosen on VALIDATION only, then reported on test.

1. The choice (validation only, nested so that neither side is scored on the movies it was tuned on): for each model
   and seed, the final model is trained as usual (train, early-stopped on validation). "val": its thresholds tuned on
   one half of the validation movies and scored on the other, both ways (metrics.cross_fitted_f1). "oof": thresholds
   tuned on out-of-fold predictions over TRAIN only (experiment.oof_probabilities, k fold models), applied to the
   final model and scored on the same two validation halves. The source with the higher mean macro-F1 wins.
2. What it changes, reported after the choice: each model trained with each source as the library does it (oof: over
   train + validation), test macro/micro-F1 side by side, how many genres each predicts per test movie, and what
   the GMU predicts for the sample's Dracula movies under each.

    PYTHONPATH=src python benchmarks/threshold_source.py --data ../shared/data/mmimdb-sample --models text,gmu
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from genrefusion.fusion.batching import FeatureBatches
from genrefusion.config import load_config
from genrefusion.data.loader import load_dataset
from genrefusion.features.spec import FeatureSpec
from genrefusion.training.experiment import load_features, model_modalities, oof_probabilities, run_experiment
from genrefusion.evaluation.metrics import compute_metrics, cross_fitted_f1, tune_thresholds
from genrefusion.evaluation.runs import read_predictions

DRACULA = ("0021814", "0051554", "0103874")  # Dracula (1931), Horror of Dracula (1958), Bram Stoker's Dracula


def halves_f1(y, probs, thresholds, seed: int = 0) -> float:
    """Macro-F1 at fixed thresholds, averaged over cross_fitted_f1's two validation halves (the same halves)."""
    half = np.random.default_rng(seed).permutation(len(y)) < len(y) // 2
    return float(np.mean([compute_metrics(y[h], probs[h], thresholds)["f1_macro"] for h in (half, ~half)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", default="text,image,gmu")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    base = load_config(preset="recommended").replace(data=args.data, split="stratified", modalities="both",
                                                     cache_dir=args.cache_dir, threshold_folds=args.folds)
    ds = load_dataset(args.data, "stratified", "both")
    feats = load_features(base, ds, ("text", "image"), FeatureSpec.from_config(base, progress=False))[0]
    y = torch.as_tensor(ds.labels())
    train_idx = list(ds.splits["train"])
    print(f"load: {os.getloadavg()[0]:.1f} (1-min), {len(train_idx)} train / {len(ds.splits['dev'])} dev / "
          f"{len(ds.splits['test'])} test movies, text {base.text_encoder}, image {base.image_encoder}, "
          f"{args.folds} folds")
    models = args.models.split(",")

    print("\n1. choice, validation only (macro-F1 on the two validation halves)")
    print(f"{'model':<10} {'seed':>4} {'val':>8} {'oof(train)':>11}")
    scores = {"val": [], "oof": []}
    for model in models:
        for seed in range(args.seeds):
            cfg = base.replace(model=model, seed=seed)
            with tempfile.TemporaryDirectory() as run:
                run_experiment(cfg, ds, feats, run_dir=run, log=None)
                val = read_predictions(run, "val")
            s_val = cross_fitted_f1(val.labels, val.probs, "per_genre")["f1_macro"]
            mods = model_modalities(model)
            batch_fn = FeatureBatches(**{m: feats[m] for m in mods})
            oof = oof_probabilities(cfg, batch_fn, {m: feats[m].dim for m in mods}, y, train_idx, args.folds)
            thr = tune_thresholds(y[train_idx].numpy(), oof, "per_genre")
            s_oof = halves_f1(val.labels, val.probs, thr)
            scores["val"].append(s_val)
            scores["oof"].append(s_oof)
            print(f"{model:<10} {seed:>4} {s_val:>8.4f} {s_oof:>11.4f}")
    means = {k: float(np.mean(v)) for k, v in scores.items()}
    chosen = max(means, key=means.get)
    print(f"{'mean':<15} {means['val']:>8.4f} {means['oof']:>11.4f}   -> chosen: threshold_source={chosen}")

    print("\n2. what it changes, on test (reported after the choice; oof over train + validation)")
    print(f"{'model':<10} {'source':<6} {'macro':>7} {'micro':>7} {'genres/movie':>12} {'true/movie':>10}  Dracula")
    for model in models:
        for source in ("val", "oof"):
            cfg = base.replace(model=model, seed=0, threshold_source=source)
            with tempfile.TemporaryDirectory() as run:
                m = run_experiment(cfg, ds, feats, run_dir=run, log=None)
                test = read_predictions(run, "test")
                from genrefusion.inference.predictor import load_model

                dracula = []
                if model == "gmu":
                    pred = load_model(os.path.join(run, "model"))
                    for mid in DRACULA:
                        movie = next((mv for mv in ds.movies if mv.id == mid), None)
                        if movie is None:
                            continue
                        from genrefusion.data.posters import load_poster

                        r = pred.predict_one(poster=load_poster(movie.poster), plot=movie.plot)
                        where = next(s for s, idx in ds.splits.items() if ds.movies.index(movie) in idx)
                        dracula.append(f"{mid}({where}): {','.join(r['predicted'])}")
            n_pred = float((test.probs >= np.asarray(test.thresholds)).sum(1).mean())
            print(f"{model:<10} {source:<6} {m['test']['f1_macro']:>7.4f} {m['test']['f1_micro']:>7.4f} "
                  f"{n_pred:>12.2f} {float(test.labels.sum(1).mean()):>10.2f}  {' | '.join(dracula)}")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
