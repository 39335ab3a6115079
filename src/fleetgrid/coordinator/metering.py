"""What a car may bill for one lease: its reported counters, held to what the coordinator itself saw."""

from __future__ import annotations

from ..errors import InvalidInput

__all__ = ["check_compute_s", "computed_items"]


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
