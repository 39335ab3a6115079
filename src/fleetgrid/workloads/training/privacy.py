"""User-level differential privacy for federated training: DP-FedAvg (McMahan et al., 2018) wrapped around a
strategy's aggregation, and its accounting with Google's ``dp-accounting``.

The privacy unit is one car's whole data: a car's update, whatever it trained on, is clipped to L2 norm ``clip``
before it counts, so adding or removing one car (not one example) moves the sum by at most ``clip``; Gaussian noise
of standard deviation ``noise_multiplier * clip`` on the sum makes each round a subsampled Gaussian mechanism with
sampling rate ``q = cohort / population``. The (epsilon, delta) reported is for that unit.

Two places for the noise: ``central`` (the coordinator sees the clipped updates and adds the noise to their sum)
and ``distributed`` (each car adds ``N(0, sigma^2 clip^2 / n)`` to its own clipped update, so that ``n`` of them
sum to the same noise; meant for secure aggregation, where the coordinator sees only the sum). Pure functions; the
strategy in :mod:`base` calls them.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import dp_accounting
import torch
from dp_accounting import pld, rdp

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.aggregate import clip_to_norm, l2_norm

__all__ = [
    "ACCOUNTANTS",
    "PRIVACY_MODES",
    "RDP_ORDERS",
    "PrivacyConfig",
    "calibrate_noise_multiplier",
    "car_noise_std",
    "check_sum_norm",
    "dp_sum",
    "epsilon_spent",
    "finish_sum",
    "gaussian_noise",
    "noise_tolerance",
    "private_combine",
]

PRIVACY_MODES = ("none", "central", "distributed")
ACCOUNTANTS = ("rdp", "pld")
RDP_ORDERS = tuple(range(2, 257)) + (320, 512, 1024)
"""The Renyi orders the RDP accountant tries: integers, whose subsampled-Gaussian bound is exact. dp-accounting's
fractional defaults (1.1-1.9) often fail to converge at small sigma and are then dropped with a warning anyway."""


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    """DP-FedAvg's settings. The privacy unit is one car's whole data (user-level DP)."""

    mode: str = "none"
    """'none'; 'central' (the coordinator clips each update and adds the noise to their sum); or 'distributed'
    (each car clips its update and adds its share of the noise; for secure aggregation)."""
    clip: float | None = None
    """C, the L2 bound on one car's update (its delta): the sensitivity of the sum. Required unless mode='none'."""
    noise_multiplier: float | None = None
    """sigma: the noise on the sum has standard deviation ``sigma * clip``. Give it or ``target_epsilon``."""
    target_epsilon: float | None = None
    """Calibrate sigma so that the planned rounds spend this epsilon (at ``delta``); instead of noise_multiplier."""
    delta: float = 1e-5
    """The delta of the (epsilon, delta) reported; in (0, 1). Well below 1 / population is the usual choice."""
    accountant: str = "rdp"
    """'rdp' (Renyi DP, Mironov 2017; fast) or 'pld' (privacy loss distributions; tighter, slower)."""
    epsilon_budget: float | None = None
    """The job stops (done, not failed) before a round that would spend more than this epsilon; None: no limit."""
    population: int | None = None
    """Cars the cohort is drawn from, for the sampling rate ``q = cohort / population``; None counts every car as
    sampled every round (q = 1: no amplification by sampling, the conservative reading)."""

    def __post_init__(self) -> None:
        if self.mode not in PRIVACY_MODES:
            raise InvalidInput(f"privacy mode must be one of {PRIVACY_MODES}, got {self.mode!r}")
        if self.accountant not in ACCOUNTANTS:
            raise InvalidInput(f"privacy accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if not (isinstance(self.delta, float) and 0 < self.delta < 1):
            raise InvalidInput(f"privacy delta must be a number in (0, 1), e.g. 1e-5; got {self.delta!r}")
        if self.population is not None and (not isinstance(self.population, int) or self.population < 1):
            raise InvalidInput(f"privacy population must be an integer >= 1 or None, got {self.population!r}")
        for name in ("clip", "noise_multiplier", "target_epsilon", "epsilon_budget"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise InvalidInput(f"privacy {name} must be a finite number > 0 or None, got {value!r}")
        if self.mode == "none":
            given = [n for n in ("clip", "noise_multiplier", "target_epsilon", "epsilon_budget")
                     if getattr(self, n) is not None]
            if given:
                raise InvalidInput(f"privacy setting(s) {given} need mode 'central' or 'distributed', not 'none'")
            return
        if self.clip is None:
            raise InvalidInput(f"privacy mode {self.mode!r} needs clip, the L2 bound on a car's update (> 0)")
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise InvalidInput(
                f"privacy mode {self.mode!r} needs exactly one of noise_multiplier (sigma) or target_epsilon; got "
                f"noise_multiplier={self.noise_multiplier!r}, target_epsilon={self.target_epsilon!r}"
            )

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def sampling_rate(self, cohort: int) -> float:
        """q, the chance a given car is asked in a round."""
        return 1.0 if self.population is None else min(1.0, cohort / self.population)


# ------------------------------------------------------------------------------------------------ mechanisms


def dp_sum(
    deltas: Sequence[torch.Tensor], *, clip: float, noise_std: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, int]:
    """The central mechanism: each delta clipped to ``clip``, summed (unweighted: a car counts once however many
    examples it claims, or the sensitivity would not be ``clip``), plus ``N(0, noise_std^2)`` per coordinate.
    Returns the noisy sum and how many deltas were clipped. ``generator`` defaults to a fresh secret seed: noise
    drawn from a known seed could be subtracted."""
    if len(deltas) == 0:
        raise InvalidInput("a DP sum needs >= 1 update, got none")
    if not noise_std >= 0:
        raise InvalidInput(f"noise_std must be >= 0, got {noise_std!r}")
    total = torch.zeros_like(deltas[0], dtype=torch.float64)
    clipped = 0
    for delta in deltas:
        bounded, was = clip_to_norm(delta, clip)
        total += bounded.to(torch.float64)
        clipped += was
    return total + gaussian_noise(total.shape, noise_std, generator), clipped


def gaussian_noise(shape: torch.Size, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``N(0, std^2)`` per coordinate in float64, from ``generator`` or a secretly seeded one."""
    if generator is None:
        generator = torch.Generator().manual_seed(secrets.randbits(63))
    return torch.randn(shape, generator=generator, dtype=torch.float64) * std


def car_noise_std(*, noise_multiplier: float, clip: float, cars: int) -> float:
    """The standard deviation each of ``cars`` cars adds (distributed mode) so that their sum carries noise of
    standard deviation ``noise_multiplier * clip``: variances add, so each adds ``sigma^2 C^2 / n``."""
    if cars < 1:
        raise InvalidInput(f"distributed noise needs >= 1 car, got {cars}")
    return noise_multiplier * clip / math.sqrt(cars)


def noise_tolerance(*, noise_std: float, dim: int) -> float:
    """A bound the norm of ``N(0, noise_std^2 I_dim)`` exceeds with probability below ``e^-18`` (about 1e-8):
    Gaussian concentration of the norm, ``std * (sqrt(dim) + 6)``."""
    return noise_std * (math.sqrt(dim) + 6.0)


def check_sum_norm(total: torch.Tensor, *, cars: int, clip: float, noise_std: float) -> float:
    """What the coordinator can check on a sum it cannot open (secure aggregation): ``cars`` updates each
    clipped to ``clip`` sum to norm at most ``cars * clip``, and their noise (of total standard deviation
    ``noise_std`` per coordinate) adds at most :func:`noise_tolerance`. Returns the norm; InvalidInput if larger,
    since some car did not clip."""
    norm = l2_norm(total)
    bound = cars * clip + noise_tolerance(noise_std=noise_std, dim=int(total.numel()))
    if not norm <= bound:
        raise InvalidInput(
            f"the sum of {cars} updates has L2 norm {norm:.4g}, above {bound:.4g} ({cars} x clip {clip:g} plus the "
            f"noise's tolerance): some car did not clip its update; at most {bound:.4g} is accepted"
        )
    return norm


def finish_sum(total: torch.Tensor, cars: int) -> torch.Tensor:
    """The round's mean update from a (noisy, possibly secure) sum of ``cars`` clipped updates, as float32."""
    if cars < 1:
        raise InvalidInput(f"a mean needs >= 1 car in the sum, got {cars}")
    return (total.to(torch.float64) / cars).to(torch.float32)


def private_combine(
    deltas: Sequence[torch.Tensor],
    config: PrivacyConfig,
    *,
    noise_multiplier: float,
    expected_cars: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float | int]]:
    """DP-FedAvg's aggregation of a round's usable deltas into the mean update, and the round's metrics:
    ``clipped``, ``norm_bound`` (the clip) and ``dp_sigma``, the noise multiplier the sum actually carries (what
    the accountant charges). Central: clip each, sum, add ``N(0, (sigma C)^2)``. Distributed: the deltas arrive
    clipped and noised by ``expected_cars`` cars' shares; the sum's norm is checked, and a short round (fewer
    cars) carries less noise, ``sigma sqrt(n / expected)``."""
    assert config.clip is not None  # PrivacyConfig refuses a mode without clip
    clip, n = float(config.clip), len(deltas)
    if config.mode == "central":
        total, clipped = dp_sum(deltas, clip=clip, noise_std=noise_multiplier * clip, generator=generator)
        sigma = noise_multiplier
    elif config.mode == "distributed":
        if n == 0:
            raise InvalidInput("a DP sum needs >= 1 update, got none")
        total = torch.stack([d.to(torch.float64) for d in deltas]).sum(dim=0)  # (P,): what secure aggregation yields
        sigma = noise_multiplier * math.sqrt(n / expected_cars)
        check_sum_norm(total, cars=n, clip=clip, noise_std=sigma * clip)
        clipped = 0  # the cars clipped; the coordinator sees (under secure aggregation) only the sum
    else:
        raise InvalidInput(f"private_combine needs privacy mode 'central' or 'distributed', got {config.mode!r}")
    return finish_sum(total, n), {"clipped": clipped, "norm_bound": clip, "dp_sigma": sigma}


# ------------------------------------------------------------------------------------------------ accounting


def _event(noise_multipliers: Sequence[float], q: float) -> dp_accounting.DpEvent:
    """The rounds as one DP event: a Poisson-subsampled Gaussian per round, equal sigmas self-composed."""
    groups = Counter(noise_multipliers)
    return dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), count
        )
        for sigma, count in sorted(groups.items())
    ])


