"""Token buckets per client key (an address, a claimed car id, an enrollment token), bounded in memory, on the
injectable clock: what turns a flood of wrong credentials or enrollments into 429s with ``Retry-After``.

Hand-written rather than taken from a library (``limits``, ``slowapi``) because those read the wall clock and store
state per process anyway; a bucket is a dozen lines, and on :class:`~fleetgrid.clock.Clock` tests step through
refills without sleeping. Each coordinator process keeps its own buckets: N replicas let through N times the rate.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

from ..clock import Clock
from ..errors import InvalidInput, RateLimited

__all__ = ["RateLimit", "RateLimiter"]


@dataclass(frozen=True, kw_only=True)
class RateLimit:
    burst: int
    """How many events a key may have at once, from a full bucket."""
    per_s: float
    """How fast its bucket refills, in events per second."""

    def __post_init__(self) -> None:
        if self.burst < 1 or not (self.per_s > 0 and math.isfinite(self.per_s)):
            raise InvalidInput(f"a rate limit needs burst >= 1 and a finite per_s > 0, got burst={self.burst}, "
                               f"per_s={self.per_s}")


class RateLimiter:
    """One bucket per key. :meth:`check` refuses a key whose bucket is empty (without spending); :meth:`spend`
    takes one event from it. At most ``max_keys`` buckets are kept: past that the least recently used goes (a
    forgotten key starts full again, so the cap trades exactness for bounded memory under a spray of addresses)."""

    def __init__(self, limit: RateLimit, clock: Clock, *, what: str, max_keys: int = 100_000) -> None:
        self.limit, self.clock, self.what, self.max_keys = limit, clock, what, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, as of)
        self._lock = threading.Lock()  # routes run in a thread pool

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.limit.burst), now))
        return min(float(self.limit.burst), tokens + max(0.0, now - at) * self.limit.per_s)

    def check(self, key: str) -> None:
        """Raise :class:`RateLimited` if ``key`` has no event left now, saying when it will have one."""
        with self._lock:
            self._refuse_if_empty(self._level(key, self.clock.now()))

    def spend(self, key: str) -> None:
        """Take one event from ``key``'s bucket (it may go empty: the next :meth:`check` refuses)."""
        with self._lock:
            self._spend(key, self.clock.now())

    def take(self, key: str) -> None:
        """:meth:`check` and :meth:`spend` at once: an event allowed only while the bucket has one."""
        with self._lock:
            now = self.clock.now()
            self._refuse_if_empty(self._level(key, now))
            self._spend(key, now)

    def _refuse_if_empty(self, level: float) -> None:
        if level < 1.0:
            wait = (1.0 - level) / self.limit.per_s
            raise RateLimited(f"too many {self.what}; try again in {math.ceil(wait)} s", retry_after_s=wait)

    def _spend(self, key: str, now: float) -> None:
        self._buckets[key] = (max(0.0, self._level(key, now) - 1.0), now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)
