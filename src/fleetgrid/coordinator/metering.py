"""What a car may bill for one lease: its reported counters, held to what the coordinator itself saw."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..core import Usage
from ..errors import InvalidInput
from .throughput import TIMER_GRACE_S

__all__ = ["BYTES_ALLOWANCE", "REASONS", "Implausible", "Seen", "check_compute_s", "computed_items", "cross_check"]

BYTES_ALLOWANCE = (4, 1 << 20)
"""A lease's bytes may be up to 4x (a transfer retried, as the agent does up to 4 times, is charged per attempt)
what it had to move, plus 1 MiB (progress checkpoints, requests): more is implausible."""


REASONS = ("compute_s", "bytes", "throughput")
"""What a report can claim beyond what was seen: more compute-seconds than the lease was held, more bytes than it
could have moved, more work than the car's hardware could have done in the compute-seconds it reported."""


@dataclass(frozen=True, slots=True)
class Implausible:
    """One claim of a report that failed a cross-check."""

    reason: str
    """One of :data:`REASONS`."""
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class Seen:
    """What the coordinator saw of one lease."""

    held_s: float
    """Seconds from the lease's issue to its report, as the coordinator counted them."""
    payload_bytes: int
    """Bytes the lease had to move: what the coordinator served it (inputs, model file, checkpoint to resume from)
    and the result it received."""
    grace_s: float = 1.0
    """Compute-seconds a report may claim beyond ``held_s`` (the car's timer against the coordinator's clock)."""
    fastest_s: float = 0.0
    """The fewest seconds the car's declared hardware could have done the reported work in
    (:func:`fleetgrid.coordinator.throughput.min_seconds`); 0 when not known."""

    @property
    def bytes_max(self) -> int:
        factor, extra = BYTES_ALLOWANCE
        return factor * self.payload_bytes + extra


def check_compute_s(compute_s: float, *, lease_id: str, issued_at: float, now: float, slack_s: float) -> None:
    """InvalidInput unless ``compute_s`` fits in the time since the lease was issued (plus ``slack_s``): a car
    cannot bill an hour of compute for a lease it was given a minute ago."""
    limit = max(0.0, now - issued_at) + slack_s
    if compute_s > limit:
        raise InvalidInput(f"compute_s {compute_s:g} exceeds the {limit:.1f} s that lease {lease_id} has existed "
                           f"(issued {now - issued_at:.1f} s ago, plus {slack_s:g} s slack); report only the "
                           "seconds this lease computed")


def computed_items(done_items: int, resumed_items: int) -> int:
    """Items a lease computed itself: those done, less the checkpoint it resumed from (already metered to the
    car that computed them)."""
    return max(0, done_items - resumed_items)


def cross_check(usage: Usage, seen: Seen) -> tuple[Usage, list[Implausible]]:
    """``usage`` as a car reported it, held to what the coordinator ``seen``: more compute-seconds than the lease
    existed, or more bytes than it could have moved, are clamped to what was seen; work (items, examples, steps,
    tokens) claimed faster than the car's hardware could have done it in the compute-seconds reported is cut to
    what it could have done. Each such claim is named in the list returned (implausible: it lowers the car's
    reputation). Within the bounds the report stands."""
    problems: list[Implausible] = []
    if usage.accelerator_s > seen.held_s + seen.grace_s:
        problems.append(Implausible("compute_s", f"compute_s {usage.accelerator_s:.1f} exceeds the "
                                    f"{seen.held_s:.1f} s the lease was held"))
        usage = dataclasses.replace(usage, accelerator_s=max(0.0, seen.held_s))
    moved = usage.cellular_bytes + usage.wifi_bytes
    limit = seen.bytes_max
    if moved > limit:
        problems.append(Implausible("bytes", f"{moved} bytes reported, more than the {limit} the lease could have "
                                    "moved"))
        cellular = usage.cellular_bytes * limit // moved  # the split between links is kept
        usage = dataclasses.replace(usage, cellular_bytes=cellular, wifi_bytes=limit - cellular)
    budget = usage.accelerator_s + TIMER_GRACE_S
    if seen.fastest_s > budget:
        problems.append(Implausible("throughput", f"work needing at least {seen.fastest_s:.3g} s of the car's "
                                    f"hardware reported done in {usage.accelerator_s:.3g} s"))
        share = budget / seen.fastest_s  # what the hardware could have done in the seconds reported
        usage = dataclasses.replace(usage, items=int(usage.items * share), examples=int(usage.examples * share),
                                    steps=int(usage.steps * share), tokens=int(usage.tokens * share))
    return usage, problems
