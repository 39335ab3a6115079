"""An in-process round: a coordinator and its cars through every phase, with chosen cars lost before each one, and
every message's bytes counted. No I/O; tests and ``bench/trust_secagg.py`` use it, the coordinator's routes will
call the same objects one message at a time."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fleetgrid.errors import DishonestShare, InvalidInput
from fleetgrid.workloads.training.secagg.car import SecAggCar
from fleetgrid.workloads.training.secagg.coordinator import AggregateResult, SecAggCoordinator
from fleetgrid.workloads.training.secagg.messages import RoundPlan, UnmaskResponse

__all__ = ["Dropouts", "RoundOutcome", "run_round"]


@dataclass(frozen=True, kw_only=True)
class Dropouts:
    """Cars lost before each phase (a car lost once stays lost)."""

    before_advertising: frozenset[str] = frozenset()
    before_sharing: frozenset[str] = frozenset()
    before_masking: frozenset[str] = frozenset()
    """Dealt their shares, then lost before sending a masked input: their pairwise masks must be rebuilt."""
    before_unmasking: frozenset[str] = frozenset()
    """Sent a masked input (it is in the sum), then lost before revealing shares."""

    def all(self) -> frozenset[str]:
        return self.before_advertising | self.before_sharing | self.before_masking | self.before_unmasking


@dataclass(frozen=True, kw_only=True)
class RoundOutcome:
    result: AggregateResult
    bytes_up: dict[str, int] = field(default_factory=dict)
    """Per car, every byte it sent in the round."""
    bytes_down: dict[str, int] = field(default_factory=dict)
    """Per car, every byte it received (the round plan included)."""
    caught: tuple[DishonestShare, ...] = ()
    """The errors the coordinator raised at cars whose revealed shares were wrong."""


def run_round(
    plan: RoundPlan,
    quantized: Mapping[str, np.ndarray],
    *,
    dropouts: Dropouts = Dropouts(),
    tamper: Callable[[UnmaskResponse], UnmaskResponse] | None = None,
) -> RoundOutcome:
    """Run one round; ``quantized[car]`` is each car's update on the round's grid (cars lost before masking may be
    missing). ``tamper``, if given, is applied to every unmasking answer before the coordinator sees it (a lying
    car, in tests and the bench)."""
    missing = sorted(set(plan.cohort) - set(quantized) - dropouts.before_advertising - dropouts.before_sharing
                     - dropouts.before_masking)
    if missing:
        raise InvalidInput(f"no quantized update for {missing}, which are not lost before masking")
    server = SecAggCoordinator(plan)
    cars = {c: SecAggCar(c, plan) for c in plan.cohort}
    up = dict.fromkeys(plan.cohort, 0)
    down = dict.fromkeys(plan.cohort, plan.nbytes)
    alive = set(plan.cohort) - dropouts.before_advertising
    for c in sorted(alive):
        adv = cars[c].advertise()
        up[c] += adv.nbytes
        server.receive_advertisement(adv)
    server.close_advertising()
    alive -= dropouts.before_sharing
    for c in sorted(alive):
        keys = server.neighbour_keys(c)
        down[c] += keys.nbytes
        bundle = cars[c].share_keys(keys)
        up[c] += bundle.nbytes
        server.receive_shares(bundle)
    server.close_sharing()
    alive -= dropouts.before_masking
    for c in sorted(alive):
        shares = server.shares_for(c)
        down[c] += shares.nbytes
        cars[c].receive_shares(shares)
        masked = cars[c].masked_input(quantized[c])
        up[c] += masked.nbytes
        server.receive_masked_input(masked)
    server.close_masking()
    alive -= dropouts.before_unmasking
    caught: list[DishonestShare] = []
    for c in sorted(alive):
        request = server.unmask_request(c)
        down[c] += request.nbytes
        response = cars[c].unmask(request)
        if tamper is not None:
            response = tamper(response)
        up[c] += response.nbytes
        try:
            server.receive_unmasking(response)
        except DishonestShare as exc:
            caught.append(exc)
    return RoundOutcome(result=server.finish(), bytes_up=up, bytes_down=down, caught=tuple(caught))
