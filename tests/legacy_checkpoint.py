"""The format-1 model folder of genrefusion <= the release before model.json format 2, kept verbatim for tests.

`save_model` is that release's checkpoint.save_model; `encoders` is how its experiment.py filled the `encoders`
argument (features mode: the feature cache's hash of the fingerprint, with the precision mixed in for non-fp32
autocast and left out for a joined encoder; end-to-end mode: the fingerprint dict itself); `probabilities` is what
that release's Predictor computed for a batch (fp32 encoders, no autocast). Tests build format-1 folders with it
and check that the current loader reads them and predicts what the old one did. Nothing here is used by the
library.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from genrefusion.atomic import staging_dir
from genrefusion.config import Config
from genrefusion.data.labels import GENRES

FORMAT_VERSION = 1


# --- checkpoint.save_model, verbatim ---------------------------------------------------------------------------
def save_model(directory: str | Path, model: torch.nn.Module, cfg: Config, threshold: Any,
               encoders: dict[str, dict[str, Any]]) -> Path:
    """Write atomically: everything goes to a sibling temp folder which is then renamed into place.
    `encoders`: per modality {"name", "kwargs", "fingerprint"}, what load_model rebuilds and checks."""
    directory = Path(directory)
    with staging_dir(directory) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        meta = {
            "format": FORMAT_VERSION,
            "model": model.config,
            "genres": list(GENRES),
            "thresholds": np.asarray(threshold).tolist(),
            "encoders": encoders,
            "config": cfg.to_dict(),
        }
        (tmp / "model.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return directory


# --- how experiment.py filled `encoders` -----------------------------------------------------------------------
def _fingerprint_hash(fp: dict) -> str:  # features._fingerprint_hash
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def _release_fingerprint(encoder) -> dict:
    """encoder.fingerprint() as that release computed it: a local weights folder's path was its "source"."""
    from genrefusion.encoders.concat import ConcatEncoder

    if isinstance(encoder, ConcatEncoder):
        return {"class": type(encoder).__name__, "parts": [_release_fingerprint(p) for p in encoder.parts]}
    fp = encoder.fingerprint()
    if "source" not in fp and getattr(encoder, "_folder", None) is not None:
        fp["source"] = str(encoder.source)
    return fp


def _feature_table_fingerprint(encoder, precision: str) -> str:
    """FeatureTable.fingerprint as that release's dataset_features set it."""
    from genrefusion.encoders.concat import ConcatEncoder

    if isinstance(encoder, ConcatEncoder):  # concat_tables(..., _fingerprint_hash(encoder.fingerprint()))
        return _fingerprint_hash(_release_fingerprint(encoder))
    fp = _release_fingerprint(encoder)  # FeatureCache.__init__
    if precision != "fp32":
        fp = {**fp, "precision": precision}
    return _fingerprint_hash(fp)


def encoders(cfg: Config, modalities: tuple[str, ...], precision: str = "fp32") -> dict[str, dict[str, Any]]:
    """run_experiment's `encoders` argument of save_model, for cfg.mode 'features' (the cache ran under
    `precision`) or 'end-to-end'."""
    from genrefusion.encoders import create_encoder
    from genrefusion.training.experiment import encoder_kwargs, encoder_name

    out = {}
    for m in modalities:
        enc = create_encoder(encoder_name(cfg, m), modality=m, **encoder_kwargs(cfg, m))
        fingerprint = (_feature_table_fingerprint(enc, precision) if cfg.mode == "features"
                       else _release_fingerprint(enc))
        out[m] = {"name": encoder_name(cfg, m), "kwargs": encoder_kwargs(cfg, m), "fingerprint": fingerprint}
    return out


# --- what that release's Predictor predicted -------------------------------------------------------------------
def probabilities(directory: str | Path, posters: list, plots: list) -> np.ndarray:
    """Probabilities (N, 23) the format-1 loader gave: checkpoint.load_head, the encoders named in model.json,
    Predictor.features (fp32, no autocast) and the head, as that release did it."""
    from genrefusion.encoders import create_encoder
    from genrefusion.fusion import create_model
    from genrefusion.training.train import pad_sequences

    directory = Path(directory)
    meta = json.loads((directory / "model.json").read_text(encoding="utf-8"))
    assert meta["format"] == FORMAT_VERSION
    cfg = dict(meta["model"])
    name = cfg.pop("name")
    if "head_dropout" in cfg:
        cfg["head_dropout"] = tuple(cfg["head_dropout"])
    head = create_model(name, **cfg)
    head.load_state_dict(load_file(str(directory / "model.safetensors")))
    head.eval()
    modalities, sequences = tuple(head.modalities), bool(head.uses_sequences)
    encs = {m: create_encoder(meta["encoders"][m]["name"], modality=m, **meta["encoders"][m].get("kwargs", {})).eval()
            for m in modalities}
    n = len(posters)
    batch: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for m in modalities:
            items = plots if m == "text" else posters
            enc = encs[m]
            idx = [i for i, x in enumerate(items) if x is not None]
            pooled = torch.zeros(n, enc.dim)
            seqs: list = [None] * n
            if idx:
                out = enc.encode(enc.preprocess([items[i] for i in idx]), return_sequence=sequences)
                pooled = pooled.to(out.pooled.dtype).index_copy(0, torch.tensor(idx), out.pooled.cpu())
                if sequences:
                    for j, i in enumerate(idx):
                        seqs[i] = out.sequence[j, out.mask[j]].cpu()
            batch[m] = pooled
            batch[f"{m}_present"] = torch.tensor([x is not None for x in items])
            if sequences:
                batch[f"{m}_seq"], batch[f"{m}_seq_mask"] = pad_sequences(seqs, enc.dim)
        return torch.sigmoid(head(batch)["logits"]).double().cpu().numpy()
