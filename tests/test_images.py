"""Poster loading (clear errors for broken files) and the eval / train transforms."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from genrefusion.data.images import IMAGENET_MEAN, IMAGENET_STD, PosterError, PosterTransform, load_poster


def _photo(h: int = 300, w: int = 200) -> Image.Image:
    # smooth gradients + noise: compresses like a real picture, so a truncated JPEG really is missing data
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 / w, y * 255 / h, (x + y) * 255 / (w + h)], -1) + rng.normal(0, 20, (h, w, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


@pytest.fixture
def jpeg(tmp_path):
    path = tmp_path / "poster.jpeg"
    _photo().save(path, quality=90)
    return path


def test_load_poster_reads_rgb(jpeg, tmp_path):
    img = load_poster(jpeg)
    assert img.mode == "RGB" and img.size == (200, 300)
    grey = tmp_path / "grey.png"
    _photo().convert("L").save(grey)
    assert load_poster(grey).mode == "RGB"
    rgba = tmp_path / "rgba.png"
    _photo().convert("RGBA").save(rgba)
    assert load_poster(str(rgba)).mode == "RGB"


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpeg"
    path.write_bytes(b"")
    with pytest.raises(PosterError, match="empty.jpeg.*empty") as info:
        load_poster(path)
    assert isinstance(info.value, ValueError) and info.value.path == path


def test_truncated_jpeg(jpeg, monkeypatch):
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) // 2])
    with pytest.raises(PosterError, match="poster.jpeg.*truncated"):
        load_poster(jpeg)
    # even when some other library has told PIL to accept truncated files, a cut poster is still an error ...
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(PosterError, match="poster.jpeg"):
        load_poster(jpeg)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # ... and that library's setting is left as it was


def test_garbage_bytes(tmp_path):
    path = tmp_path / "junk.jpeg"
    path.write_bytes(b"<html>404 not found</html>" * 20)
    with pytest.raises(PosterError, match="junk.jpeg.*not an image"):
        load_poster(path)


def test_corrupt_jpeg_header(jpeg):
    data = bytearray(jpeg.read_bytes())
    data[20:400] = bytes(range(256)) + bytes(range(124))  # JPEG signature intact, tables garbled
    jpeg.write_bytes(bytes(data))
    with pytest.raises(PosterError, match="poster.jpeg"):
        load_poster(jpeg)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpeg"):
        load_poster(tmp_path / "nope.jpeg")


def test_eval_transform():
    t = PosterTransform()
    x = t(_photo())
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert torch.equal(x, t(_photo()))  # deterministic
    # normalisation: a flat colour maps to (value / 255 - mean) / std per channel
    flat = t(Image.new("RGB", (50, 80), (255, 128, 0)))
    expected = (torch.tensor([255, 128, 0]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(flat, expected.view(3, 1, 1).expand(3, 224, 224), atol=1e-5)
    assert PosterTransform(size=96, mean=(0.5,) * 3, std=(0.5,) * 3)(_photo()).shape == (3, 96, 96)
    assert t(_photo().convert("L")).shape == (3, 224, 224)


def test_train_transform_is_reproducible_and_random():
    img = _photo()
    t = PosterTransform(train=True)
    a = t(img, generator=torch.Generator().manual_seed(0))
    assert a.shape == (3, 224, 224)
    assert torch.equal(a, t(img, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(t(img, generator=random.Random(5)), t(img, generator=random.Random(5)))
    seeded = PosterTransform(train=True, generator=random.Random(1))
    first = seeded(img)
    assert not torch.equal(first, seeded(img))  # the transform's own generator advances
    outs = [t(img, generator=torch.Generator().manual_seed(s)) for s in range(6)]
    assert len({o.sum().item() for o in outs}) == 6  # different seeds, different augmentations
    assert not any(torch.equal(o, PosterTransform()(img)) for o in outs)
    torch.manual_seed(7)
    b = t(img)  # no generator: torch's global RNG, so torch.manual_seed covers augmentation
    torch.manual_seed(7)
    assert torch.equal(b, t(img))


def test_train_transform_components():
    t = PosterTransform(train=True)
    rng = random.Random(0)
    from genrefusion.data.images import _Rng

    for width, height in ((200, 300), (300, 200), (500, 60)):  # poster, landscape, extreme strip (fallback)
        for _ in range(50):
            left, top, w, h = t._crop_box(width, height, _Rng(rng))
            assert 0 <= left and left + w <= width and 0 <= top and top + h <= height
            assert w * h >= 0.79 * width * height or (width, height) == (500, 60)  # 0.8 up to rounding
            assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    # with crop, jitter and flip disabled, the train transform reduces to the eval one
    plain = PosterTransform(train=True, crop_scale=(1.0, 1.0), flip_p=0.0, jitter=0.0)
    square = _photo(120, 120)
    assert torch.allclose(plain(square, generator=random.Random(0)), PosterTransform()(square), atol=1e-6)
    # flip only: the output is the mirrored eval image
    flip = PosterTransform(train=True, crop_scale=(1.0, 1.0), flip_p=1.0, jitter=0.0)
    assert torch.allclose(flip(square, generator=random.Random(0)), PosterTransform()(square).flip(-1), atol=1e-6)


def test_transform_rejects_bad_stats():
    with pytest.raises(ValueError, match="3 values"):
        PosterTransform(mean=(0.5,), std=(0.5,))
