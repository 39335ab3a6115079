"""The pure maths of federated aggregation: weighted means of client deltas, client weights, server optimizers,
and the robust pieces (norm clipping, an adaptive bound, trimmed mean, coordinate median, (Multi-)Krum).

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
    "AGGREGATORS",
    "PARTIAL_WORK_POLICIES",
    "SERVER_OPTIMIZERS",
    "adaptive_norm_bound",
    "adaptive_step",
    "client_weight",
    "clip_to_norm",
    "coordinate_median",
    "krum_selected",
    "l2_norm",
    "nesterov_step",
    "schedule_scale",
    "sgd_step",
    "staleness_weight",
    "trimmed_mean",
    "weighted_mean",
]

PARTIAL_WORK_POLICIES = ("weighted", "drop")
AGGREGATORS = ("mean", "trimmed_mean", "median", "krum")
SERVER_OPTIMIZERS = ("adam", "yogi")


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


def adaptive_step(
    params: torch.Tensor,
    grad: torch.Tensor,
    first: torch.Tensor,
    second: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    tau: float,
    kind: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FedAdam / FedYogi's server step (Reddi et al., 2021, Algorithm 2), on the pseudo-gradient ``grad``:
    ``m = b1 m + (1 - b1) g``; Adam ``v = b2 v + (1 - b2) g^2``, Yogi ``v = v - (1 - b2) g^2 sign(v - g^2)``;
    ``p = p - lr m / (sqrt(v) + tau)``. No bias correction, as in the paper: ``tau`` (the adaptivity) bounds the
    first steps. Returns ``(params, m, v)``."""
    if kind not in SERVER_OPTIMIZERS:
        raise InvalidInput(f"server optimizer must be one of {SERVER_OPTIMIZERS}, got {kind!r}")
    m = beta1 * first + (1 - beta1) * grad
    g2 = grad * grad
    if kind == "adam":
        v = beta2 * second + (1 - beta2) * g2
    else:
        v = second - (1 - beta2) * g2 * torch.sign(second - g2)
    return params - lr * m / (v.sqrt() + tau), m, v


def schedule_scale(version: int, total: int | None, *, warmup: int, floor: float) -> float:
    """The factor on a base learning rate for the step that makes version ``version + 1``: a linear warm-up over
    the first ``warmup`` versions (from ``1 / (warmup + 1)``), then, if ``total`` is known, a cosine from 1 down to
    ``floor`` at version ``total``; constant 1 after the warm-up otherwise."""
    if version < 0 or warmup < 0 or not 0 <= floor <= 1 or (total is not None and total < 1):
        raise InvalidInput(
            f"need version >= 0, warmup >= 0, floor in [0, 1], total >= 1 or None; "
            f"got version={version}, warmup={warmup}, floor={floor}, total={total}"
        )
    if version < warmup:
        return (version + 1) / (warmup + 1)
    if total is None or total <= warmup:
        return 1.0
    frac = min((version - warmup) / (total - warmup), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


def l2_norm(vector: torch.Tensor) -> float:
    """The L2 norm, accumulated in float64: a float32 vector of values near 3e38 has a finite norm, not inf."""
    return float(vector.to(torch.float64).norm())


def clip_to_norm(vector: torch.Tensor, bound: float) -> tuple[torch.Tensor, bool]:
    """``vector`` scaled down to L2 norm ``bound`` if it is longer (its direction kept), and whether it was."""
    if not (bound >= 0 and math.isfinite(bound)):
        raise InvalidInput(f"a norm bound must be a finite number >= 0, got {bound!r}")
    norm = l2_norm(vector)
    if norm <= bound:
        return vector, False
    return (vector.to(torch.float64) * (bound / norm)).to(torch.float32), True


def adaptive_norm_bound(norms: Sequence[float], multiplier: float) -> float:
    """``multiplier`` times the lower median of a round's update norms. The lower median of two is the smaller,
    so one hostile car in a pair cannot set the bound; a car alone sets its own (use a fixed bound for that)."""
    if len(norms) == 0 or any(not (n >= 0 and math.isfinite(n)) for n in norms):
        raise InvalidInput(f"need >= 1 finite norm >= 0 to derive a bound, got {list(norms)}")
    if not (multiplier > 0 and math.isfinite(multiplier)):
        raise InvalidInput(f"norm multiplier must be a finite number > 0, got {multiplier!r}")
    return multiplier * sorted(norms)[(len(norms) - 1) // 2]


def _stacked(vectors: Sequence[torch.Tensor], what: str) -> torch.Tensor:
    if len(vectors) == 0:
        raise InvalidInput(f"{what} needs >= 1 vector, got none")
    shapes = {tuple(v.shape) for v in vectors}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise InvalidInput(f"{what} needs 1-D vectors of one length, got shapes {sorted(shapes)}")
    return torch.stack([v.to(torch.float64) for v in vectors])  # (n, P)


def trimmed_mean(vectors: Sequence[torch.Tensor], trim_fraction: float) -> torch.Tensor:
    """Coordinate-wise trimmed mean (Yin et al., 2018): in every coordinate the ``k`` largest and ``k`` smallest
    values are dropped and the rest averaged, ``k = ceil(trim_fraction * n)`` but at most ``(n - 1) // 2`` so one
    value is always left (``trim_fraction`` 0 is the plain mean)."""
    if not 0 <= trim_fraction < 0.5:
        raise InvalidInput(f"trim_fraction must be in [0, 0.5), got {trim_fraction!r}")
    stacked = _stacked(vectors, "trimmed_mean")
    n = stacked.shape[0]
    k = min(math.ceil(trim_fraction * n - 1e-9), (n - 1) // 2)
    kept = stacked.sort(dim=0).values[k : n - k]  # (n - 2k, P)
    return kept.mean(dim=0).to(torch.float32)


def coordinate_median(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Coordinate-wise median (Yin et al., 2018); with an even count, the mean of the two middle values."""
    stacked = _stacked(vectors, "coordinate_median")
    n = stacked.shape[0]
    ordered = stacked.sort(dim=0).values
    return ((ordered[(n - 1) // 2] + ordered[n // 2]) / 2).to(torch.float32)


def krum_selected(vectors: Sequence[torch.Tensor], f: int, m: int = 1) -> list[int]:
    """(Multi-)Krum (Blanchard et al., 2017): the indices of the ``m`` vectors with the lowest scores, a vector's
    score being the sum of squared distances to its ``n - f - 2`` nearest others; ties go to the lower index.
    Needs ``n >= 2f + 3`` (so the honest majority dominates every score) and ``1 <= m <= n - f``."""
    stacked = _stacked(vectors, "krum")
    n = stacked.shape[0]
    if not isinstance(f, int) or f < 0 or n < 2 * f + 3:
        raise InvalidInput(
            f"Krum with byzantine f={f!r} needs n >= 2f + 3 = {2 * f + 3} updates, got n={n}; "
            f"use f <= {max((n - 3) // 2, 0)} or wait for more reports"
        )
    if not isinstance(m, int) or not 1 <= m <= n - f:
        raise InvalidInput(f"multi-Krum m must be an integer in [1, n - f = {n - f}], got {m!r}")
    dist = torch.cdist(stacked, stacked, compute_mode="donot_use_mm_for_euclid_dist") ** 2  # (n, n) squared
    nearest = dist.sort(dim=1).values[:, 1 : n - f - 1]  # (n, n - f - 2), column 0 is the vector itself
    scores = nearest.sum(dim=1).tolist()
    return sorted(range(n), key=lambda i: (scores[i], i))[:m]
