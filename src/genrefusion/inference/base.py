"""What every predictor shares, whatever runs its networks (torch: predictor.Predictor; onnxruntime:
exported.OnnxPredictor): which inputs a movie needs, the result dicts (genres over their thresholds, each
modality's contribution by occlusion, the fusion's own weights) and the public predict/predict_one.

A subclass sets `directory`, `meta` (model.json's content, format 2), `genres`, `thresholds`, `modalities`,
`sequences`, `languages` (the text encoder's, None: not declared) and `lock`, implements `_run`, and calls `_probe`
once it can predict. numpy and PIL only.

Outputs that are not finite numbers are refused, never passed on as NaN probabilities: a model whose weights are
finite but overflow when used (its logits NaN or inf) is refused when it is loaded, by `_probe`'s prediction of a
fixed movie, and any prediction whose logits are not finite raises NonFiniteOutputError (a ValueError: the CLI
prints it as one line; the service answers 500 with the error body saying so).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ..data.languages import script_warnings
from ..data.modalities import spec
from .inputs import InputError

PROBE_PLOT = "A detective hunts a killer through the dark streets of a city at night."


def probe_poster() -> Image.Image:
    """The fixed poster of the load probe (PROBE_PLOT is its plot): 96 x 64 pixels of seeded noise."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 64, 3), dtype=np.uint8))


class NonFiniteOutputError(ValueError):
    """A model's outputs (its logits) hold NaN or inf. `rows`: the movies concerned, by position in the batch."""

    def __init__(self, message: str, rows: list[int] | None = None):
        super().__init__(message)
        self.rows = list(rows or [])


def check_logits(logits: list[np.ndarray]) -> None:
    """NonFiniteOutputError unless every row of each (B, G) array of `logits` (the movies' own, then each with a
    modality replaced by the model's stand-in) is finite."""
    bad = np.zeros(len(logits[0]), dtype=bool)
    for x in logits:
        bad |= ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad).tolist()
        raise NonFiniteOutputError(
            f"the model's outputs are not finite numbers (NaN or inf) for {len(rows)} of {len(bad)} movie(s): its "
            "weights overflow on this input, so it has no prediction to give", rows)


