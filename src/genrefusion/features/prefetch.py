"""Batches prepared ahead of the encoder while the feature cache extracts (cache.py): on a GPU, worker processes
decode posters / tokenise plots of upcoming batches into pinned memory; on a CPU each batch is prepared just before
it is encoded."""
from __future__ import annotations

import multiprocessing
import os
from typing import Callable

import torch

from ..distributed import world_size


class _PlanBatches(torch.utils.data.Dataset):
    """Batch i of the plan, loaded and preprocessed (runs in DataLoader workers)."""

    def __init__(self, batches: list[list[str]], load: Callable[[str], object], preprocess: Callable):
        self.batches, self.load, self.preprocess = batches, load, preprocess

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.preprocess([self.load(k) for k in self.batches[i]])


def prefetched_inputs(encoder, batches: list[list[str]], load: Callable[[str], object], num_workers: int | None):
    """Generator of the model inputs of `batches`, in order. On a GPU, worker processes decode posters /
    tokenise plots ahead of the encoder into pinned memory, so the GPU is not left waiting for the CPU; on the
    CPU (or with num_workers=0) each batch is prepared in this process just before it is encoded."""
    cuda = encoder.device.type == "cuda"
    if num_workers is None:
        num_workers = min(12, max(1, (os.cpu_count() or 1) // world_size() - 2)) if cuda else 0
    # Workers are forked so that the loading closure needs no pickling; without fork, load in this process.
    if num_workers == 0 or not batches or "fork" not in multiprocessing.get_all_start_methods():
        for b in batches:
            yield encoder.preprocess([load(k) for k in b])
        return
    # Forked workers tokenise; a tokenizer that already ran threads in this process would warn in every worker.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    loader = torch.utils.data.DataLoader(
        _PlanBatches(batches, load, encoder.preprocess), batch_size=None, shuffle=False,
        num_workers=min(num_workers, len(batches)), pin_memory=cuda, prefetch_factor=2,
        multiprocessing_context="fork")
    yield from loader
