"""How features are made, as one value: `FeatureSpec`.

Where the cache lives, which device the encoders run on, the autocast precision of each encoder's features, what
runs the encoders on a CPU (the backend), how many processes prepare batches, the batch size and whether progress
bars show. It is built once where those settings come in (`FeatureSpec.from_config(cfg)` for a run, the
`features` command's options) and handed on whole to everything that encodes or reads features: the feature
cache, the ONNX backend's traced graphs and the offline weights built into the same cache root.

The precision is checked here, against the one vocabulary (config.CHOICES["precision"]: "auto" or one of
config.PRECISIONS), and resolved here, once per encoder (`precision_for`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from ..config import check_choice
from ..distributed import resolve_device
from ..encoders import create_encoder
from ..paths import cache_root as default_cache_root
from . import calibrate
from .backends import check_backend
from .fingerprints import resolve_precision

SHARD_BATCHES = 8  # batches per shard: bounds the work lost to a kill and the number of files


@dataclass(frozen=True)
class FeatureSpec:
    """How features are made (see the module docstring).

    cache_root:    the cache folder (None: paths.cache_root(), $GENREFUSION_CACHE or ~/.cache/genrefusion), worked
                   out once here: features under <root>/features, traced graphs under <root>/onnx, offline weights
                   under <root>/models
    device:        where encoders built by `create_encoder` run: auto (the GPU when there is one), cpu, cuda, cuda:N
    precision:     every encoder's autocast while encoding: auto (bf16 on a GPU; on a CPU what the measured
                   evidence supports, precision.choose), fp32, bf16 or fp16
    precisions:    encoder name -> precision, for encoders that differ from `precision` (a saved model's encoders,
                   each at the precision it was trained at)
    backend:       what runs the encoders on a CPU: auto (by measured evidence), torch or onnxruntime
    num_workers:   processes that prepare upcoming batches (None: none on a CPU, up to 12 on a GPU)
    progress:      show progress bars
    batch_size:    items per encoder call (None: small on a CPU, large on a GPU, by modality)
    shard_batches: batches per cache shard (the unit of work a kill can lose)
    """

    cache_root: Path | None = None
    device: str = "auto"
    precision: str = "auto"
    precisions: Mapping[str, str] = field(default_factory=dict)
    backend: str | None = "auto"
    num_workers: int | None = None
    progress: bool = True
    batch_size: int | None = None
    shard_batches: int = SHARD_BATCHES

    def __post_init__(self) -> None:
        root = default_cache_root() if self.cache_root is None else Path(self.cache_root).expanduser()
        object.__setattr__(self, "cache_root", root)
        object.__setattr__(self, "precisions", MappingProxyType(dict(self.precisions)))
        check_choice("precision", self.precision, "features")
        for name, p in self.precisions.items():
            check_choice("precision", p, f"features (encoder {name!r})")
        object.__setattr__(self, "backend", check_backend(self.backend))  # None: auto
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"features batch_size={self.batch_size}: expected a whole number >= 1")
        if self.shard_batches < 1:
            raise ValueError(f"features shard_batches={self.shard_batches}: expected a whole number >= 1")

    @classmethod
    def from_config(cls, cfg, **changes: Any) -> "FeatureSpec":
        """The features a Config asks for (its keys cache_dir, device, precision, feature_backend); `changes` set
        the rest (progress, num_workers, ...)."""
        return cls(cache_root=cfg.cache_dir, device=cfg.device, precision=cfg.precision,
                   backend=cfg.feature_backend, **changes)

    def replace(self, **changes: Any) -> "FeatureSpec":
        return dataclasses.replace(self, **changes)

    def at_precision(self, precision: str) -> "FeatureSpec":
        """This spec with every encoder at `precision` (an already resolved one): what the parts of an encoder
        joined from several, and an encoder's companions, are computed at."""
        return self.replace(precision=precision, precisions={})

    def precision_for(self, encoder) -> str:
        """The precision `encoder`'s features are really computed at. An encoder that runs outside torch (its
        `fixed_precision`, e.g. "fp32") ignores autocast, so asking for bf16 must neither record "bf16" nor make a
        second cache entry of the same numbers. Otherwise the precision asked for it (by name in `precisions`,
        else `precision`), with auto resolved on the encoder's device by fingerprints.resolve_precision over its
        own name or, for an encoder joined from parts, every part's name (the parts share one precision)."""
        fixed = encoder.fixed_precision
        if fixed is not None:
            return fixed
        request = self.precisions.get(encoder.name, self.precision)
        parts = encoder.feature_parts() or (encoder,)
        if request == "auto" and encoder.device.type == "cpu":
            records = [calibrate.recorded(p, self.cache_root) for p in parts]
            if all(records):  # measured on this machine (calibrate.py); the parts share the slowest's choice
                backend = None if self.backend == "auto" else self.backend
                chosen = {calibrate.best(r, backend=backend).precision for r in records}
                return chosen.pop() if len(chosen) == 1 else "fp32"
        return resolve_precision(request, encoder.device, [p.name for p in parts])

    def create_encoder(self, name, modality: str | None = None, **kwargs):
        """encoders.create_encoder(name, ...) on this spec's device, its offline weights (if it has any) built
        under this spec's cache root."""
        return create_encoder(name, modality=modality, cache_root=self.cache_root,
                              **kwargs).to(resolve_device(self.device))
