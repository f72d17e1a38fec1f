"""A fake clock and fake runners for calibration tests (features/calibrate.py)."""
from __future__ import annotations

import torch


class FakeSpeed:
    """A fake clock and runner factory: each candidate's pass costs `cost[label]` seconds per batch, and its
    features are torch fp32's, plus `noise` (relative) where given. Counts the batches each candidate ran."""

    def __init__(self, cost: dict[str, float], noise: dict[str, float] | None = None, fail_after: int | None = None):
        self.t, self.cost, self.noise, self.calls, self.ticks, self.fail_after = 0.0, cost, noise or {}, {}, 0, fail_after

    def clock(self) -> float:
        self.ticks += 1
        if self.fail_after is not None and self.ticks > self.fail_after:
            raise KeyboardInterrupt  # the process killed halfway
        return self.t

    def runners(self, candidate, encoder, cache_root):
        label = candidate.label()

        def run(inputs):
            self.t += self.cost[label]
            self.calls[label] = self.calls.get(label, 0) + 1
            out = encoder.encode(inputs).pooled.float()
            g = torch.Generator().manual_seed(0)
            return out + self.noise.get(label, 0.0) * out.norm(dim=1, keepdim=True) * torch.randn(out.shape, generator=g)

        return run
