"""`genrefusion export --model DIR --format onnx --out DIR2`: a saved model as ONNX graphs that onnxruntime runs
without torch (the folder's layout: exported.py).

    genrefusion export --model runs/gmu/model --format onnx --out runs/gmu/onnx
    genrefusion serve --model runs/gmu/onnx          # or predict --model runs/gmu/onnx ...

Each encoder (each part of a joined "a+b" encoder) and the head are traced with torch.onnx.export (the TorchScript
exporter; batch and sequence length are dynamic axes), a text part's tokenizer is written as the `tokenizers`
library's tokenizer.json with the model's truncation and padding, and a poster part's eval transform as its size,
mean and std. Every fusion exports, the sequence cross-attention included, with the learned stand-ins of missing
modalities (they are part of the head's graph).

Before the folder appears (it is built under a temporary name), the exported model is run by onnxruntime on check
movies (--check-data, else built-in probe posters and plots) with and without each modality it may miss, and its
probabilities are compared with the torch model's: a difference over --tolerance (default 1e-3) is an error and
nothing is written. The graphs compute in fp32. A model trained on bf16/fp16 features is compared twice: with the
torch model run at fp32 (the contract, what the graphs compute) and at its training precision (what the torch
Predictor answers); both differences are recorded in export.json and printed.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..atomic import staging_dir
from ..data.loader import load_dataset
from ..data.posters import load_poster
from ..features.onnx_graphs import encoder_wrapper, trace
from ..version import __version__
from .integrity import seal
from .onnx_predictor import EXPORT_FORMAT, FUSION_OUTPUTS, HEAD_FILE, KIND, MANIFEST, OnnxPredictor, sha256_file
from .predictor import Predictor

DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-3
PROBE_PLOTS = (
    "A detective hunts a killer through the dark streets of a city at night.",
    "Two friends start a band at school and learn what music means to them.",
    "love",
    " ".join(["An alien ship lands near a small town, and a family must decide whom to trust as the army arrives."]
             * 40),  # longer than any encoder reads: checks truncation
    "Une comédie sur un mariage qui tourne mal, with a ghost in the house and a dog named Rex!",
)


class ExportError(ValueError):
    """A model that cannot be exported, or whose export does not predict like it."""


def _io_records(path: Path) -> tuple[list[dict], list[dict]]:
    """A graph's inputs and outputs as export.json records them: name, shape (ints and dynamic axis names), type."""
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rec = [[{"name": a.name, "shape": list(a.shape), "type": a.type} for a in args]
           for args in (s.get_inputs(), s.get_outputs())]
    return rec[0], rec[1]


def _export_part(part, m: str, i: int, tmp: Path, sequences: bool, opset: int) -> dict[str, Any]:
    """One encoder (part) -> <m>.<i>.onnx (+ its tokenizer), and its record in export.json."""
    import torch

    from ..encoders import ImageEncoder, TextEncoder  # lazy: keeps inference.export free of torch

    stem = f"{m}.{i}"
    record: dict[str, Any] = {"kind": part.modality, "name": part.name, "file": f"{stem}.onnx", "dim": int(part.dim)}
    if isinstance(part, TextEncoder):
        tok = part.tokenizer
        if not getattr(tok, "is_fast", False):
            raise ExportError(f"the {m} encoder {part.name!r} has no fast tokenizer (tokenizer.json), which serving "
                              "without torch needs")
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
        backend.enable_truncation(max_length=part.max_length)
        backend.enable_padding(direction=tok.padding_side, pad_id=tok.pad_token_id, pad_token=tok.pad_token,
                               pad_type_id=tok.pad_token_type_id)
        backend.save(str(tmp / f"{stem}.tokenizer.json"))
        record.update(tokenizer=f"{stem}.tokenizer.json", normalise_text=bool(part.normalise_text),
                      prefix=str(part.prefix), max_length=int(part.max_length))
        example = part.preprocess(["a plot", "a longer plot, about a dog and a cat"])
        names = list(example)
        dynamic = {n: {0: "batch", 1: "length"} for n in names}
    elif isinstance(part, ImageEncoder):
        record.update(size=part.image_size, mean=list(part.transform.mean), std=list(part.transform.std))
        names = ["pixel_values"]
        example = {"pixel_values": torch.randn(2, 3, part.image_size, part.image_size)}
        dynamic = {"pixel_values": {0: "batch"}}
    else:
        raise ExportError(f"cannot export the {m} encoder {part.name!r} ({type(part).__name__}): only Hugging Face "
                          "text encoders and image encoders are exported")
    outputs = ["pooled", "sequence"] if sequences else ["pooled"]
    dynamic.update(pooled={0: "batch"}, **({"sequence": {0: "batch", 1: "tokens"}} if sequences else {}))
    path = tmp / record["file"]
    trace(encoder_wrapper(part, names, sequences), tuple(example[n] for n in names), path, names, outputs, dynamic,
            opset)
    record["inputs"], record["outputs"] = _io_records(path)
    return record


