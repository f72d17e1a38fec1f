"""Running an exported model (`genrefusion export --format onnx`) with onnxruntime, without torch.

An exported folder holds, next to its manifest export.json:
    head.onnx                 the trained fusion head: per modality "<m>" (B, D) and "<m>_present" (B,) bool (a
                              sequence head reads "<m>_seq" (B, L, D) and "<m>_seq_mask" (B, L) instead of "<m>")
                              -> "logits" (B, genres) and the fusion's own weights ("gate", "modality_weights",
                              "alpha") where it has them
    <m>.<i>.onnx              part i of modality m's encoder (a joined "a+b" encoder has one file per part; their
                              pooled vectors are concatenated, as encoders/concat.py does): the encoder's inputs
                              -> "pooled" (B, D) (and "sequence" (B, L, D) for a sequence head)
    <m>.<i>.tokenizer.json    a text part's tokenizer (the `tokenizers` library; truncation and padding included)

export.json records the source model (its model.json's genres, thresholds, config and encoder records, the
SHA-256 of its weights), the SHA-256 and the input/output shapes of every file, each part's preprocessing (text
normalisation, poster size, mean and std), the versions and opset it was written with, the agreement with the
torch model measured at export, and the SHA-256 of each of those keys (`fields_sha256`, integrity.py).
`OnnxPredictor` checks all of it before anything is used (a changed, truncated or missing file, or an edited key,
is refused naming it) and then answers exactly like the torch Predictor (same result dicts), which is what the
predict CLI and the service call: `predictor.load_model` picks it for an exported folder.

Explanations (Grad-CAM, integrated gradients) need the torch encoders' gradients: an exported folder has none, so
explain refuses it and the service answers /explain with 501.

Imports numpy, PIL, onnxruntime and tokenizers only (never torch), inside functions where they are heavy.
"""
from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..files import read_json_object, sha256_file  # noqa: F401  (sha256_file: export.py writes the digests)
from .base import PredictorBase, check_logits
from .integrity import FIELDS_KEY, check_fields
from ..data.labels import GENRES
from ..data.preprocessing import eval_pixels, normalise_text

MANIFEST = "export.json"
EXPORT_FORMAT = 1
KIND = "genrefusion-onnx"
HEAD_FILE = "head.onnx"
FUSION_OUTPUTS = ("gate", "modality_weights", "alpha")  # the head outputs Predictor._fusion_weights reads
_NUMPY = {"tensor(float)": np.float32, "tensor(bool)": np.bool_, "tensor(int64)": np.int64}


class ExportFolderError(ValueError):
    """An exported folder that cannot be used; the message names the file and the problem."""


