"""Inference: saved model folders (write, verify, load), the predictors that turn a raw poster and plot into genre
probabilities (torch, or onnxruntime for an exported model), the input checks they share, and explanations."""
