"""The fleet's recent past for the dashboard: every ``state_sample_interval_s`` the sweeper counts the cars in
each state (one row per state), and samples older than ``state_history_s`` are dropped as new ones are written, so
the history stays a few hundred rows whatever the fleet's size. Counting reads the cars once (10,000 cars: one
query of 10,000 short rows every five minutes)."""

from __future__ import annotations

import math

from ..clock import Clock
from .states import count_car_states
from .store import Store

__all__ = ["CarStateSampler"]


class CarStateSampler:
    def __init__(self, store: Store, clock: Clock, *, interval_s: float, keep_s: float,
                 online_window_s: float) -> None:
        self.store, self.clock = store, clock
        self.interval_s, self.keep_s, self.online_window_s = interval_s, keep_s, online_window_s
        self._last_slot: float | None = None

    def maybe_sample(self) -> bool:
        """Take a sample if this interval has none yet (samples sit on multiples of the interval, so replicas on
        one database write the same rows instead of twice as many); True if one was taken."""
        now = self.clock.now()
        slot = math.floor(now / self.interval_s) * self.interval_s
        if slot == self._last_slot:
            return False
        self.store.record_car_states(slot, count_car_states(self.store, now, self.online_window_s),
                                     keep_since=now - self.keep_s)
        self._last_slot = slot
        return True

    def history(self, window_s: float = 86400.0) -> list[tuple[float, dict[str, int]]]:
        return self.store.car_state_history(self.clock.now() - window_s)