def is_exported(directory: str | Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """export.json parsed, its keys and types checked, and every file it lists present with its recorded SHA-256."""
    directory = Path(directory)
    path = directory / MANIFEST
    manifest = read_json_object(path, ExportFolderError, " (is this a folder written by `genrefusion export`?)")
    if manifest.get("kind") != KIND:
        raise ExportFolderError(f"{path}: not a genrefusion export manifest (no \"kind\": \"{KIND}\")")
    if manifest.get("format") != EXPORT_FORMAT:
        raise ExportFolderError(f"{path}: unsupported export format {manifest.get('format')!r} (this genrefusion "
                                f"reads format {EXPORT_FORMAT})")
    sealed = check_fields(manifest, path, ExportFolderError)
    kinds = {"model": dict, "genres": list, "thresholds": (list, int, float), "config": dict, "encoders": dict,
             "modalities": list, "sequences": bool, "files": dict, "head": dict, "parts": dict, "source": dict}
    for key, kind in kinds.items():
        if key not in manifest:
            raise ExportFolderError(f"{path}: missing key {key!r}")
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool) is not (kind is bool):
            raise ExportFolderError(f"{path}: {key!r} has the wrong type ({type(manifest[key]).__name__})")
    genres, thresholds = manifest["genres"], manifest["thresholds"]
    if not genres or not all(isinstance(g, str) for g in genres) or len(set(genres)) != len(genres):
        raise ExportFolderError(f"{path}: 'genres' must be distinct genre names")
    if not sealed and genres != list(GENRES):
        raise ExportFolderError(f"{path}: 'genres' is not the list of the {len(GENRES)} MM-IMDb genres, in their "
                                f"order, that every folder exported without '{FIELDS_KEY}' holds: it was edited")
    values = thresholds if isinstance(thresholds, list) else [thresholds]
    if isinstance(thresholds, list) and len(thresholds) != len(genres):
        raise ExportFolderError(f"{path}: {len(thresholds)} thresholds for {len(genres)} genres")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
            raise ExportFolderError(f"{path}: threshold {v!r} is not a number between 0 and 1")
    mods = manifest["modalities"]
    if not mods or not set(mods) <= {"text", "image"} or set(manifest["parts"]) != set(mods):
        raise ExportFolderError(f"{path}: 'modalities' {mods!r} and the encoder parts {sorted(manifest['parts'])} "
                                "do not fit")
    for name, digest in manifest["files"].items():
        file = directory / name
        if Path(name).name != name or not isinstance(digest, str):
            raise ExportFolderError(f"{path}: bad file entry {name!r}")
        if not file.is_file():
            raise ExportFolderError(f"{file}: missing (export.json lists it)")
        if sha256_file(file) != digest:
            raise ExportFolderError(f"{file}: its SHA-256 is not the one export.json records (the file is damaged, "
                                    "truncated or was replaced)")
    listed = [HEAD_FILE] + [p[k] for parts in manifest["parts"].values() for p in parts
                            for k in ("file", "tokenizer") if k in p]
    unlisted = [f for f in listed if f not in manifest["files"]]
    if unlisted:
        raise ExportFolderError(f"{path}: {', '.join(unlisted)} not among its checksummed files")
    return manifest


