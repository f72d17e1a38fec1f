"""Compare two trained models on the same test movies: paired bootstrap intervals for the F1 difference.

A model is a run folder (with `test_predictions.safetensors`) or a grid row folder whose `seed-*` subfolders are
the same model trained with several seeds; then the comparison is of seed-averaged scores. With `ensemble=True`
each row is instead one model, the ensemble of its seeds: probabilities averaged over seeds, thresholds re-tuned
(in the runs' own threshold mode) on the seed-averaged VALIDATION probabilities, never on test.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .metrics import tune_thresholds
from .runs import Predictions, find_runs, metric, read_metrics, read_predictions
from .stats import paired_bootstrap


def _same_movies(runs: list[Path], split: str) -> list[Predictions]:
    read = []
    for run in runs:
        read.append(read_predictions(run, split))
        if read[-1].ids != read[0].ids or not np.array_equal(read[-1].labels, read[0].labels):
            raise ValueError(f"{read[-1].path}: its movies differ from {read[0].path}'s")
    return read


def model_predictions(path: str | Path, ensemble: bool = False) -> dict[str, Any]:
    """{"ids", "labels", "probs": [per seed], "thresholds": [per seed], "runs": [folders]} for a run or row folder
    (runs.find_runs). ensemble=True: one entry, the seed ensemble (see the module docstring)."""
    runs = find_runs(path)
    test = _same_movies(runs, "test")
    out: dict[str, Any] = {"ids": test[0].ids, "labels": test[0].labels, "runs": [str(r) for r in runs],
                           "probs": [t.probs for t in test], "thresholds": [t.thresholds for t in test]}
    if ensemble:
        val = _same_movies(runs, "val")
        modes = {metric(read_metrics(r), "threshold_mode", r) for r in runs}
        if len(modes) != 1:
            raise ValueError(f"{path}: its seeds tuned thresholds in different modes {sorted(modes)}")
        val_probs = np.mean([v.probs for v in val], axis=0)
        out["probs"] = [np.mean(out["probs"], axis=0)]
        out["thresholds"] = [tune_thresholds(val[0].labels, val_probs, modes.pop())]
    return out


def compare(path_a: str | Path, path_b: str | Path, n_boot: int = 2000, seed: int = 0,
            ensemble: bool = False) -> dict[str, Any]:
    a, b = model_predictions(path_a, ensemble), model_predictions(path_b, ensemble)
    if a["ids"] != b["ids"] or not np.array_equal(a["labels"], b["labels"]):
        raise ValueError(f"{path_a} and {path_b} were evaluated on different test movies; they cannot be paired")
    result = {"a": str(path_a), "b": str(path_b), "n_test": len(a["ids"]), "ensemble": ensemble,
              "seeds_a": len(a["runs"]), "seeds_b": len(b["runs"])}
    for metric in ("f1_macro", "f1_micro"):
        result[metric] = paired_bootstrap(a["labels"], a["probs"], b["probs"], metric=metric,
                                          threshold_a=a["thresholds"], threshold_b=b["thresholds"],
                                          n_boot=n_boot, seed=seed)
    return result


def format_comparison(r: dict[str, Any]) -> str:
    how = "ensembled" if r.get("ensemble") else "score averaged over seeds"
    lines = [f"A: {r['a']}  ({r['seeds_a']} seed(s), {how})", f"B: {r['b']}  ({r['seeds_b']} seed(s), {how})",
             f"{r['n_test']} test movies, paired bootstrap ({r['f1_macro']['n_boot']} resamples), B - A:"]
    for metric in ("f1_macro", "f1_micro"):
        m = r[metric]
        verdict = "B better" if m["ci_low"] > 0 else "A better" if m["ci_high"] < 0 else "no clear difference"
        lines.append(f"  {metric:<9} A {m['score_a']:.4f}  B {m['score_b']:.4f}  diff {m['diff']:+.4f}  "
                     f"95% CI [{m['ci_low']:+.4f}, {m['ci_high']:+.4f}]  ({verdict})")
    return "\n".join(lines)
