"""The pure maths of federated aggregation: weighted means of client deltas, client weights, server optimizers.

No I/O, no strategy state: every function maps tensors (and floats) to new tensors, so each is tested against
hand-computed arrays and the strategies in :mod:`strategies` only decide which function to call with what.
Deltas follow DiLoCo's sign convention: ``delta = global - local``, a pseudo-gradient (descending it improves).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fleetgrid.errors import InvalidInput

__all__ = [
    "PARTIAL_WORK_POLICIES",
    "client_weight",
    "nesterov_step",
    "sgd_step",
    "staleness_weight",
    "weighted_mean",
]

PARTIAL_WORK_POLICIES = ("weighted", "drop")


def weighted_mean(vectors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_i w_i v_i / sum_i w_i`` in float64 accumulation, returned as float32 (1-D vectors of one length)."""
    if len(vectors) == 0 or len(vectors) != len(weights):
        raise InvalidInput(
            f"weighted_mean needs >= 1 vector and one weight each, got {len(vectors)} and {len(weights)}"
        )
    total = float(sum(weights))
    if any(w < 0 or not math.isfinite(w) for w in weights) or total <= 0:
        raise InvalidInput(f"aggregation weights must be finite, >= 0 and sum to > 0, got {list(weights)}")
    acc = torch.zeros_like(vectors[0], dtype=torch.float64)
    for v, w in zip(vectors, weights, strict=True):
        if v.shape != acc.shape:
            raise InvalidInput(f"cannot average vectors of shapes {tuple(acc.shape)} and {tuple(v.shape)}")
        acc.add_(v.to(torch.float64), alpha=w)
    return (acc / total).to(torch.float32)


def staleness_weight(staleness: int, exponent: float = 0.5) -> float:
    """FedBuff's down-weighting of an update computed from an older global: ``(1 + staleness) ** -exponent``."""
    if staleness < 0:
        raise InvalidInput(f"staleness must be >= 0 (versions behind the global), got {staleness}")
    return (1.0 + staleness) ** -exponent


def client_weight(*, num_examples: int, steps_done: int, steps_planned: int, partial_work: str) -> float:
    """Weight of one report: its example count, scaled by the share of planned steps done, or 0 when partial
    work is dropped. A report with no step done weighs 0 either way."""
    if partial_work not in PARTIAL_WORK_POLICIES:
        raise InvalidInput(f"partial_work must be one of {PARTIAL_WORK_POLICIES}, got {partial_work!r}")
    if steps_planned < 1 or not 0 <= steps_done <= steps_planned:
        raise InvalidInput(
            f"need 0 <= steps_done <= steps_planned, steps_planned >= 1; got {steps_done}/{steps_planned}"
        )
    if steps_done == steps_planned:
        return float(num_examples)
    if partial_work == "drop":
        return 0.0
    return float(num_examples) * steps_done / steps_planned


def sgd_step(params: torch.Tensor, grad: torch.Tensor, lr: float) -> torch.Tensor:
    """Plain server SGD, ``p - lr * g``; with ``lr = 1`` and ``g = mean(global - local)`` this is FedAvg."""
    return params - lr * grad


def nesterov_step(
    params: torch.Tensor, grad: torch.Tensor, momentum_buffer: torch.Tensor, lr: float, momentum: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """DiLoCo's outer step, as ``torch.optim.SGD(nesterov=True)``: ``b = mu b + g; p = p - lr (g + mu b)``."""
    buf = momentum * momentum_buffer + grad
    return params - lr * (grad + momentum * buf), buf
