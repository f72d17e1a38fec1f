"""genrefusion: movie genre prediction from posters and plots, unimodal encoders vs multimodal fusion.

Layout (each a module with a small public surface):
    data / splits / summary  ->  encoders  ->  features (cache)  ->  fusion (heads)  ->  train / experiment / grid
    ->  metrics / stats  ->  runs (the run folder)  ->  report / compare
    modalities (each modality's field, cache key and name) is read by data, cache, batches and the predictor;
    batching (a head's input batch) by training and inference alike;
    inference: inputs (checks)  ->  predictor (Predictor, load_model)  ->  predict (CLI) / serving / explain;
    thesis (the thesis's rows, slots and published numbers) is read by grid and report alike.
"""
__version__ = "0.1.0"

from .data.labels import GENRES  # noqa: E402

__all__ = ["GENRES", "__version__", "create_encoder", "create_model", "load_dataset", "load_model"]


def __getattr__(name):  # lazy: `import genrefusion` stays cheap (no torch import) for the CLI's --help
    if name == "create_encoder":
        from .encoders import create_encoder

        return create_encoder
    if name == "create_model":
        from .fusion import create_model

        return create_model
    if name == "load_dataset":
        from .data.loader import load_dataset

        return load_dataset
    if name == "load_model":
        from .inference.predictor import load_model

        return load_model
    raise AttributeError(name)
