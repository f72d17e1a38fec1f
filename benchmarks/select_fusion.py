"""How the recommended preset's fusion choices were made: out-of-fold scores on train + validation, never test.

The validation split alone (142 movies on the sample) cannot tell fusion designs apart: their macro-F1 differs by
about 0.02, less than its noise there. So the train and validation movies (903) are split into 5 folds; every
candidate trains on four (early stopping on the fifth) and predicts the fifth, giving one out-of-fold prediction per
movie. Thresholds are tuned as the recipe tunes them, cross-fitted: on one half of those movies, scored on the other
half, both ways. Scores are means over seeds. The test split is never loaded into a score.

    .venv/bin/python benchmarks/select_fusion.py --data ../shared/data/mmimdb-sample --cache-dir /tmp/gfcache
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from genrefusion.config import load_config
from genrefusion.data.loader import load_dataset
from genrefusion.features.spec import FeatureSpec
from genrefusion.training.experiment import Features, build_loss, build_model, load_features
from genrefusion.training.grid import resolve_slots, slot_encoder, slot_modality
from genrefusion.data.labels import GENRES
from genrefusion.evaluation.metrics import cross_fitted_f1
from genrefusion.data.modalities import spec
from genrefusion.training.train import FeatureBatches, fit, predict

# name -> (model, text slot, image slot, config overrides on top of the recommended preset)
RECIPE = {"late_weights": "scalar", "aux_loss_weight": 0.0}  # the preset's values before this selection
CANDIDATES = {
    "text": ("text", "RoBERTa", None, RECIPE),
    "early": ("early", "RoBERTa", "ResNet50", RECIPE),
    "late": ("late", "RoBERTa", "ResNet50", RECIPE),
    "gmu": ("gmu", "RoBERTa", "ResNet50", RECIPE),
    "early joined": ("early", "RoBERTa", "ResNet50+ViT", RECIPE),
    "late joined": ("late", "RoBERTa", "ResNet50+ViT", RECIPE),
    "gmu joined": ("gmu", "RoBERTa", "ResNet50+ViT", RECIPE),
    "late aux 0.5": ("late", "RoBERTa", "ResNet50", {"late_weights": "scalar", "aux_loss_weight": 0.5}),
    "late aux 0.5 joined": ("late", "RoBERTa", "ResNet50+ViT", {"late_weights": "scalar", "aux_loss_weight": 0.5}),
    "late per-genre": ("late", "RoBERTa", "ResNet50", {"late_weights": "per_genre", "aux_loss_weight": 0.0}),
    "late per-genre aux 0.5": ("late", "RoBERTa", "ResNet50", {"late_weights": "per_genre", "aux_loss_weight": 0.5}),
    "late per-genre aux 0.5 joined": ("late", "RoBERTa", "ResNet50+ViT",
                                      {"late_weights": "per_genre", "aux_loss_weight": 0.5}),
    "late per-genre aux 1.0 joined": ("late", "RoBERTa", "ResNet50+ViT",
                                      {"late_weights": "per_genre", "aux_loss_weight": 1.0}),
}


def out_of_fold(cfg, features: Features, y: torch.Tensor, pool: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Probabilities for every movie of `pool`, each from the model that did not train on its fold."""
    dims = {m: t.dim for m, t in features.items()}
    batches = FeatureBatches(**features)
    probs = np.zeros((len(pool), len(GENRES)))
    for k in np.unique(folds):
        train, held = pool[folds != k], pool[folds == k]
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, dims)
        fit(model, batches, y, train, held, cfg, build_loss(cfg, y[train]))
        probs[folds == k] = predict(model, batches, held)[0]
    return probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--only", default=None, help="comma-separated candidate names (default: all)")
    ap.add_argument("--per-genre", action="store_true", help="also print each genre's F1 change vs the first candidate")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; known: {list(CANDIDATES)}")
    base = load_config(preset="recommended").replace(data=args.data, split="stratified", modalities="both",
                                                     cache_dir=args.cache_dir)
    dataset = load_dataset(args.data, "stratified", "both")
    y = torch.as_tensor(dataset.labels())
    pool = np.array(dataset.splits["train"] + dataset.splits["dev"])
    folds = np.random.default_rng(0).permutation(len(pool)) % args.folds
    slots = resolve_slots()
    tables = {}
    for slot in dict.fromkeys(s for _, t, i, _ in (CANDIDATES[n] for n in names) for s in (t, i) if s):
        modality = slot_modality(slot)
        feats, _ = load_features(base.replace(**{spec(modality).encoder_config: slot_encoder(slot, slots)}), dataset,
                                 (modality,), FeatureSpec.from_config(base, progress=False))
        tables[slot] = feats[modality]
    print(f"{len(pool)} train+validation movies, {args.folds} folds, {args.seeds} seeds; "
          "out-of-fold macro / micro-F1, thresholds cross-fitted", flush=True)
    reference = None
    for name in names:
        model, text_slot, image_slot, overrides = CANDIDATES[name]
        t = time.perf_counter()
        scores = []
        for seed in range(args.seeds):
            cfg = base.replace(model=model, seed=seed, **overrides)
            feats = {slot_modality(k): tables[k] for k in (text_slot, image_slot) if k}
            probs = out_of_fold(cfg, feats, y, pool, folds)
            scores.append(cross_fitted_f1(y[pool].numpy(), probs, cfg.threshold_mode, seed=1))
        macro, micro = (float(np.mean([sc[k] for sc in scores])) for k in ("f1_macro", "f1_micro"))
        per_genre = np.mean([sc["per_genre_f1"] for sc in scores], axis=0)
        reference = reference or (macro, micro, per_genre)  # the first candidate (text by default) is the reference
        label = f"{name} [{' + '.join(s for s in (text_slot, image_slot) if s)}]"
        print(f"{label:<46} macro {macro:.4f} ({macro - reference[0]:+.4f})  micro {micro:.4f} "
              f"({micro - reference[1]:+.4f})  [{time.perf_counter() - t:.0f} s]", flush=True)
        if args.per_genre and reference[2] is not per_genre:
            print("    per-genre F1 change: " + "  ".join(
                f"{g} {d:+.3f}" for g, d in sorted(zip(GENRES, per_genre - reference[2]), key=lambda x: -x[1])))


if __name__ == "__main__":
    main()
