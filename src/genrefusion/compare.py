"""Compare two trained models on the same test movies: paired bootstrap intervals for the F1 difference.

A model is a run folder (with `test_predictions.safetensors`) or a grid row folder whose `seed-*` subfolders are
the same model trained with several seeds; then the comparison is of seed-averaged scores.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from .stats import paired_bootstrap


def load_predictions(path: str | Path) -> dict[str, Any]:
    """{"ids", "labels", "probs": [per seed], "thresholds": [per seed], "runs": [folders]} for a run or row folder."""
    path = Path(path)
    runs = [path] if (path / "test_predictions.safetensors").exists() else sorted(
        p for p in path.glob("seed-*") if (p / "test_predictions.safetensors").exists())
    if not runs:
        raise FileNotFoundError(f"{path}: no test_predictions.safetensors here or in seed-*/ subfolders")
    out: dict[str, Any] = {"probs": [], "thresholds": [], "runs": [str(r) for r in runs]}
    for run in runs:
        with safe_open(str(run / "test_predictions.safetensors"), "np") as f:
            meta = f.metadata()
            probs, labels = f.get_tensor("probs"), f.get_tensor("labels")
        ids = json.loads(meta["ids"])
        if "ids" in out and (ids != out["ids"] or not np.array_equal(labels, out["labels"])):
            raise ValueError(f"{run}: its test movies differ from {runs[0]}'s")
        out["ids"], out["labels"] = ids, labels
        thr = json.loads(meta["thresholds"])
        out["probs"].append(probs)
        out["thresholds"].append(np.asarray(thr) if isinstance(thr, list) else float(thr))
    return out


def compare(path_a: str | Path, path_b: str | Path, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    a, b = load_predictions(path_a), load_predictions(path_b)
    if a["ids"] != b["ids"] or not np.array_equal(a["labels"], b["labels"]):
        raise ValueError(f"{path_a} and {path_b} were evaluated on different test movies; they cannot be paired")
    result = {"a": str(path_a), "b": str(path_b), "n_test": len(a["ids"]),
              "seeds_a": len(a["probs"]), "seeds_b": len(b["probs"])}
    for metric in ("f1_macro", "f1_micro"):
        result[metric] = paired_bootstrap(a["labels"], a["probs"], b["probs"], metric=metric,
                                          threshold_a=a["thresholds"], threshold_b=b["thresholds"],
                                          n_boot=n_boot, seed=seed)
    return result


def format_comparison(r: dict[str, Any]) -> str:
    lines = [f"A: {r['a']}  ({r['seeds_a']} seed(s))", f"B: {r['b']}  ({r['seeds_b']} seed(s))",
             f"{r['n_test']} test movies, paired bootstrap ({r['f1_macro']['n_boot']} resamples), B - A:"]
    for metric in ("f1_macro", "f1_micro"):
        m = r[metric]
        verdict = "B better" if m["ci_low"] > 0 else "A better" if m["ci_high"] < 0 else "no clear difference"
        lines.append(f"  {metric:<9} A {m['score_a']:.4f}  B {m['score_b']:.4f}  diff {m['diff']:+.4f}  "
                     f"95% CI [{m['ci_low']:+.4f}, {m['ci_high']:+.4f}]  ({verdict})")
    return "\n".join(lines)