def epsilon_spent(noise_multipliers: Sequence[float], *, q: float, delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` after rounds run with these noise multipliers (one per round, sigma of the sum's noise
    over clip) and sampling rate ``q``. 0 for no round; inf if a round had no noise."""
    if accountant not in ACCOUNTANTS:
        raise InvalidInput(f"privacy accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if not 0 < q <= 1:
        raise InvalidInput(f"sampling rate q must be in (0, 1], got {q!r}")
    if not noise_multipliers:
        return 0.0
    if any(not s > 0 for s in noise_multipliers):
        return math.inf
    acct: dp_accounting.PrivacyAccountant
    if accountant == "rdp":
        acct = rdp.RdpAccountant(list(RDP_ORDERS))
    else:
        acct = pld.PLDAccountant()
    acct.compose(_event(noise_multipliers, q))
    return float(acct.get_epsilon(delta))


def calibrate_noise_multiplier(
    target_epsilon: float, *, rounds: int, q: float, delta: float, accountant: str = "rdp", rtol: float = 0.01
) -> float:
    """The smallest noise multiplier (within ``rtol``) whose ``rounds`` rounds spend at most ``target_epsilon``:
    a bisection on log sigma (epsilon falls as sigma grows)."""
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)) or rounds < 1:
        raise InvalidInput(f"calibration needs target_epsilon > 0 and rounds >= 1, got {target_epsilon}, {rounds}")

    def eps(sigma: float) -> float:
        return epsilon_spent([sigma] * rounds, q=q, delta=delta, accountant=accountant)

    lo, hi = 0.05, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 4
        if hi > 1e4:
            raise InvalidInput(f"no noise multiplier up to 1e4 reaches epsilon {target_epsilon} in {rounds} rounds")
    if eps(lo) <= target_epsilon:
        return lo
    while hi / lo > 1 + rtol:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if eps(mid) <= target_epsilon else (mid, hi)
    return hi
