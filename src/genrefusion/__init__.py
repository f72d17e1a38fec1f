"""genrefusion: movie genre prediction from posters and plots, unimodal encoders vs multimodal fusion.

The layers, lowest first (a layer imports only those before it; tests/test_structure.py checks it):

    atomic, config, distributed, files, lazy, paths, version   the few things every layer needs
    data         movies from the MM-IMDb folder or a catalog, splits, labels, the one poster decoder
    encoders     plot text / poster image -> vectors (a registry behind create_encoder)
    features     every movie encoded once per encoder, in a checksummed cache
    fusion       the heads over cached features (a registry behind create_model), batches, losses
    inference    saved model folders, predictors (torch or onnxruntime), input checks, explanations
    evaluation   metrics, statistics, run folders, scoring a saved model, reports, robustness
    training     the one training loop, experiments, the thesis grid, distillation
    serving      the HTTP service and its page
    cli          the `genrefusion` command line and the demo

The root re-exports the public API; each name loads its layer on first use, so `import genrefusion` stays cheap.
"""
from .lazy import lazy_exports
from .version import __version__

_EXPORTS = {
    "GENRES": ".data.labels", "load_dataset": ".data.loader", "DataSpec": ".data.loader",
    "Movie": ".data.records", "MovieDataset": ".data.records",
    "create_encoder": ".encoders", "list_encoders": ".encoders",
    "dataset_features": ".features.cache", "FeatureSpec": ".features.spec",
    "create_model": ".fusion", "list_models": ".fusion",
    "load_model": ".inference.predictor", "Predictor": ".inference.predictor",
    "compute_metrics": ".evaluation.metrics", "evaluate": ".evaluation.evaluate", "compare": ".evaluation.compare",
    "Config": ".config", "load_config": ".config",
    "run_experiment": ".training.experiment", "run_grid": ".training.grid", "GridSpec": ".training.grid",
}
__all__ = sorted([*_EXPORTS, "__version__"])
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
