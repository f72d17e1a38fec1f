"""Features: every plot and poster encoded once per encoder and kept in a checksummed on-disk cache, keyed by what
identifies the encoder"s output (its fingerprint and precision), so models, runs and subsets reuse them."""
from ..lazy import lazy_exports

_EXPORTS = {
    "dataset_features": ".cache",
    "FeatureSpec": ".spec",
    "FeatureCache": ".cache",
    "FeatureTable": ".cache",
    "DamagedShards": ".cache",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
