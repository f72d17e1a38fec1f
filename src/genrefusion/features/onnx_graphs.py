"""Tracing torch modules into ONNX graphs: what `genrefusion export` writes for a saved model, and what the feature
cache's onnxruntime backend (feature_backends.py) runs an encoder with. One tracer, so both graphs are the same.

The TorchScript exporter is used (batch and sequence length as dynamic axes): it traces the encoders of
transformers and torchvision without a graph break, where the dynamo exporter still fails on some of them.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path


def quiet():
    """The TorchScript exporter warns about tracing and about its own deprecation on every graph; the comparison
    each caller makes after tracing is what says whether a graph is right."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def trace(module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict, opset: int):
    """`module(*args)` traced to the ONNX file `path`, with the given input/output names and dynamic axes."""
    import torch

    module.eval()  # the exporter restores the module's own mode afterwards: a wrapper must already be in eval mode
    with quiet(), torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                          opset_version=opset, do_constant_folding=True, dynamo=False)


def encoder_wrapper(encoder, names: list[str], sequences: bool, companions: tuple = ()):
    """A module whose positional inputs are the encoder's model inputs (`names`, in order) and whose outputs are
    its pooled vector (and sequence, with `sequences`), then each companion's pooled vector (Encoder.companions),
    all from one forward pass."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, *tensors):
            batch = dict(zip(names, tensors))
            if companions:
                out, others = self.encoder.encode_with_companions(batch, companions, return_sequence=sequences)
            else:
                out, others = self.encoder.encode(batch, return_sequence=sequences), []
            head = (out.pooled.float(), out.sequence.float()) if sequences else (out.pooled.float(),)
            outs = head + tuple(o.float() for o in others)
            return outs if len(outs) > 1 else outs[0]

    return Wrapped()
