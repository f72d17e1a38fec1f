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

from ..data.modalities import spec
from ..features.fingerprints import autocast, differences, encoder_record, identity_sha256, same_features
from .base import PredictorBase, check_logits
from .onnx_predictor import OnnxPredictor, is_exported


class Predictor(PredictorBase):
    """A saved model ready to predict. Thread-safe: inference runs under one lock (on a CPU, parallel forward
    passes would only fight over the same cores, and a Hugging Face fast tokenizer must not be used concurrently).
    `cache_root`: where the offline weights its encoders need are built (encoders.create_encoder; None:
    paths.cache_root()), the root the caller caches their features under."""

    def __init__(self, directory: str | Path, device: str = "cpu", cache_root: Path | None = None):
        import torch

        from ..encoders import EncoderOptionError, create_encoder  # lazy: keeps inference.predictor free of torch

        # lazy: keeps inference.predictor free of safetensors, torch
        from .checkpoint import META_FILE, ModelFolderError, load_head

        self.directory = Path(directory)
        self.head, self.meta = load_head(self.directory)  # verified: weights, shapes, thresholds, encoder records
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
            rec = self.meta["encoders"][m]
            try:
                encoder = create_encoder(rec["name"], modality=m, cache_root=cache_root, **rec["kwargs"])
            except EncoderOptionError as e:  # written by another release, or edited: the file is what is wrong
                raise ModelFolderError(f"{self.directory / META_FILE}: the {m} encoder record: {e}") from None
            self.encoders[m] = encoder.to(device).eval()
        # The languages the text encoder was trained for (model.json; folders before it: the registry), which
        # decide the script warnings (languages.py). None: not declared (a local folder), so nothing is warned.
        from ..encoders import encoder_languages

        self.languages: list[str] | None = None
        if "text" in self.modalities:
            rec = self.meta["encoders"]["text"]
            self.languages = rec["languages"] if "languages" in rec else encoder_languages(rec["name"])
        self.precision: dict[str, str] = {}  # per modality, the autocast its features were computed under
        self._check_fingerprints()
        self.batch_sizes: dict[str, int] = {}  # per modality, items per encoder call (default: batch_size)
        self.lock = threading.Lock()
        self._probe()  # a model whose outputs overflow is refused here

    def _check_fingerprints(self) -> None:
        """Refuse encoders whose weights or preprocessing differ from those the head was trained on (a changed
        checkpoint behind the same name would silently shift every prediction), and learn the precision each
        modality's features were computed at. `self.meta` then records each encoder's fingerprint as it is here
        (the same features; a path the folder recorded for the weights is left out)."""
        for m in self.modalities:
            rec = self.meta["encoders"][m]  # its hash was checked against its fingerprint on loading
            got = self.encoders[m].fingerprint()  # hashes the weight files (once per process)
            precision = rec["precision"]
            if not (identity_sha256(got, precision) == rec["fingerprint_sha256"]
                    or same_features(rec["fingerprint"], got)):  # the same weights, installed elsewhere
                differ = differences(rec["fingerprint"], got)
                raise ValueError(f"{self.directory}: the {m} encoder {self.encoders[m].name!r} is not the one this "
                                 "model was trained with (its weights or preprocessing differ"
                                 + (f": {', '.join(differ)}" if differ else "") + ")")
            self.precision[m] = precision
            self.meta["encoders"][m] = encoder_record(rec["name"], rec["kwargs"], got, precision)

    def encode(self, modality: str, items: list, grad: bool = False) -> tuple:
        """Raw items of `modality` (none of them None) through its encoder, as training features were computed:
        the pooled vectors (n, D) float32 on the CPU, and per item its token/patch sequence when the head reads
        sequences (else None). Call under `self.lock`."""
        import torch

        enc = self.encoders[modality]
        with torch.set_grad_enabled(grad), autocast(self.device, self.precision[modality]):
            out = enc.encode(enc.preprocess(list(items)), return_sequence=self.sequences)
        # float32 as the cache stores them (under autocast the encoder returns bf16 / fp16)
        pooled = out.pooled.float().cpu()
        seqs = [out.sequence[j, out.mask[j]].cpu() for j in range(len(items))] if self.sequences else None
        return pooled, seqs

    def batch_size(self, modality: str) -> int:
        """Items per encoder call: `batch_sizes[modality]` when set, else the feature cache's default batch (small
        on a CPU, large on a GPU)."""
        if modality in self.batch_sizes:
            return self.batch_sizes[modality]
        return 128 if self.device.type == "cuda" else spec(modality).cpu_batch_size

    def _encoder_batches(self, modality: str, items: list, idx: list[int]) -> list[list[int]]:
        """The encoder calls for the present items `idx`: batches of `batch_size`, plots grouped by token length
        (longest first, as the feature cache plans them), so a catalog pays for almost no padding."""
        enc, size = self.encoders[modality], self.batch_size(modality)
        lengths = enc.token_lengths
        if lengths is not None and len(idx) > 1:
            n = lengths([items[i] for i in idx])
            idx = [i for _, i in sorted(zip(n, idx), key=lambda t: -t[0])]  # stable: equal lengths keep order
        return [idx[i:i + size] for i in range(0, len(idx), size)]

    def features(self, posters: list[Image.Image | None], plots: list[str | None], grad: bool = False) -> dict:
        """The head's input batch (batching.modality_inputs): encoder outputs for the items present, `<m>_present`
        flags for the rest. However many movies are given, each encoder runs on batches of `batch_size` items,
        plots of similar length together (a whole catalog goes through at the encoder's throughput, never as one
        huge padded batch). Call under `self.lock`."""
        import torch

        from ..fusion.batching import modality_inputs  # lazy: keeps inference.predictor free of torch

        n = len(posters)
        items_of = self._items(posters, plots)
        batch: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            items = items_of[m]
            pooled = torch.zeros(n, self.encoders[m].dim)
            seqs: list = [None] * n
            for idx in self._encoder_batches(m, items, [i for i, x in enumerate(items) if x is not None]):
                got, got_seqs = self.encode(m, [items[i] for i in idx], grad=grad)
                pooled = pooled.index_copy(0, torch.tensor(idx), got)
                for j, i in enumerate(idx if got_seqs is not None else ()):
                    seqs[i] = got_seqs[j]
            batch.update(modality_inputs(m, pooled, torch.tensor([x is not None for x in items]),
                                         seqs if self.sequences else None))
        return {k: v.to(self.device) for k, v in batch.items()}

    def probabilities(self, batch: dict) -> np.ndarray:
        """The head's genre probabilities (n, G) float64 for a batch of batching.modality_inputs entries;
        NonFiniteOutputError (its `rows`: positions in the batch) where the logits are not finite."""
        import torch

        with torch.inference_mode():
            logits = self.head({k: v.to(self.device) for k, v in batch.items()})["logits"]
        check_logits([logits.float().cpu().numpy()])
        return torch.sigmoid(logits).double().cpu().numpy()

    def _run(self, posters: list, plots: list) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
        import torch

        with torch.inference_mode():
            batch = self.features(posters, plots)
            out = self.head(batch)
            # Occlusion: the same movies with one modality replaced by the model's stand-in (a head pass only).
            occluded = {}
            if len(self.modalities) == 2:
                for m in self.modalities:
                    b = dict(batch, **{f"{m}_present": torch.zeros_like(batch[f"{m}_present"])})
                    occluded[m] = self.head(b)["logits"]
            check_logits([x.float().cpu().numpy() for x in [out["logits"], *occluded.values()]])
            probs = torch.sigmoid(out["logits"]).double().cpu().numpy()
            without = {m: torch.sigmoid(x).double().cpu().numpy() for m, x in occluded.items()}
        return probs, without, out

def load_model(directory: str | Path, device: str = "cpu", cache_root: Path | None = None) -> Predictor:
    """Restore a saved model folder (a run's `model/`) as a ready-to-use Predictor (its offline weights built
    under `cache_root`, see Predictor). A folder written by `genrefusion export --format onnx` is run with
    onnxruntime instead, without importing torch (exported.py)."""
    if is_exported(directory):
        return OnnxPredictor(directory, device=device)
    return Predictor(directory, device=device, cache_root=cache_root)
