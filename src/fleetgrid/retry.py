"""How every fleetgrid client waits between tries: exponential back-off with full jitter.

A fixed or purely exponential schedule makes every car that lost the coordinator in the same outage retry at the
same instants; drawing each wait uniformly from the whole window ("full jitter", tenacity's
``wait_random_exponential``) spreads a million reconnecting cars over it instead.
"""

from __future__ import annotations

import tenacity
from tenacity.wait import wait_base

__all__ = ["backoff", "delay_s"]


def backoff(base_s: float, cap_s: float) -> wait_base:
    """Before try ``n + 1``, wait a uniform draw from ``[0, min(cap_s, base_s * 2 ** (n - 1))]`` seconds."""
    return tenacity.wait_random_exponential(multiplier=base_s, max=cap_s)


def delay_s(wait: wait_base, failures: int) -> float:
    """The wait ``wait`` asks for after ``failures`` failures in a row, for loops that are not one retried call."""
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(failures, 1)
    return wait(state)
