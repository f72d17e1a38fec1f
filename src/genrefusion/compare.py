"""Compare two trained models on the same test movies: paired bootstrap intervals for the F1 difference.

A model is a run folder (with `test_predictions.safetensors`) or a grid row folder whose `seed-*` subfolders are
the same model trained with several seeds; then the comparison is of seed-averaged scores. With `ensemble=True`
each row is instead one model, the ensemble of its seeds: probabilities averaged over seeds, thresholds re-tuned
(in the runs' own threshold mode) on the seed-averaged VALIDATION probabilities, never on test.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from .stats import paired_bootstrap


def _read(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, Any]:
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
        probs, labels = f.get_tensor("probs"), f.get_tensor("labels")
    thr = json.loads(meta["thresholds"])
    return json.loads(meta["ids"]), probs, labels, np.asarray(thr) if isinstance(thr, list) else float(thr)


def _same_movies(runs: list[Path], filename: str) -> list[tuple[list[str], np.ndarray, np.ndarray, Any]]:
    read = []
    for run in runs:
        if not (run / filename).exists():
            raise FileNotFoundError(f"{run}: no {filename}")
        read.append(_read(run / filename))
        if read[-1][0] != read[0][0] or not np.array_equal(read[-1][2], read[0][2]):
            raise ValueError(f"{run / filename}: its movies differ from {runs[0] / filename}'s")
    return read


def load_predictions(path: str | Path, ensemble: bool = False) -> dict[str, Any]:
    """{"ids", "labels", "probs": [per seed], "thresholds": [per seed], "runs": [folders]} for a run or row folder.
    ensemble=True: one entry, the seed ensemble (see the module docstring)."""
    path = Path(path)
    runs = [path] if (path / "test_predictions.safetensors").exists() else sorted(
        p for p in path.glob("seed-*") if (p / "test_predictions.safetensors").exists())
    if not runs:
        raise FileNotFoundError(f"{path}: no test_predictions.safetensors here or in seed-*/ subfolders")
    test = _same_movies(runs, "test_predictions.safetensors")
    out: dict[str, Any] = {"ids": test[0][0], "labels": test[0][2], "runs": [str(r) for r in runs],
                           "probs": [t[1] for t in test], "thresholds": [t[3] for t in test]}
    if ensemble:
        from .metrics import tune_thresholds

        val = _same_movies(runs, "val_predictions.safetensors")
        modes = {json.loads((r / "metrics.json").read_text(encoding="utf-8"))["threshold_mode"] for r in runs}
        if len(modes) != 1:
            raise ValueError(f"{path}: its seeds tuned thresholds in different modes {sorted(modes)}")
        val_probs = np.mean([v[1] for v in val], axis=0)
        out["probs"] = [np.mean(out["probs"], axis=0)]
        out["thresholds"] = [tune_thresholds(val[0][2], val_probs, modes.pop())]
    return out


def compare(path_a: str | Path, path_b: str | Path, n_boot: int = 2000, seed: int = 0,
            ensemble: bool = False) -> dict[str, Any]:
    a, b = load_predictions(path_a, ensemble), load_predictions(path_b, ensemble)
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
