"""Admission: hand out new leases only while the coordinator keeps up with the leases it already handed out.

A coordinator that leases faster than it can take completions back builds a queue; once the queue is longer than a
lease's deadline, cars deliver on time and are still refused, and their units are computed twice. So this watches
how far behind the coordinator is, two ways, every ``interval_s``:

- the event loop's lag: how late a timer fires (every request waits that long before its route even starts);
- the store's: how long a no-op waits in the group-commit queue (every completion waits that long to commit).

While the larger of the two (smoothed) is above ``max_delay_s``, new leases wait (a long-poll keeps waiting, a
completion's next lease is not taken); completions, renewals and failures are always taken. The same figure is the
grace the sweeper gives a lease past its deadline, and a completion is judged by when it arrived, not when its
turn came: a car is never penalised for the coordinator's queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future

__all__ = ["Admission"]

log = logging.getLogger("fleetgrid.coordinator.admission")

_SMOOTHING = 0.3
"""Weight of the newest measurement: a burst shows within a few intervals, one slow tick does not close admission."""


class Admission:
    def __init__(self, max_delay_s: float, *, interval_s: float = 0.5) -> None:
        self.max_delay_s = max_delay_s
        self.interval_s = interval_s
        self.loop_lag_s = 0.0
        self.store_lag_s = 0.0
        self.closed_since: float | None = None

    @property
    def delay_s(self) -> float:
        """How far behind the coordinator is now (seconds, smoothed)."""
        return max(self.loop_lag_s, self.store_lag_s)

    def open(self) -> bool:
        """Whether a new lease may be handed out now."""
        return self.delay_s <= self.max_delay_s

    def note(self, loop_lag_s: float, store_lag_s: float) -> None:
        was_open = self.open()
        self.loop_lag_s += _SMOOTHING * (max(0.0, loop_lag_s) - self.loop_lag_s)
        self.store_lag_s += _SMOOTHING * (max(0.0, store_lag_s) - self.store_lag_s)
        if was_open and not self.open():
            self.closed_since = time.monotonic()
            log.warning("coordinator %.1f s behind (event loop %.1f s, store %.1f s): new leases wait until it "
                        "catches up", self.delay_s, self.loop_lag_s, self.store_lag_s)
        elif not was_open and self.open():
            log.info("coordinator caught up (%.1f s behind): leasing again", self.delay_s)
            self.closed_since = None

    async def watch(self, probe: Callable[[], Future[None]]) -> None:
        """Measure both lags every ``interval_s`` until cancelled; ``probe`` queues a no-op in the store's batches."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            woke = loop.time()
            await asyncio.wrap_future(probe())
            self.note(woke - due, loop.time() - woke)
