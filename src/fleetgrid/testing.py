"""Helpers for tests and benchmarks of the whole system (like ``numpy.testing``): a model with a known cost."""

from __future__ import annotations

import time
from pathlib import Path

import torch

__all__ = ["SlowModel", "slow_model_file"]


class SlowModel(torch.nn.Module):
    """A user model whose every batch costs a fixed amount of CPU, so a unit lasts long enough to interrupt."""

    def __init__(self, rounds: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(40, 40, generator=g) / 40**0.5, requires_grad=False)
        self.out = torch.nn.Parameter(torch.randn(40, 10, generator=g), requires_grad=False)
        self.rounds = rounds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x  # (B, 40)
        for _ in range(self.rounds):
            h = torch.tanh(h @ self.w)
        return h @ self.out  # (B, 10)


def slow_model_file(path: Path, seconds_per_batch: float, batch_size: int = 16) -> Path:
    """Script a SlowModel calibrated on this machine to about ``seconds_per_batch`` per batch; a TorchScript file."""
    probe = torch.jit.script(SlowModel(200))
    x = torch.zeros(batch_size, 40)
    probe(x)
    start = time.perf_counter()
    probe(x)
    per_round = (time.perf_counter() - start) / 200
    model = torch.jit.script(SlowModel(max(1, int(seconds_per_batch / per_round))))
    model.save(str(path))
    return path