class PredictorBase:
    exported = False  # True where the networks are ONNX graphs (no gradients: no explanations)

    # -- what the model is ----------------------------------------------------------------------------------------
    @property
    def fusion(self) -> str:
        return self.meta["model"]["name"]

    def can_miss(self, modality: str) -> bool:
        """Whether a movie may lack `modality`. Every model substitutes a learned stand-in, but that stand-in is only
        learned when training saw movies without the modality (modalities=any) or dropped it (modality_dropout);
        a unimodal model cannot do without the one input it reads."""
        if len(self.modalities) < 2:
            return False
        cfg = self.meta.get("config", {})
        return cfg.get("modalities", "any") == "any" or float(cfg.get("modality_dropout", 0.0)) > 0

    def info(self) -> dict[str, Any]:
        return {
            "fusion": self.fusion,
            "modalities": list(self.modalities),
            "encoders": {m: self.meta["encoders"][m]["name"] for m in self.modalities},
            "genres": list(self.genres),
            "thresholds": dict(zip(self.genres, self.thresholds.tolist())),
            "missing_modality_ok": {m: self.can_miss(m) for m in self.modalities},
            "sequences": self.sequences,
            "languages": self.languages,
            "config": self.meta.get("config", {}),
        }

    def warnings(self, plot: str | None) -> list[dict[str, str]]:
        """What a prediction from this plot should be read with: a plot mostly in a script the text encoder
        cannot read (languages.script_warnings)."""
        if "text" not in self.modalities:
            return []
        return script_warnings(plot, self.languages, self.meta["encoders"]["text"]["name"])

    # -- prediction -----------------------------------------------------------------------------------------------
    def check(self, poster: Image.Image | None, plot: str | None) -> dict[str, bool]:
        """Which modalities the model gets for this movie; InputError when it cannot predict without the missing one."""
        items = self._items([poster], [plot])
        given = {m: items[m][0] is not None for m in self.modalities}
        if not any(given.values()):
            need = " and/or ".join(spec(m).article for m in self.modalities)
            raise InputError(f"nothing to predict from: this {self.fusion} model needs {need}")
        for m in self.modalities:
            if not given[m] and not self.can_miss(m):
                what = spec(m).display
                why = ("it reads only that" if len(self.modalities) < 2 else
                       "it was trained only on movies with both (modalities=both, modality_dropout=0), so its "
                       f"stand-in for a missing {what} was never learned")
                raise InputError(f"this {self.fusion} model needs a {what}: {why}")
        return given

    @staticmethod
    def _items(posters: list, plots: list) -> dict[str, list]:
        """The raw items of the public signature (posters, plots) by modality name."""
        return {"text": plots, "image": posters}

    def predict(self, posters: list[Image.Image | None], plots: list[str | None]) -> list[dict[str, Any]]:
        """Predict a batch of movies (a None poster or plot = that modality is missing)."""
        if len(posters) != len(plots):
            raise ValueError(f"got {len(posters)} posters but {len(plots)} plots")
        used = [self.check(p, t) for p, t in zip(posters, plots)]
        with self.lock:
            probs, without, out = self._run(posters, plots)
        return [{**self._result(i, probs[i], {m: w[i] for m, w in without.items()}, out, used[i]),
                 "warnings": self.warnings(plots[i])} for i in range(len(posters))]

    def _run(self, posters: list, plots: list) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
        """Probabilities (B, genres), the same with each modality replaced by the model's stand-in (occlusion;
        bimodal models only) and the head's outputs (its fusion weights); NonFiniteOutputError (check_logits) when
        the logits behind them are not finite. Called under `self.lock`."""
        raise NotImplementedError

    def _probe(self) -> None:
        """Predict one fixed movie (PROBE_PLOT and probe_poster(), and, for a bimodal model, each with the other
        modality's stand-in): a model whose outputs overflow is refused when it is loaded, before it serves."""
        try:
            with self.lock:
                self._run([probe_poster()], [PROBE_PLOT])
        except NonFiniteOutputError:
            raise NonFiniteOutputError(
                f"{self.directory}: the model's outputs are not finite numbers (NaN or inf) on a fixed test movie: "
                "its weights are finite but overflow when used, so it cannot predict (retrain it)") from None

    def predict_one(self, poster: Image.Image | None = None, plot: str | None = None) -> dict[str, Any]:
        return self.predict([poster], [plot])[0]

    def _result(self, i: int, p: np.ndarray, without: dict[str, np.ndarray], out: dict, used: dict) -> dict:
        order = np.argsort(-p, kind="stable")
        rows = [{"genre": self.genres[j], "probability": float(p[j]), "threshold": float(self.thresholds[j]),
                 "predicted": bool(p[j] >= self.thresholds[j])} for j in order]
        return {
            "predicted": [r["genre"] for r in rows if r["predicted"]],
            "genres": rows,  # every genre, most probable first
            "probabilities": {g: float(x) for g, x in zip(self.genres, p)},  # vocabulary order
            "used": used,
            "contribution": self._contribution(p, without, used),
            "without": {m: {g: float(x) for g, x in zip(self.genres, w)} for m, w in without.items()},
            "fusion": self._fusion_weights(out, i),
        }

    def _contribution(self, p: np.ndarray, without: dict[str, np.ndarray], used: dict) -> dict[str, float]:
        """Each modality's share of the total prediction change when it is occluded (mean |delta p| over genres).
        A modality the movie lacks contributes nothing; a unimodal model's one modality contributes everything."""
        if not without or not all(used.values()):
            return {m: float(used[m]) for m in self.modalities}
        delta = {m: float(np.abs(p - w).mean()) for m, w in without.items()}
        total = sum(delta.values())
        return {m: (d / total if total > 0 else 0.5) for m, d in delta.items()}

    def _fusion_weights(self, out: dict, i: int) -> dict[str, Any] | None:
        """The fusion's own view of the image/text balance, where it has one."""
        if "gate" in out:  # GMU: z is the image's share of each hidden unit
            return {"kind": "gmu_gate", "image": float(out["gate"][i].mean()), "text": float(1 - out["gate"][i].mean())}
        if "modality_weights" in out:  # attention: softmax over (text, image)
            w = out["modality_weights"][i]
            return {"kind": "attention_weights", "text": float(w[0]), "image": float(w[1])}
        if "alpha" in out:  # late fusion: one learned weight for the whole model, or one per genre (their mean)
            a = out["alpha"]
            a = float(a) if a.ndim == 0 else float(a[i].mean())  # a torch tensor or, exported, a numpy array
            return {"kind": "late_alpha", "image": a, "text": 1 - a}
        return None
