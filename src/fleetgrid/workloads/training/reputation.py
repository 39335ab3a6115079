"""Per-car reputation from agreement with the rest of the fleet: an option of :class:`~config.RobustConfig` that
weighs down, to 0, a car whose updates keep pointing against everyone else's. Norm bounding alone lets a
sign-flipped car into the weighted mean at twice the median norm, round after round; its direction gives it away.

Why this shape. FLTrust (Cao et al. 2021) scores each update by its cosine with an update the server computes on a
small trusted dataset and weighs it by ReLU of that score. A coordinator has no such data, so the reference here is
the round's own weighted mean without the car (leave-one-out: ``(S - w_i d_i) / (W - w_i)``, one pass over the
deltas). Like FoolsGold (Fung et al. 2020) the score is kept across rounds per car id, as an exponential moving
average of those cosines, so one odd round neither cuts an honest car nor clears a hostile one. A car's weight
factor is 1 while its average is >= 0 and falls linearly to 0 at ``-margin``: honest non-IID cars agree with the
others only weakly (a car holding labels the rest lack sits near orthogonal), so the cut sits below orthogonal,
where only a car working against the others ends up. New cars start at 0 (full weight); a cut car is still scored,
so it can earn its weight back. Pure functions; the strategy keeps the scores (and checkpoints them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fleetgrid.workloads.training.aggregate import weighted_mean
from fleetgrid.workloads.training.config import RobustConfig
from fleetgrid.workloads.training.robust import bound_norms

__all__ = ["EMA_RATE", "leave_one_out_cosines", "reputation_combine", "weight_factor"]

EMA_RATE = 0.5
"""The weight of a round's cosine in a car's score: a car drawn every few rounds has a short history, so its
score must move within a report or two (a sign-flipped car at cosine -0.3 is cut after one report)."""


def weight_factor(score: float, margin: float) -> float:
    """The multiplier on a car's weight: 1 at ``score >= 0``, 0 at ``score <= -margin``, linear in between."""
    return min(1.0, max(0.0, 1.0 + score / margin))


def leave_one_out_cosines(deltas: Sequence[torch.Tensor], weights: Sequence[float]) -> list[float]:
    """Each delta's cosine with the weighted sum of the others (0 where either is zero: no evidence either way)."""
    total = torch.zeros_like(deltas[0], dtype=torch.float64)
    for d, w in zip(deltas, weights, strict=True):
        total.add_(d.to(torch.float64), alpha=w)
    cosines = []
    for d, w in zip(deltas, weights, strict=True):
        d64 = d.to(torch.float64)
        rest = total - w * d64  # the others' weighted sum; its scale does not change a cosine
        norms = float(d64.norm()) * float(rest.norm())
        cosines.append(float(d64 @ rest) / norms if norms > 0 else 0.0)
    return cosines


def reputation_combine(
    deltas: Sequence[torch.Tensor], weights: Sequence[float], client_ids: Sequence[str],
    scores: Mapping[str, float], config: RobustConfig,
) -> tuple[torch.Tensor, dict[str, Any], dict[str, float]]:
    """The round's weighted mean of the bounded deltas, each weight times its car's factor from ``scores``; the
    round metrics (``robust_combine``'s, plus ``reputation_cut``: reports weighed 0, ``reputation_min``: the
    smallest factor); and the scores updated with this round's leave-one-out cosines."""
    bounded, metrics = bound_norms(deltas, config)
    factors = [weight_factor(scores.get(c, 0.0), config.reputation_margin) for c in client_ids]
    effective = [w * f for w, f in zip(weights, factors, strict=True)]
    if sum(effective) <= 0:  # every car of the round distrusted: better their plain mean than a stalled job
        effective = list(weights)
    combined = weighted_mean(bounded, effective)
    updated = dict(scores)
    for car, cosine in zip(client_ids, leave_one_out_cosines(bounded, effective), strict=True):
        updated[car] = (1 - EMA_RATE) * updated.get(car, 0.0) + EMA_RATE * cosine
    metrics |= {"reputation_cut": sum(f == 0 for f in factors), "reputation_min": min(factors)}
    return combined, metrics, updated
