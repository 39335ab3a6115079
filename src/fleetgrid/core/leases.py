"""Lease and unit states and the only transitions between them.

A *unit* is a piece of work a job was planned into (a shard of inputs, a shard to evaluate on, a car's share of a
training round); a *lease* is one car's hold on one unit for a while. Every workload's leases follow the same
lifecycle::

    unit:   PENDING --lease--> LEASED --complete--> DONE
               ^                  |
               +-- fail / hand back / expire / revoke
    any live unit --job finished or cancelled--> CANCELLED

    lease:  ACTIVE --> COMPLETED | FAILED | HANDED_BACK | EXPIRED | CANCELLED   (all final)

How units are placed (:class:`Placement`) changes which of these happen, never the states: a RESIDENT lease never
completes, and a GANG's units go from PENDING to LEASED together and, when one of their leases ends other than by
completion, back together (the others' leases CANCELLED).

The store applies each transition as a conditional update on the expected current state, so two coordinator
processes racing on one row cannot both apply it; :func:`check_lease_transition` is what the code asks before it
tries, and what tests check the table against.
"""

from __future__ import annotations

from enum import StrEnum

from fleetgrid.errors import Conflict

__all__ = [
    "CLOSED_LEASE_STATES",
    "LEASE_TRANSITIONS",
    "UNIT_TRANSITIONS",
    "LeaseState",
    "Placement",
    "UnitState",
    "check_lease_transition",
    "check_unit_transition",
]


class UnitState(StrEnum):
    PENDING = "pending"
    """Waiting for a car."""
    LEASED = "leased"
    """Held by one car's active lease."""
    DONE = "done"
    """Its result was accepted."""
    CANCELLED = "cancelled"
    """Its job ended before it was done (or a surplus replica)."""


class LeaseState(StrEnum):
    ACTIVE = "active"
    COMPLETED = "completed"
    """The car reported and its report was accepted."""
    FAILED = "failed"
    """The work itself failed on the car, or the car was revoked."""
    HANDED_BACK = "handed_back"
    """The car was preempted (the driver came back) or its agent stopped: not the work's fault."""
    EXPIRED = "expired"
    """The deadline passed without a renewal."""
    CANCELLED = "cancelled"
    """The job (or its training round) no longer wants the work."""


class Placement(StrEnum):
    """How a workload's units are placed on cars."""

    SINGLE = "single"
    """One car per unit (batch inference, evaluation, a share of a training round)."""
    GANG = "gang"
    """k cars leased together, all or nothing, restarted together when one leaves (a model split across cars):
    no member is leased until k cars are waiting for it, and when one member's lease fails, is handed back, expires
    or is revoked, the others are cancelled and every member not yet done waits for cars again, all at once (a
    member's accepted result stays accepted)."""
    RESIDENT = "resident"
    """No natural end: renewed while the car stays eligible, ended by preemption or by the job (serving). A
    completion is refused; a hand-back, a turn to ineligible or an expiry puts the unit straight back in the queue
    for another car (failover); every close is metered as the seconds the lease was held."""


CLOSED_LEASE_STATES = frozenset(LeaseState) - {LeaseState.ACTIVE}

LEASE_TRANSITIONS: dict[LeaseState, frozenset[LeaseState]] = {
    LeaseState.ACTIVE: frozenset(CLOSED_LEASE_STATES),
    **{state: frozenset() for state in CLOSED_LEASE_STATES},
}

UNIT_TRANSITIONS: dict[UnitState, frozenset[UnitState]] = {
    UnitState.PENDING: frozenset({UnitState.LEASED, UnitState.CANCELLED}),
    UnitState.LEASED: frozenset({UnitState.PENDING, UnitState.DONE, UnitState.CANCELLED}),
    UnitState.DONE: frozenset(),
    UnitState.CANCELLED: frozenset(),
}


def check_lease_transition(lease_id: str, current: str, target: str) -> LeaseState:
    """``target`` as a LeaseState if a lease in ``current`` may move there; Conflict naming both otherwise."""
    src, dst = LeaseState(current), LeaseState(target)
    if dst not in LEASE_TRANSITIONS[src]:
        raise Conflict(f"lease {lease_id} is {src}, and a {src} lease cannot become {dst}; "
                       "lease new work with POST /v1/leases")
    return dst


def check_unit_transition(unit_id: str, current: str, target: str) -> UnitState:
    src, dst = UnitState(current), UnitState(target)
    if dst not in UNIT_TRANSITIONS[src]:
        raise Conflict(f"unit {unit_id} is {src} and cannot become {dst}")
    return dst
