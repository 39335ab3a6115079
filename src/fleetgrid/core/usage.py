"""The usage row: what one closed lease did, in explicit quantities with units, so an owner can be paid and an
operator can see every workload in one ledger."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Usage", "held_s"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Quantities one lease delivered. Each field names its unit; a workload fills the ones it has."""

    items: int = 0
    """Inference items computed by this car (a resumed unit counts only the items after its checkpoint)."""
    examples: int = 0
    """Training or evaluation examples processed on the car."""
    steps: int = 0
    """Optimizer steps taken on the car."""
    tokens: int = 0
    """Tokens the car processed for clients (serving: word pieces embedded, characters generated)."""
    accelerator_s: float = 0.0
    """Seconds the car's computer worked on the lease (as the car reports it, bounded by the lease's duration)."""
    cellular_bytes: int = 0
    wifi_bytes: int = 0


def held_s(issued_at: float, deadline: float, now: float, renewal_s: float) -> float:
    """Seconds a lease was held, as the coordinator saw it, when it closes at ``now``: up to ``now`` while it is
    within its deadline; past it, up to its last renewal (the deadline less the ``renewal_s`` each renewal grants),
    as the car has been silent since. What a resident lease is worth, and what a lease the coordinator took away
    had cost its car."""
    end = now if now <= deadline else deadline - renewal_s
    return max(0.0, end - issued_at)
