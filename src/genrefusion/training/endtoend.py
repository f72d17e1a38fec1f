"""End-to-end mode: the encoders run inside the training loop on raw posters and plots.

For GPU users: posters get the thesis's augmentation (random crop, flip, colour jitter) in training, and with
`finetune=True` the encoders' weights are trained too (their own learning rate). The loop is the same `train.fit`.
"""
from __future__ import annotations

import torch

from ..fusion.batching import modality_inputs
from ..data.loader import MovieDataset
from ..data.modalities import MODALITIES, spec


class EncoderBatches:
    """`batch_fn` that encodes a batch of movies on the fly. Encoders are given per modality by name
    (`EncoderBatches(ds, text_encoder=t, image_encoder=i)`); a modality given None is not read."""

    def __init__(self, dataset: MovieDataset, text_encoder=None, image_encoder=None, finetune: bool = False):
        self.dataset, self.finetune = dataset, finetune
        self.encoders = {m: e for m, e in zip(MODALITIES, (text_encoder, image_encoder)) if e is not None}

    def __call__(self, idx: torch.Tensor, train: bool = False) -> dict:
        movies = [self.dataset.movies[i] for i in idx.tolist()]
        batch: dict = {}
        grad = self.finetune and train
        for name, encoder in self.encoders.items():
            modality = spec(name)
            encoder.train(grad)
            present = torch.tensor([modality.present(m) for m in movies])
            out = torch.zeros(len(movies), encoder.dim, device=encoder.device)
            rows = present.nonzero().flatten().tolist()
            if rows:
                raw = [modality.load_raw(movies[r]) for r in rows]
                with torch.set_grad_enabled(grad):
                    inputs = {k: v.to(encoder.device) for k, v in encoder.preprocess(raw, train=train).items()}
                    pooled = encoder.encode(inputs).pooled.float()
                out = out.index_put((torch.tensor(rows, device=out.device),), pooled)
            batch.update(modality_inputs(name, out, present.to(out.device)))
        return batch

    def encoder_parameters(self) -> list[torch.nn.Parameter]:
        return [p for e in self.encoders.values() for p in e.parameters()]
