"""Secure aggregation inside a strategy's round: the grid a round's updates are quantized on, and the round's mean
update from the exact sum the protocol (:mod:`.secagg`) yields, checked against the clip every car applied and,
with differential privacy, noised as its mode says. Pure functions but for the round's fresh rotation seed; the
transport runs the protocol."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.privacy import (
    car_noise_std,
    check_sum_norm,
    finish_sum,
    gaussian_noise,
    noise_tolerance,
)
from fleetgrid.workloads.training.secagg import Quantization
from fleetgrid.workloads.training.secagg.rotation import block_length

if TYPE_CHECKING:
    from collections.abc import Callable

    from fleetgrid.workloads.training.base import Strategy
    from fleetgrid.workloads.training.config import StrategyConfig

__all__ = ["BITS", "SPREAD", "SecureFleet", "SecureSum", "round_quantization", "secure_mean"]

BITS = 8
"""Bits per quantized coordinate, on the rotated grid: stochastic rounding moves each coordinate of a car's update
by less than a step, ``2 SPREAD reach / (255 sqrt(m))``, unbiased; about ``sqrt(d / m) SPREAD / 255`` of ``reach``
in norm (1.6% to 2.2%), and the cohort's independent roundings partly cancel in the sum."""
SPREAD = 4.0
"""The grid's half-width in per-coordinate spreads (``reach / sqrt(m)``, ``m`` the rotation's block): a rotated
coordinate is about Gaussian, past 4 spreads with odds 6e-5, and clamping it there loses about 1e-5 of the
update's energy, while every extra spread widens the rounding step; 3 would lose 4e-4 (2% of the norm), 5 round
25% coarser for nothing."""


@dataclass(frozen=True, kw_only=True)
class SecureSum:
    """What one secure round gave the coordinator: the survivors' decoded sum, and who dropped or lied."""

    total: np.ndarray
    """(P,) float64: the exact sum of the survivors' quantized updates, decoded back to floats."""
    cars: int
    """Survivors: cars whose masked input is in the sum."""
    asked: int
    """The round's cohort."""
    steps: int = 0
    """Local steps the survivors reported."""
    quantization: Quantization
    dropped: int = 0
    """Cars of the cohort lost at some phase (a car lost after masking is still in the sum)."""
    dishonest: tuple[str, ...] = ()
    """Cars whose revealed shares did not match their commitments (their answers set aside)."""


@runtime_checkable
class SecureFleet(Protocol):
    """A fleet that can run a round under secure aggregation (the coordinator's leases)."""

    def secure_round(self, strategy: Strategy, deadline: float, redispatch: Callable[[], None]) -> SecureSum | None:
        """Run the round whose cohort ``redispatch`` offers work to; None if it was abandoned (too many dropouts,
        or no full cohort by ``deadline``)."""


def _clip(config: StrategyConfig) -> float:
    privacy, robust = config.privacy, config.robust
    if privacy.enabled:
        assert privacy.clip is not None  # PrivacyConfig refuses a mode without a clip
        return float(privacy.clip)
    if robust.norm_bound == "fixed":
        assert robust.max_norm is not None
        return float(robust.max_norm)
    raise InvalidInput("secure aggregation needs every car to clip its update to a known norm, and norm_bound "
                       f"{robust.norm_bound!r} gives none: set robust norm_bound='fixed' with max_norm, or enable "
                       "differential privacy with a clip")


def _car_noise(config: StrategyConfig, noise_multiplier: float | None) -> float:
    privacy = config.privacy
    if not (privacy.enabled and privacy.mode == "distributed"):
        return 0.0
    return car_noise_std(noise_multiplier=noise_multiplier or 0.0, clip=_clip(config),
                         cars=config.rounds.clients_per_round)


def round_quantization(config: StrategyConfig, numel: int, noise_multiplier: float | None, *,
                       rotation: bytes | None = None) -> Quantization:
    """The grid of a secure round, in a random rotation (a fresh public seed unless ``rotation`` is given): the
    norm ``reach`` covers a clipped update plus the car's own distributed-DP noise, so quantizing never clips an
    honest update's norm again; rotated, each coordinate spreads about ``reach / sqrt(m)`` (noise included, as
    ``reach >= noise_std sqrt(numel)``), and the grid is ``SPREAD`` of those wide. InvalidInput when the config
    gives no clip."""
    reach = _clip(config) + noise_tolerance(noise_std=_car_noise(config, noise_multiplier), dim=numel)
    bound = min(reach, SPREAD * reach / math.sqrt(block_length(numel)))  # no coordinate exceeds the norm
    return Quantization(clip=reach, bound=bound, bits=BITS,
                        rotation=secrets.token_bytes(32) if rotation is None else rotation)


def secure_mean(config: StrategyConfig, result: SecureSum, *, noise_multiplier: float | None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """The round's mean update from a secure sum, and its metrics. The sum's norm is checked against the survivors'
    clips (plus rounding and noise): a larger one means some car did not clip, and the round is refused
    (InvalidInput). With DP: distributed noise is already in the sum (a short round carries less, sigma
    sqrt(n / expected)); central noise is added to the sum here."""
    n, q = result.cars, result.quantization
    total = torch.from_numpy(np.asarray(result.total, dtype=np.float64))  # (P,)
    numel = int(total.numel())
    # rounding moves an honest car's update by a grid step per coordinate at most, in the rotated basis, and the
    # rotation (undone in decoding) keeps norms; clamping to the grid only shortens it
    clip = _clip(config) + q.step * math.sqrt(numel)
    privacy = config.privacy
    metrics: dict[str, Any] = {"clipped": 0, "norm_bound": _clip(config), "secagg_asked": result.asked,
                               "secagg_dropped": result.dropped, "secagg_dishonest": len(result.dishonest)}
    if privacy.enabled and privacy.mode == "distributed":
        sigma = (noise_multiplier or 0.0) * math.sqrt(n / config.rounds.clients_per_round)
        check_sum_norm(total, cars=n, clip=clip, noise_std=sigma * _clip(config))
        metrics["dp_sigma"] = sigma
    elif privacy.enabled:
        check_sum_norm(total, cars=n, clip=clip, noise_std=0.0)
        sigma = noise_multiplier or 0.0
        total = total + gaussian_noise(total.shape, sigma * _clip(config), generator).to(torch.float64)
        metrics["dp_sigma"] = sigma
    else:
        check_sum_norm(total, cars=n, clip=clip, noise_std=0.0)
    return finish_sum(total, n), metrics
