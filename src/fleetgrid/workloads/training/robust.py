"""Robust aggregation: what every strategy does between validated reports and its server step, so that a car
sending a huge, scaled or sign-flipped update cannot derail the job (and claiming more examples than its data
holds is refused outright). Pure functions over tensors; the maths is in :mod:`aggregate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.aggregate import (
    adaptive_norm_bound,
    clip_to_norm,
    coordinate_median,
    krum_selected,
    l2_norm,
    trimmed_mean,
    weighted_mean,
)
from fleetgrid.workloads.training.config import RobustConfig
from fleetgrid.workloads.training.messages import ClientUpdate

__all__ = ["bound_norms", "check_examples", "robust_combine"]


def check_examples(update: ClientUpdate, max_examples: int | None) -> None:
    """InvalidInput if ``update`` claims more examples than its car's data can hold (``max_examples``, which the
    transport knows from the shards it assigned; None when it cannot tell). Such a report is refused rather than
    weighted at the cap: an honest car reports its shard's size exactly, so a larger claim is a broken or hostile
    car, and nothing else it reports can be trusted either."""
    if max_examples is not None and update.num_examples > max_examples:
        raise InvalidInput(
            f"update from {update.client_id!r} claims num_examples={update.num_examples}, more than the "
            f"{max_examples} examples a car's data shard can hold; at most {max_examples} is accepted"
        )


def bound_norms(deltas: Sequence[torch.Tensor], config: RobustConfig) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """``deltas`` with each norm bounded as ``config.norm_bound`` says, and the metrics ``clipped`` (deltas scaled
    down) and ``norm_bound`` (None when bounding is off)."""
    bound: float | None = None
    if config.norm_bound == "adaptive":
        bound = adaptive_norm_bound([l2_norm(d) for d in deltas], config.norm_multiplier)
    elif config.norm_bound == "fixed":
        assert config.max_norm is not None  # RobustConfig refuses 'fixed' without it
        bound = float(config.max_norm)
    if bound is None:
        return list(deltas), {"clipped": 0, "norm_bound": None}
    pairs = [clip_to_norm(d, bound) for d in deltas]
    return [d for d, _ in pairs], {"clipped": sum(c for _, c in pairs), "norm_bound": bound}


def robust_combine(
    deltas: Sequence[torch.Tensor], weights: Sequence[float], config: RobustConfig
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The round's pseudo-gradient from its usable deltas (and their weights, used by 'mean' only): each delta's
    norm bounded first, then combined by ``config.aggregator``. Also returns the round metrics: ``clipped``
    (deltas scaled down) and ``norm_bound`` (None when bounding is off)."""
    if len(deltas) == 0 or len(deltas) != len(weights):
        raise InvalidInput(f"need >= 1 delta and one weight each, got {len(deltas)} and {len(weights)}")
    deltas, metrics = bound_norms(deltas, config)
    if config.aggregator == "trimmed_mean":
        combined = trimmed_mean(deltas, config.trim_fraction)
    elif config.aggregator == "median":
        combined = coordinate_median(deltas)
    elif config.aggregator == "krum":
        chosen = krum_selected(deltas, config.byzantine, config.multi_krum)
        combined = weighted_mean([deltas[i] for i in chosen], [1.0] * len(chosen))
    else:
        combined = weighted_mean(deltas, weights)
    return combined, metrics
