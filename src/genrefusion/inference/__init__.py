"""Inference: saved model folders (write, verify, load), the predictors that turn a raw poster and plot into genre
probabilities (torch, or onnxruntime for an exported model), the input checks they share, and explanations."""
from ..lazy import lazy_exports

_EXPORTS = {
    "load_model": ".predictor",
    "Predictor": ".predictor",
    "predict_catalog": ".catalog",
    "CatalogRun": ".catalog",
    "InputError": ".inputs",
    "UnsupportedInput": ".inputs",
    "InputTooLarge": ".inputs",
    "check_plot": ".inputs",
    "save_model": ".checkpoint",
    "ModelFolderError": ".checkpoint",
    "export_onnx": ".export",
    "grad_cam": ".explain",
    "word_attributions": ".explain",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
