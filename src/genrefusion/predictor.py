"""Prediction with a saved model: raw poster + plot in, genre probabilities out.

    predictor = genrefusion.load_model("runs/gmu/model")
    result = predictor.predict_one(poster=PIL_image_or_None, plot="A detective ...")
    result["predicted"]  # genres at or above their threshold, most probable first

A `Predictor` rebuilds the encoders named in the model folder's model.json and the trained head (see checkpoint.py),
checks each encoder against the fingerprint recorded there, and runs preprocess -> encode (under the autocast
precision the training features were computed at) -> head, exactly the path training features took, so a movie
from the training data gets the probabilities the run saved. Besides probabilities it reports how much each
modality contributed: the prediction change when that modality is replaced by the model's learned stand-in (the
same thing a movie without a poster or plot gets), which works for every fusion model, plus the fusion's own weights
where it has them (GMU gate, attention weights, late-fusion alpha).

The head's batch is built by batching.py, as in training; nothing here comes from the training code. This module
is imported by the CLI parser (through predict.py), so torch and the encoders are imported inside functions.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .inputs import InputError
from .modalities import spec


class Predictor:
    """A saved model ready to predict. Thread-safe: inference runs under one lock (on a CPU, parallel forward
    passes would only fight over the same cores, and a Hugging Face fast tokenizer must not be used concurrently)."""

    def __init__(self, directory: str | Path, device: str = "cpu"):
        import torch

        from .checkpoint import load_head
        from .encoders import create_encoder

        self.directory = Path(directory)
        self.head, self.meta = load_head(self.directory)  # verified: weights, shapes, thresholds, encoder records
        self.source_format: int = self.meta["format"]
        self.head.to(device)
        self.device = torch.device(device)
        self.genres: tuple[str, ...] = tuple(self.meta["genres"])
        self.thresholds = np.broadcast_to(np.asarray(self.meta["thresholds"], dtype=np.float64),
                                          (len(self.genres),)).copy()
        self.modalities: tuple[str, ...] = tuple(self.head.modalities)
        self.sequences = bool(self.head.uses_sequences)
        cfg = self.meta.get("config", {})
        if cfg.get("mode") == "end-to-end" and cfg.get("finetune"):
            raise ValueError(f"{self.directory}: this model fine-tuned its encoders, and a model folder holds only "
                             "the head's weights, so it cannot be restored exactly")
        self.encoders = {}
        for m in self.modalities:
            spec = self.meta["encoders"][m]
            self.encoders[m] = create_encoder(spec["name"], modality=m, **spec.get("kwargs", {})).to(device).eval()
        self.precision: dict[str, str] = {}  # per modality, the autocast its features were computed under
        self._check_fingerprints()
        self.lock = threading.Lock()

    def _check_fingerprints(self) -> None:
        """Refuse encoders whose weights or preprocessing differ from those the head was trained on (a changed
        checkpoint behind the same name would silently shift every prediction), and learn the precision each
        modality's features were computed at. A format-1 record is upgraded in memory to a format-2 one, so
        `self.meta` always reads as format 2 (`self.source_format` says what the folder holds)."""
        from .fingerprints import differences, encoder_record, identity_sha256, legacy_precision

        for m in self.modalities:
            rec = self.meta["encoders"][m]
            got = self.encoders[m].fingerprint()  # hashes the weight files (once per process)
            if self.source_format >= 2:
                precision = rec["precision"]
                ok = identity_sha256(got, precision) == rec["fingerprint_sha256"]
                differ = differences(rec["fingerprint"], got)
            else:  # one of format 1's forms: the cache's hash (with or without the precision) or the dict
                precision = legacy_precision(rec["fingerprint"], got, self.meta["config"].get("precision"))
                ok = precision is not None
                differ = differences(rec["fingerprint"], got) if isinstance(rec["fingerprint"], dict) else []
            if not ok:
                raise ValueError(f"{self.directory}: the {m} encoder {self.encoders[m].name!r} is not the one this "
                                 "model was trained with (its weights or preprocessing differ"
                                 + (f": {', '.join(differ)}" if differ else "") + ")")
            self.precision[m] = precision
            self.meta["encoders"][m] = encoder_record(rec["name"], rec.get("kwargs", {}), got, precision)
        self.meta["format"] = 2

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
            "config": self.meta.get("config", {}),
        }

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

    def encode(self, modality: str, items: list, grad: bool = False) -> tuple:
        """Raw items of `modality` (none of them None) through its encoder, as training features were computed:
        the pooled vectors (n, D) float32 on the CPU, and per item its token/patch sequence when the head reads
        sequences (else None). Call under `self.lock`."""
        import torch

        from .fingerprints import autocast

        enc = self.encoders[modality]
        with torch.set_grad_enabled(grad), autocast(self.device, self.precision[modality]):
            out = enc.encode(enc.preprocess(list(items)), return_sequence=self.sequences)
        # float32 as the cache stores them (under autocast the encoder returns bf16 / fp16)
        pooled = out.pooled.float().cpu()
        seqs = [out.sequence[j, out.mask[j]].cpu() for j in range(len(items))] if self.sequences else None
        return pooled, seqs

    def features(self, posters: list[Image.Image | None], plots: list[str | None], grad: bool = False) -> dict:
        """The head's input batch (batching.modality_inputs): encoder outputs for the items present, `<m>_present`
        flags for the rest. Call under `self.lock`."""
        import torch

        from .batching import modality_inputs

        n = len(posters)
        items_of = self._items(posters, plots)
        batch: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            items = items_of[m]
            idx = [i for i, x in enumerate(items) if x is not None]
            pooled = torch.zeros(n, self.encoders[m].dim)
            seqs: list = [None] * n
            if idx:
                got, got_seqs = self.encode(m, [items[i] for i in idx], grad=grad)
                pooled = pooled.index_copy(0, torch.tensor(idx), got)
                for j, i in enumerate(idx if got_seqs is not None else ()):
                    seqs[i] = got_seqs[j]
            batch.update(modality_inputs(m, pooled, torch.tensor([x is not None for x in items]),
                                         seqs if self.sequences else None))
        return {k: v.to(self.device) for k, v in batch.items()}

    def probabilities(self, batch: dict) -> np.ndarray:
        """The head's genre probabilities (n, G) float64 for a batch of batching.modality_inputs entries."""
        import torch

        with torch.inference_mode():
            logits = self.head({k: v.to(self.device) for k, v in batch.items()})["logits"]
        return torch.sigmoid(logits).double().cpu().numpy()

    def predict(self, posters: list[Image.Image | None], plots: list[str | None]) -> list[dict[str, Any]]:
        """Predict a batch of movies (a None poster or plot = that modality is missing)."""
        import torch

        if len(posters) != len(plots):
            raise ValueError(f"got {len(posters)} posters but {len(plots)} plots")
        used = [self.check(p, t) for p, t in zip(posters, plots)]
        with self.lock, torch.inference_mode():
            batch = self.features(posters, plots)
            out = self.head(batch)
            probs = torch.sigmoid(out["logits"]).double().cpu().numpy()
            # Occlusion: the same movies with one modality replaced by the model's stand-in (a head pass only).
            without = {}
            if len(self.modalities) == 2:
                for m in self.modalities:
                    b = dict(batch, **{f"{m}_present": torch.zeros_like(batch[f"{m}_present"])})
                    without[m] = torch.sigmoid(self.head(b)["logits"]).double().cpu().numpy()
        return [self._result(i, probs[i], {m: w[i] for m, w in without.items()}, out, used[i])
                for i in range(len(posters))]

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
            a = float(a) if a.dim() == 0 else float(a[i].mean())
            return {"kind": "late_alpha", "image": a, "text": 1 - a}
        return None


def load_model(directory: str | Path, device: str = "cpu") -> Predictor:
    """Restore a saved model folder (a run's `model/`) as a ready-to-use Predictor."""
    return Predictor(directory, device=device)