def _session(path: Path, threads: int | None):
    """An onnxruntime session for one graph, with every graph optimisation on; its errors name the file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1  # one graph at a time (the predictor's lock); parallelism is within ops
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own error types (InvalidProtobuf, Fail, ...): the file is what is wrong
        raise ExportFolderError(f"{path}: onnxruntime cannot load it ({str(e).strip()[:300]})") from None


_SHRINK = []  # the RunOptions of a run that gives its memory back, made once


def _run_options(items: int):
    """How to run a graph on `items` items. onnxruntime's CPU arena keeps what its largest run needed for the life
    of the session: one batch of 16 posters left an ONNX server ~130 MB above idle for good (the image encoder's
    activations; measured with benchmarks/serve_hostile.py). A run of more than one item shrinks the arena when it
    ends, so it holds at most what one movie needs. One movie's runs keep it: without the arena they were ~25%
    slower (each run's tensors mapped and unmapped again), a batch's ~10% (the same benchmark, --latency)."""
    if items <= 1:
        return None
    if not _SHRINK:
        import onnxruntime as ort

        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        _SHRINK.append(options)
    return _SHRINK[0]


def _check_io(session, path: Path, inputs: list[dict], outputs: list[dict]) -> None:
    """The graph's inputs and outputs are the ones export.json records, with the same shapes (a dimension is an
    int, or the name of a dynamic axis) and types."""
    for what, got, want in (("inputs", session.get_inputs(), inputs), ("outputs", session.get_outputs(), outputs)):
        have = [{"name": a.name, "shape": list(a.shape), "type": a.type} for a in got]
        if [a["name"] for a in have] != [a["name"] for a in want]:
            raise ExportFolderError(f"{path}: its {what} are {[a['name'] for a in have]}, export.json records "
                                    f"{[a['name'] for a in want]}")
        for h, w in zip(have, want):
            if h["type"] != w["type"] or len(h["shape"]) != len(w["shape"]) or any(
                    isinstance(b, int) and a != b for a, b in zip(h["shape"], w["shape"])):
                raise ExportFolderError(f"{path}: {what[:-1]} {h['name']!r} is {h['type']} {h['shape']}, export.json "
                                        f"records {w['type']} {w['shape']}")


class _Part:
    """One exported encoder (part): raw items -> pooled vectors (n, dim) and, for a sequence head, each item's real
    tokens / patches."""

    def __init__(self, directory: Path, record: dict, threads: int | None, sequences: bool):
        self.record, self.kind, self.dim = record, record["kind"], int(record["dim"])
        self.path = directory / record["file"]
        self.session = _session(self.path, threads)
        _check_io(self.session, self.path, record["inputs"], record["outputs"])
        out = {o["name"]: o["shape"] for o in record["outputs"]}
        if out.get("pooled", [None])[-1] != self.dim or (sequences and "sequence" not in out):
            raise ExportFolderError(f"{self.path}: its outputs {sorted(out)} do not give the {self.dim}-d pooled "
                                    "vector" + (" and the sequence" if sequences else "") + " export.json records")
        self.outputs = ["pooled", "sequence"] if sequences else ["pooled"]
        self.input_names = [i["name"] for i in record["inputs"]]
        if self.kind == "text":
            from tokenizers import Tokenizer

            tok_path = directory / record["tokenizer"]
            try:
                self.tokenizer = Tokenizer.from_file(str(tok_path))
            except Exception as e:  # tokenizers raises a bare Exception for a file it cannot parse
                raise ExportFolderError(f"{tok_path}: not a tokenizer the tokenizers library reads ({e})") from None
            self.normalise = bool(record["normalise_text"])
            self.prefix = str(record.get("prefix", ""))  # e5's "passage: ", put before the (normalised) plot
        elif self.kind == "image":
            self.size, self.mean, self.std = int(record["size"]), record["mean"], record["std"]
        else:
            raise ExportFolderError(f"{self.path}: unknown encoder kind {self.kind!r} in export.json")

    def inputs(self, items: list) -> dict[str, np.ndarray]:
        if self.kind == "image":
            return {"pixel_values": np.stack([eval_pixels(img, self.size, self.mean, self.std) for img in items])}
        texts = [self.prefix + (normalise_text(t) if self.normalise else t) for t in items]
        encodings = self.tokenizer.encode_batch(texts)  # truncation and padding to the longest: in the tokenizer
        fields = {"input_ids": "ids", "token_type_ids": "type_ids", "attention_mask": "attention_mask"}
        return {name: np.asarray([getattr(e, fields[name]) for e in encodings], dtype=np.int64)
                for name in self.input_names}

    def run(self, items: list) -> tuple[np.ndarray, list[np.ndarray] | None]:
        feeds = self.inputs(items)
        got = self.session.run(self.outputs, feeds, _run_options(len(items)))
        if len(got) == 1:
            return got[0], None
        keep = feeds["attention_mask"].astype(bool) if "attention_mask" in feeds else None
        seqs = [s[keep[j]] if keep is not None else s for j, s in enumerate(got[1])]  # real tokens only
        return got[0], seqs


def pad_sequences(seqs: list[np.ndarray | None], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """batching.pad_sequences in numpy (that one is torch): padded to the longest, an absent item one masked-out
    zero token."""
    longest = max([len(s) for s in seqs if s is not None] + [1])
    out = np.zeros((len(seqs), longest, dim), dtype=np.float32)
    mask = np.zeros((len(seqs), longest), dtype=bool)
    for i, s in enumerate(seqs):
        if s is not None and len(s):
            out[i, : len(s)] = s
            mask[i, : len(s)] = True
    return out, mask


class OnnxPredictor(PredictorBase):
    """A Predictor over an exported folder: the same checks, results and thread safety, run by onnxruntime."""

    exported = True

    def __init__(self, directory: str | Path, device: str = "cpu", threads: int | None = None):
        if str(device) not in ("cpu", "auto"):
            raise ValueError(f"{directory}: an exported model runs on the CPU with onnxruntime (device {device!r} "
                             "is not available to it); serve the torch model folder for a GPU")
        self.directory = Path(directory)
        manifest = read_manifest(self.directory)
        self.manifest = manifest
        self.meta = {"format": 2, "model": manifest["model"], "genres": manifest["genres"],
                     "thresholds": manifest["thresholds"], "encoders": manifest["encoders"],
                     "config": manifest["config"]}
        self.genres = tuple(manifest["genres"])
        self.thresholds = np.broadcast_to(np.asarray(manifest["thresholds"], dtype=np.float64),
                                          (len(self.genres),)).copy()
        self.modalities = tuple(manifest["modalities"])
        self.sequences = manifest["sequences"]
        self.precision = {m: manifest["encoders"][m].get("precision", "fp32") for m in self.modalities}
        # recorded at export from the torch Predictor (model.json, or the registry for older folders)
        self.languages = manifest["encoders"]["text"].get("languages") if "text" in self.modalities else None
        self.parts = {m: [_Part(self.directory, p, threads, self.sequences) for p in manifest["parts"][m]]
                      for m in self.modalities}
        self.dims = {m: sum(p.dim for p in parts) for m, parts in self.parts.items()}
        head_path = self.directory / HEAD_FILE
        self.session = _session(head_path, threads)
        head = manifest["head"]
        _check_io(self.session, head_path, head["inputs"], head["outputs"])
        shapes = {i["name"]: i["shape"] for i in head["inputs"]}
        for m in self.modalities:
            key = f"{m}_seq" if self.sequences else m
            if shapes.get(key, [None])[-1] != self.dims[m] or f"{m}_present" not in shapes:
                raise ExportFolderError(f"{head_path}: its input {key!r} is {shapes.get(key)}, but the {m} encoder "
                                        f"gives {self.dims[m]}-d vectors")
        self.head_inputs = [i["name"] for i in head["inputs"]]
        self.head_outputs = [o["name"] for o in head["outputs"]]
        if self.head_outputs[0] != "logits" or head["outputs"][0]["shape"][-1] != len(self.genres):
            raise ExportFolderError(f"{head_path}: its first output is not the logits of {len(self.genres)} genres")
        self.lock = threading.Lock()
        self._probe()  # a model whose outputs overflow is refused here

    def info(self) -> dict[str, Any]:
        return {**super().info(), "runtime": "onnxruntime"}

    def features(self, posters: list, plots: list, grad: bool = False) -> dict[str, np.ndarray]:
        """The head's input batch, as Predictor.features builds it, in numpy."""
        n = len(posters)
        items_of = self._items(posters, plots)
        batch: dict[str, np.ndarray] = {}
        for m in self.modalities:
            items = items_of[m]
            idx = [i for i, x in enumerate(items) if x is not None]
            pooled = np.zeros((n, self.dims[m]), dtype=np.float32)
            seqs: list = [None] * n
            if idx:
                outs = [part.run([items[i] for i in idx]) for part in self.parts[m]]
                pooled[idx] = np.concatenate([o[0] for o in outs], axis=1)  # a joined encoder: its parts side by side
                if self.sequences:
                    for j, i in enumerate(idx):
                        seqs[i] = outs[0][1][j]
            batch[f"{m}_present"] = np.array([x is not None for x in items], dtype=bool)
            if self.sequences:
                batch[f"{m}_seq"], batch[f"{m}_seq_mask"] = pad_sequences(seqs, self.dims[m])
            else:
                batch[m] = pooled
        return batch

    def _run(self, posters: list, plots: list) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
        n = len(posters)
        batch = self.features(posters, plots)
        # The movies, then (bimodal models) the same movies with each modality replaced by the model's stand-in: one
        # head run over the stacked batch instead of three.
        occluded = list(self.modalities) if len(self.modalities) == 2 else []
        stacked = {k: np.concatenate([v] + [np.zeros_like(v) if k == f"{m}_present" else v for m in occluded])
                   for k, v in batch.items()}
        got = dict(zip(self.head_outputs, self.session.run(self.head_outputs,
                                                           {k: stacked[k] for k in self.head_inputs})))
        check_logits([got["logits"][j * n:(j + 1) * n] for j in range(1 + len(occluded))])
        probs = 1.0 / (1.0 + np.exp(-got["logits"].astype(np.float64)))
        without = {m: probs[(j + 1) * n:(j + 2) * n] for j, m in enumerate(occluded)}
        out = {k: (v if v.ndim == 0 else v[:n]) for k, v in got.items() if k in FUSION_OUTPUTS}
        return probs[:n], without, out
