"""The thesis' image transforms, in plain PIL (torchvision is deliberately not a dependency). Posters are decoded
by posters.decode_poster, the one decoder (re-exported here as `load_poster` for files).

`PosterTransform` is the eval transform (resize to size x size, normalise) or, with `train=True`, the thesis
augmentation: random resized crop (scale 0.8-1.0), horizontal flip (p=0.5) and colour jitter (brightness /
contrast / saturation 0.2). Both follow torchvision's definitions so numbers stay comparable with
torchvision-based pipelines.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance

from .preprocessing import eval_pixels
from .posters import DECODE_SIDE, MAX_POSTER_PIXELS, POSTER_FORMATS, PosterError, decode_poster, load_poster

__all__ = ["DECODE_SIDE", "IMAGENET_MEAN", "IMAGENET_STD", "MAX_POSTER_PIXELS", "POSTER_FORMATS", "PosterError",
           "PosterTransform", "decode_poster", "load_poster"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Rng:
    """One interface over the two seedable generators callers hand us (torch.Generator or random.Random);
    None means torch's global generator, so `torch.manual_seed` in a training script covers augmentation too."""

    def __init__(self, generator: torch.Generator | random.Random | None):
        self.g = generator

    def uniform(self, a: float, b: float) -> float:
        if isinstance(self.g, random.Random):
            return self.g.uniform(a, b)
        return a + (b - a) * torch.rand((), generator=self.g).item()

    def randint(self, low: int, high: int) -> int:  # inclusive bounds
        if isinstance(self.g, random.Random):
            return self.g.randint(low, high)
        return int(torch.randint(low, high + 1, (), generator=self.g).item())

    def permutation(self, n: int) -> list[int]:
        if isinstance(self.g, random.Random):
            return self.g.sample(range(n), n)
        return torch.randperm(n, generator=self.g).tolist()


class PosterTransform:
    """PIL image -> normalised float tensor (3, size, size).

    train=False: resize to size x size (bilinear, antialiased), scale to [0, 1], normalise with mean/std.
    train=True: random resized crop (scale 0.8-1.0, aspect 3/4-4/3) to size x size, horizontal flip (p=0.5),
    colour jitter (brightness/contrast/saturation factors in [0.8, 1.2], applied in random order), then normalise.
    `generator` (torch.Generator or random.Random) makes the augmentation reproducible; it can also be passed per
    call. Posters are squashed to a square rather than centre-cropped, as in the thesis, so no title text is cut.
    """

    def __init__(
        self,
        size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        train: bool = False,
        generator: torch.Generator | random.Random | None = None,
        crop_scale: tuple[float, float] = (0.8, 1.0),
        flip_p: float = 0.5,
        jitter: float = 0.2,
    ):
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {mean} and {std}")
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.train = train
        self.generator = generator
        self.crop_scale = crop_scale
        self.flip_p = flip_p
        self.jitter = jitter
        self._mean = torch.tensor(self.mean).view(3, 1, 1)
        self._std = torch.tensor(self.std).view(3, 1, 1)

    def __call__(self, img: Image.Image, generator: torch.Generator | random.Random | None = None) -> torch.Tensor:
        if not self.train:  # the one eval transform, shared with the torch-free exported runtime
            return torch.from_numpy(eval_pixels(img, self.size, self.mean, self.std))
        if img.mode != "RGB":
            img = img.convert("RGB")
        img = self._augment(img, _Rng(generator if generator is not None else self.generator))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - self._mean) / self._std

    def _augment(self, img: Image.Image, rng: _Rng) -> Image.Image:
        left, top, w, h = self._crop_box(img.width, img.height, rng)
        img = img.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + w, top + h))
        if rng.uniform(0.0, 1.0) < self.flip_p:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # ImageEnhance matches torchvision's adjust_brightness / adjust_contrast (blend with the mean grey of the
        # image) / adjust_saturation (blend with the greyscale image); each factor ~ U[1-jitter, 1+jitter].
        enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
        factors = [rng.uniform(1 - self.jitter, 1 + self.jitter) for _ in enhancers]
        for i in rng.permutation(len(enhancers)):
            img = enhancers[i](img).enhance(factors[i])
        return img

    def _crop_box(self, width: int, height: int, rng: _Rng) -> tuple[int, int, int, int]:
        # torchvision's RandomResizedCrop.get_params: sample area and log-uniform aspect ratio, 10 tries,
        # then fall back to the largest centred crop whose aspect ratio is within [3/4, 4/3].
        area = width * height
        min_ratio, max_ratio = 3 / 4, 4 / 3
        for _ in range(10):
            target_area = area * rng.uniform(*self.crop_scale)
            aspect = math.exp(rng.uniform(math.log(min_ratio), math.log(max_ratio)))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, width - w), rng.randint(0, height - h), w, h
        w, h = width, height
        if width / height < min_ratio:
            h = int(round(width / min_ratio))
        elif width / height > max_ratio:
            w = int(round(height * max_ratio))
        return (width - w) // 2, (height - h) // 2, w, h
