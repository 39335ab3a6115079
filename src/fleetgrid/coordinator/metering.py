"""What a car may bill for one lease: its reported counters, held to what the coordinator itself saw."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..core import Usage
from ..errors import InvalidInput

__all__ = ["BYTES_ALLOWANCE", "Seen", "check_compute_s", "computed_items", "cross_check"]

BYTES_ALLOWANCE = (4, 1 << 20)
"""A lease's bytes may be up to 4x (a transfer retried, as the agent does up to 4 times, is charged per attempt)
what it had to move, plus 1 MiB (progress checkpoints, requests): more is implausible."""


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


def cross_check(usage: Usage, seen: Seen) -> tuple[Usage, list[str]]:
    """``usage`` as a car reported it, held to what the coordinator ``seen``: more compute-seconds than the lease
    existed, or more bytes than it could have moved, are clamped to what was seen, and each such claim is named in
    the list returned (implausible: it lowers the car's reputation). Within the bounds the report stands."""
    problems: list[str] = []
    if usage.accelerator_s > seen.held_s + seen.grace_s:
        problems.append(f"compute_s {usage.accelerator_s:.1f} exceeds the {seen.held_s:.1f} s the lease was held")
        usage = dataclasses.replace(usage, accelerator_s=max(0.0, seen.held_s))
    moved = usage.cellular_bytes + usage.wifi_bytes
    limit = seen.bytes_max
    if moved > limit:
        problems.append(f"{moved} bytes reported, more than the {limit} the lease could have moved")
        cellular = usage.cellular_bytes * limit // moved  # the split between links is kept
        usage = dataclasses.replace(usage, cellular_bytes=cellular, wifi_bytes=limit - cellular)
    return usage, problems
