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

import numpy as np
from PIL import Image

from .predictor_base import PredictorBase


class Predictor(PredictorBase):
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

    def features(self, posters: list[Image.Image | None], plots: list[str | None], grad: bool = False) -> dict:
        """The head's input batch (batching.modality_inputs): encoder outputs for the items present, `<m>_present`
        flags for the rest. Call under `self.lock`."""
        import torch

        from .batching import modality_inputs
        from .fingerprints import autocast

        n = len(posters)
        items_of = self._items(posters, plots)
        batch: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            items = items_of[m]
            enc = self.encoders[m]
            idx = [i for i, x in enumerate(items) if x is not None]
            pooled = torch.zeros(n, enc.dim)
            seqs: list = [None] * n
            if idx:
                with torch.set_grad_enabled(grad), autocast(self.device, self.precision[m]):
                    out = enc.encode(enc.preprocess([items[i] for i in idx]), return_sequence=self.sequences)
                # float32 as the cache stores them (under autocast the encoder returns bf16 / fp16)
                pooled = pooled.index_copy(0, torch.tensor(idx), out.pooled.float().cpu())
                if self.sequences:
                    for j, i in enumerate(idx):
                        seqs[i] = out.sequence[j, out.mask[j]].cpu()
            batch.update(modality_inputs(m, pooled, torch.tensor([x is not None for x in items]),
                                         seqs if self.sequences else None))
        return {k: v.to(self.device) for k, v in batch.items()}

    def _run(self, posters: list, plots: list) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
        import torch

        with torch.inference_mode():
            batch = self.features(posters, plots)
            out = self.head(batch)
            probs = torch.sigmoid(out["logits"]).double().cpu().numpy()
            # Occlusion: the same movies with one modality replaced by the model's stand-in (a head pass only).
            without = {}
            if len(self.modalities) == 2:
                for m in self.modalities:
                    b = dict(batch, **{f"{m}_present": torch.zeros_like(batch[f"{m}_present"])})
                    without[m] = torch.sigmoid(self.head(b)["logits"]).double().cpu().numpy()
        return probs, without, out

def load_model(directory: str | Path, device: str = "cpu") -> Predictor:
    """Restore a saved model folder (a run's `model/`) as a ready-to-use Predictor. A folder written by
    `genrefusion export --format onnx` is run with onnxruntime instead, without importing torch (exported.py)."""
    from .exported import OnnxPredictor, is_exported

    if is_exported(directory):
        return OnnxPredictor(directory, device=device)
    return Predictor(directory, device=device)
