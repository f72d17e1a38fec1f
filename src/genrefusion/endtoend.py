"""End-to-end mode: the encoders run inside the training loop on raw posters and plots.

For GPU users: posters get the thesis's augmentation (random crop, flip, colour jitter) in training, and with
`finetune=True` the encoders' weights are trained too (their own learning rate). The loop is the same `train.fit`.
"""
from __future__ import annotations

import torch

from .data import MovieDataset
from .images import load_poster


class EncoderBatches:
    """`batch_fn` that encodes a batch of movies on the fly."""

    def __init__(self, dataset: MovieDataset, text_encoder=None, image_encoder=None, finetune: bool = False):
        self.dataset, self.text, self.image, self.finetune = dataset, text_encoder, image_encoder, finetune

    def __call__(self, idx: torch.Tensor, train: bool = False) -> dict:
        movies = [self.dataset.movies[i] for i in idx.tolist()]
        batch: dict = {}
        grad = self.finetune and train
        for name, encoder in (("text", self.text), ("image", self.image)):
            if encoder is None:
                continue
            encoder.train(grad)
            present = torch.tensor([m.has_plot if name == "text" else m.has_poster for m in movies])
            out = torch.zeros(len(movies), encoder.dim, device=encoder.device)
            rows = present.nonzero().flatten().tolist()
            if rows:
                raw = ([movies[r].plot for r in rows] if name == "text"
                       else [load_poster(movies[r].poster) for r in rows])
                with torch.set_grad_enabled(grad):
                    inputs = {k: v.to(encoder.device) for k, v in encoder.preprocess(raw, train=train).items()}
                    pooled = encoder.encode(inputs).pooled.float()
                out = out.index_put((torch.tensor(rows, device=out.device),), pooled)
            batch[name] = out
            batch[f"{name}_present"] = present.to(out.device)
        return batch

    def encoder_parameters(self) -> list[torch.nn.Parameter]:
        return [p for e in (self.text, self.image) if e is not None for p in e.parameters()]
