"""How the feature cache runs an encoder: PyTorch, or, on a CPU, the same fp32 model traced to ONNX and run by
ONNX Runtime, where that was measured faster on a CPU of this kind and to compute the same features.

Why: PyTorch's eager CPU kernels are slow for some architectures. On the 2-core AVX2 development machine
(benchmarks/cpu_precision.py speed) EfficientNet-Lite0's depthwise convolutions ran x4.1 faster in ONNX Runtime and
MPNet x1.7 (fused attention), while MiniLM and DINOv2 were no faster, with features equal to PyTorch's within fp32
rounding (cosine 1.0000). The backend therefore does not change what the features *are*: they are fp32
features under the same cache key and fingerprint, and the torch Predictor reproduces them at prediction time,
just as fp32 features computed on another CPU (AVX2 vs AVX512 kernels) differ in the last bits.

Backends: "torch"; "onnxruntime" (CPU, fp32 only, pooled vectors only: token/patch sequences always come from
torch); "auto" (the default): onnxruntime for an encoder when `precision.backend_for` finds the measured evidence
for it (cpu_precision.json: faster than torch here, and agreeing), else torch.

The traced graph is cached in `<cache root>/onnx/<encoder>-<key>/` (`encoder.onnx` + `graph.json`, written
atomically; the key covers the encoder's fingerprint, the companion poolings the graph also outputs, the opset and
the tracer). Each time a graph is loaded for an extraction it is checked against the torch encoder on probe inputs
(a few texts or images: one small batch, against a changed onnxruntime or a stale graph); one that disagrees (over
TOLERANCE) is not used (an error for backend=onnxruntime, a warning and torch for auto). A graph
file whose SHA-256 no longer matches graph.json is deleted with a warning and traced again.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import atomic
from ..config import CHOICES
from ..files import read_json_object, sha256_file
from ..paths import encoder_folder
from . import fingerprints
from .onnx_graphs import encoder_wrapper, trace
from .precision import backend_for

BACKENDS = CHOICES["feature_backend"]  # auto, torch, onnxruntime
OPSET = 17
GRAPH_FORMAT = 1  # bump when the traced graph's inputs/outputs change
TOLERANCE = 1e-4  # largest |onnxruntime - torch| accepted on the probe inputs, relative to the largest |feature|
PROBE_TEXTS = ("A detective hunts a killer through the dark streets of a city at night.", "love",
               " ".join(["Two friends start a band at school and learn what music means to them."] * 60))
logger = logging.getLogger(__name__)

Runner = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, list[torch.Tensor]]]


class BackendError(ValueError):
    """The requested backend cannot run this encoder (the message says why)."""


def check_backend(backend: str | None) -> str:
    """`backend` when it is one of BACKENDS (None: auto); else a ValueError saying which are. FeatureSpec checks
    its backend with it."""
    backend = backend or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"feature backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_backend(backend: str | None, encoder, precision: str, sequences: bool,
                    calibrated: str | None = None) -> str:
    """The backend `encoder`'s features are computed with: torch wherever onnxruntime does not apply (a GPU, a
    reduced precision, sequences, an encoder outside torch, one joined from parts); for auto, the `calibrated`
    choice (the fastest at `precision` measured on this machine, calibrate.py) where there is one, else what the
    shipped table says (precision.backend_for)."""
    backend = check_backend(backend)
    if backend == "torch":
        return "torch"
    why_not = None
    if encoder.device.type != "cpu":
        why_not = "it runs on the CPU only"
    elif precision != "fp32":
        why_not = f"it computes fp32 features only (precision is {precision})"
    elif sequences:
        why_not = "token/patch sequences come from torch"
    elif encoder.fixed_precision is not None or encoder.feature_parts():
        why_not = f"encoder {encoder.name!r} does not run in torch as one model"
    if why_not:
        if backend == "onnxruntime":
            raise BackendError(f"feature backend onnxruntime cannot encode with {encoder.name!r}: {why_not}")
        return "torch"
    if backend == "auto":
        return calibrated or backend_for(encoder.name)
    return backend


def torch_runner(encoder, companions: tuple) -> Runner:
    """The encoder's own forward pass (`encode`, or `encode_with_companions` when companions are wanted)."""
    def run(inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if companions:
            out, others = encoder.encode_with_companions(inputs, companions)
            return out.pooled, others
        return encoder.encode(inputs).pooled, []

    return run


def _probe_inputs(encoder) -> dict[str, torch.Tensor]:
    if encoder.modality == "text":
        return encoder.preprocess(list(PROBE_TEXTS))
    g = torch.Generator().manual_seed(0)
    from PIL import Image

    images = [Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy())
              for h, w in ((300, 200), (64, 640))]
    return encoder.preprocess(images)