def _traceable_attention(mha):
    """nn.MultiheadAttention's forward (eval: no dropout; one projection for q, k and v of d_model each, as the
    cross-attention fusion builds it) written with shape-free reshapes. The module's own forward computes its head
    reshapes from Python ints, which the tracer bakes into the graph: an export traced at one sequence length would
    fail at every other one."""
    import torch
    from torch.nn import functional as F  # noqa: N812

    if mha.bias_k is not None or mha.add_zero_attn or not mha._qkv_same_embed_dim or not mha.batch_first:
        raise ExportError("cannot export this nn.MultiheadAttention (bias_k, add_zero_attn, separate kdim/vdim or "
                          "batch_first=False)")

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, query, key, value, key_padding_mask=None):
            e, h = self.mha.embed_dim, self.mha.num_heads
            w, b = self.mha.in_proj_weight, self.mha.in_proj_bias
            heads = [F.linear(x, w[i * e:(i + 1) * e], None if b is None else b[i * e:(i + 1) * e])
                     .unflatten(-1, (h, e // h)).transpose(1, 2) for i, x in enumerate((query, key, value))]
            q, k, v = heads  # (B, heads, L, d)
            scores = (q * (e // h) ** -0.5) @ k.transpose(-1, -2)
            if key_padding_mask is not None:  # True where a key is padding
                scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            weights = scores.softmax(dim=-1)
            out = self.mha.out_proj((weights @ v).transpose(1, 2).flatten(2))
            return out, weights.mean(dim=1)  # the weights averaged over heads, as the module returns them

    return Attention()


def _export_head(predictor, tmp: Path, opset: int) -> dict[str, Any]:
    """The head -> head.onnx: its inputs are the batch keys it reads, its outputs the logits and its fusion weights."""
    import copy

    import torch

    head = copy.deepcopy(predictor.head).eval()  # a copy: its attention modules are swapped for traceable ones
    for name, module in list(head.named_modules()):
        if isinstance(module, torch.nn.MultiheadAttention):
            parent, _, attr = name.rpartition(".")
            setattr(head.get_submodule(parent) if parent else head, attr, _traceable_attention(module))
    mods = predictor.modalities
    keys = [k for m in mods for k in ((f"{m}_seq", f"{m}_seq_mask") if predictor.sequences else (m,))]
    keys += [f"{m}_present" for m in mods]
    # an example batch of two movies; with two modalities the second lacks one (the stand-in path is traced too)
    example = {}
    for m in mods:
        d = predictor.encoders[m].dim
        if predictor.sequences:
            example[f"{m}_seq"] = torch.randn(2, 3, d)
            example[f"{m}_seq_mask"] = torch.tensor([[True, True, False], [True, False, False]])
        else:
            example[m] = torch.randn(2, d)
        example[f"{m}_present"] = torch.tensor([True, m == "text" or len(mods) == 1])
    with torch.no_grad():
        extras = [k for k in FUSION_OUTPUTS if k in head(example)]
    outputs = ["logits", *extras]

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = head

        def forward(self, *tensors):
            out = self.head(dict(zip(keys, tensors)))
            return tuple(out[k] for k in outputs)

    dynamic = {k: ({0: "batch", 1: f"{k.split('_')[0]}_length"} if "_seq" in k else {0: "batch"}) for k in keys}
    dynamic.update({k: {0: "batch"} for k in outputs if not (k == "alpha" and example_alpha_is_scalar(head))})
    trace(Wrapped(), tuple(example[k] for k in keys), tmp / HEAD_FILE, keys, outputs, dynamic, opset)
    inputs, outs = _io_records(tmp / HEAD_FILE)
    return {"file": HEAD_FILE, "inputs": inputs, "outputs": outs}


def example_alpha_is_scalar(head) -> bool:
    """Late fusion with one weight for the whole model returns a 0-d alpha (no batch axis to declare)."""
    alpha = getattr(head, "alpha_logit", None)
    return alpha is not None and alpha.dim() == 0


def _check_items(predictor, check_data: str | None, count: int) -> tuple[list, list]:
    """(posters, plots) to compare the export on: movies from `check_data` (a catalog or an MM-IMDb folder), else
    probes; each movie also without each modality the model may miss."""
    import numpy as np
    from PIL import Image

    if check_data:
        plot_mode = predictor.meta["config"].get("plot_mode", "join")
        movies = list(load_dataset(check_data, plot_mode=plot_mode).movies)[:count]
        if not movies:
            raise ExportError(f"{check_data}: no movie to check the export on")
        posters = [load_poster(m.poster) if m.poster else None for m in movies]
        plots = [m.plot for m in movies]
    else:
        rng = np.random.default_rng(0)
        shapes = [(450, 300), (300, 300), (64, 900), (1000, 700), (37, 23)]
        posters = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]
        posters[1] = posters[1].convert("L")  # a greyscale poster: converted to RGB like every other
        plots = list(PROBE_PLOTS)
    pairs = [(p, t) for p, t in zip(posters, plots) if all(x is not None for x in (p, t)[: 2])]
    pairs += [(p, t) for p, t in zip(posters, plots) if (p is None) != (t is None)]
    for m, blank in (("image", lambda p, t: (None, t)), ("text", lambda p, t: (p, None))):
        if m in predictor.modalities and len(predictor.modalities) == 2 and predictor.can_miss(m):
            pairs += [blank(p, t) for p, t in zip(posters, plots) if p is not None and t is not None][:3]
    pairs = [(p if "image" in predictor.modalities else None, t if "text" in predictor.modalities else None)
             for p, t in pairs]
    pairs = [(p, t) for p, t in pairs if p is not None or t is not None]
    return [p for p, _ in pairs], [t for _, t in pairs]


def _max_diff(a: list[dict], b: list[dict]) -> float:
    """The largest probability difference between two lists of results, over every genre of `probabilities` and of
    each `without` (the occlusion the contributions come from)."""
    worst = 0.0
    for x, y in zip(a, b):
        rows = [(x["probabilities"], y["probabilities"])] + [(x["without"][m], y["without"][m]) for m in x["without"]]
        worst = max([worst] + [abs(p[g] - q[g]) for p, q in rows for g in p])
    return worst


def _compare(predictor, onnx, posters: list, plots: list) -> dict[str, Any]:
    trained = dict(predictor.precision)
    got = onnx.predict(posters, plots)
    predictor.precision = {m: "fp32" for m in trained}
    try:
        fp32 = predictor.predict(posters, plots)
    finally:
        predictor.precision = trained
    out = {"movies": len(posters), "max_abs_diff": _max_diff(got, fp32), "trained_precision": trained}
    if any(p != "fp32" for p in trained.values()):
        out["max_abs_diff_vs_trained_precision"] = _max_diff(got, predictor.predict(posters, plots))
    return out


def export_onnx(model_dir: str | Path, out_dir: str | Path, *, opset: int = DEFAULT_OPSET,
                tolerance: float = DEFAULT_TOLERANCE, check_data: str | None = None, check_movies: int = 32,
                log=print) -> dict[str, Any]:
    """Export the model folder `model_dir` to `out_dir` (replaced atomically); returns the manifest written."""
    import onnx
    import onnxruntime
    import torch

    t0 = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise ExportError(f"{out_dir}: the export must go to another folder than the model's")
    predictor = Predictor(model_dir)  # verified: weights, encoder fingerprints
    with staging_dir(out_dir) as tmp:
        parts = {}
        for m in predictor.modalities:
            enc = predictor.encoders[m]
            pieces = enc.feature_parts() or (enc,)
            if len(pieces) > 1 and predictor.sequences:
                raise ExportError(f"the {m} encoder {enc.name!r} is joined from parts, which give no one sequence")
            parts[m] = [_export_part(p, m, i, tmp, predictor.sequences, opset) for i, p in enumerate(pieces)]
        head = _export_head(predictor, tmp, opset)
        meta = predictor.meta
        manifest = {
            "kind": KIND, "format": EXPORT_FORMAT,
            "model": meta["model"], "genres": meta["genres"], "thresholds": meta["thresholds"],
            "config": meta["config"], "encoders": _with_languages(meta["encoders"], predictor),
            "modalities": list(predictor.modalities),
            "sequences": predictor.sequences, "head": head, "parts": parts,
            "source": {"format": meta["format"], "weights_sha256": meta["weights_sha256"],
                       "model_json_sha256": sha256_file(model_dir / "model.json")},
            "runtime": {"opset": opset, "precision": "fp32", "genrefusion": __version__, "torch": torch.__version__,
                        "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
            "files": {f.name: sha256_file(f) for f in sorted(tmp.iterdir())},
        }
        (tmp / MANIFEST).write_text(json.dumps(seal(manifest), indent=2), encoding="utf-8")
        posters, plots = _check_items(predictor, check_data, check_movies)
        check = _compare(predictor, OnnxPredictor(tmp), posters, plots)
        check["tolerance"] = tolerance
        check["data"] = "probes" if not check_data else Path(check_data).name
        if not check["max_abs_diff"] <= tolerance:
            raise ExportError(f"the exported model's probabilities differ from the torch model's by up to "
                              f"{check['max_abs_diff']:.2e} on {check['movies']} check movies, over the tolerance "
                              f"{tolerance:g}; nothing was written")
        manifest = seal({**manifest, "check": check})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    line = (f"exported {predictor.fusion} ({', '.join(p['name'] for ps in parts.values() for p in ps)}) to "
            f"{out_dir} in {time.perf_counter() - t0:.1f} s; on {check['movies']} check movies the probabilities "
            f"differ from the torch model's (fp32) by at most {check['max_abs_diff']:.1e}")
    if "max_abs_diff_vs_trained_precision" in check:
        trained = ", ".join(sorted(set(check["trained_precision"].values())))
        line += (f", from the torch model at its training precision ({trained}) by "
                 f"{check['max_abs_diff_vs_trained_precision']:.1e} (the graphs compute in fp32)")
    if log:
        log(line)
    return manifest


def _with_languages(records: dict[str, dict], predictor) -> dict[str, dict]:
    """The encoder records with the text encoder's languages as the torch Predictor knows them (model.json, or
    the registry for folders saved before model.json recorded them), so the runtime warns about unreadable
    scripts without importing the registry (and torch)."""
    records = {m: dict(r) for m, r in records.items()}
    if "text" in records:
        records["text"]["languages"] = predictor.languages
    return records