def graph_dir(encoder, companions: tuple, cache_root: Path) -> Path:
    """The folder of the encoder's traced graph (with `companions`' outputs) under the cache root."""
    key = fingerprints.sha256_json({"encoder": encoder.fingerprint(),
                                    "companions": [c.fingerprint() for c in companions],
                                    "opset": OPSET, "format": GRAPH_FORMAT, "torch": torch.__version__})
    return encoder_folder(cache_root, "onnx", encoder.name, key)


def _trace(encoder, companions: tuple, folder: Path, probe: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Trace the encoder (and companions) into folder/encoder.onnx, atomically, with graph.json beside it."""
    names = list(probe)
    axes = {0: "batch", 1: "length"} if encoder.modality == "text" else {0: "batch"}
    outputs = ["pooled"] + [f"companion_{i}" for i in range(len(companions))]
    dynamic = {**{n: axes for n in names}, **{o: {0: "batch"} for o in outputs}}
    folder.parent.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_tmp(folder.parent)  # a tracer killed midway leaves its folder (hundreds of MB) behind
    with atomic.staging_dir(folder) as tmp:
        trace(encoder_wrapper(encoder, names, False, companions), tuple(probe[n] for n in names),
              tmp / "encoder.onnx", names, outputs, dynamic, OPSET)
        record = {"format": GRAPH_FORMAT, "encoder": encoder.name, "inputs": names, "outputs": outputs,
                  "fingerprint": encoder.fingerprint(), "companions": [c.fingerprint() for c in companions],
                  "sha256": sha256_file(tmp / "encoder.onnx"), "opset": OPSET, "torch": torch.__version__}
        atomic.write_json(tmp / "graph.json", record)
    return record


def ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same cores torch would use (OMP_NUM_THREADS)
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runner(encoder, cache_root: Path) -> Runner:
    """A Runner computing the encoder's pooled vectors and those of all its companions (Encoder.companions: one
    graph per encoder, whichever companions a run needs) with ONNX Runtime from a cached traced graph, traced on
    first use (under `cache_root`) and checked against torch on probe inputs each time it is loaded (see the
    module docstring)."""
    companions = encoder.companions()
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise BackendError(f"feature backend onnxruntime needs the onnxruntime package ({e})") from None
    folder = graph_dir(encoder, companions, cache_root)
    graph = folder / "encoder.onnx"
    record = None
    if folder.exists():
        try:
            record = read_json_object(folder / "graph.json", BackendError)
            if record.get("format") != GRAPH_FORMAT or sha256_file(graph) != record.get("sha256"):
                raise BackendError(f"{graph}: its SHA-256 does not match graph.json (damaged)")
        except (BackendError, OSError) as e:
            logger.warning("feature backend onnxruntime: %s; traced again", e)
            record = None  # _trace replaces the folder
    probe = _probe_inputs(encoder)
    if record is None:
        record = _trace(encoder, companions, folder, probe)
    session = ort_session(graph)
    names = record["inputs"]

    def run(inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        outs = session.run(None, {n: inputs[n].numpy() for n in names})
        return torch.from_numpy(outs[0]), [torch.from_numpy(o) for o in outs[1:]]

    # The check: the graph must compute the torch encoder's features (same fp32 numbers up to rounding).
    with torch.inference_mode():
        want, want_others = torch_runner(encoder, companions)(probe)
    got, got_others = run(probe)
    diff = max(float((a - b).abs().max()) / max(float(a.abs().max()), 1e-12)
               for a, b in zip([want, *want_others], [got, *got_others]))
    if not np.isfinite(diff) or diff > TOLERANCE:
        raise BackendError(f"feature backend onnxruntime: the traced graph of {encoder.name!r} ({graph}) differs "
                           f"from torch by {diff:.2e} (relative) on probe inputs, over the tolerance {TOLERANCE}")
    return run


def runner(backend: str, encoder, companions: tuple, cache_root: Path, explicit: bool) -> tuple[str, Runner]:
    """(backend actually used, Runner giving the pooled vectors of the encoder and of `companions`, some of its
    companions) for `backend` ('torch' | 'onnxruntime', resolved). With explicit=False (auto), a graph that cannot
    be traced or disagrees is reported as a warning and torch is used."""
    if backend == "onnxruntime":
        try:
            run_all = onnx_runner(encoder, cache_root)
            every = [c.fingerprint() for c in encoder.companions()]
            pick = [every.index(c.fingerprint()) for c in companions]

            def run(inputs):
                pooled, others = run_all(inputs)
                return pooled, [others[i] for i in pick]

            return "onnxruntime", run
        except Exception as e:  # tracing can fail in many ways (an operator without an ONNX form, ...)
            if explicit:
                raise BackendError(str(e)) if not isinstance(e, BackendError) else e
            logger.warning("feature backend auto: onnxruntime is not used for %r (%s); torch encodes it",
                           encoder.name, e)
    return "torch", torch_runner(encoder, companions)
