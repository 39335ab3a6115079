"""Injectable clocks, so the same domain code runs on wall time or on a simulated day played in a minute.

Domain code never calls ``time.time()``: it asks a :class:`Clock`. Like SimPy's real-time environment, the
accelerated clock differs from the wall clock only in how it maps elapsed wall time to simulated time.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod

__all__ = ["Clock", "ManualClock", "ScaledClock", "WallClock"]


class Clock(ABC):
    """Tells the (possibly simulated) time in seconds since the Unix epoch, and sleeps in that time."""

    @abstractmethod
    def now(self) -> float:
        """Current time in seconds since the epoch, on this clock."""

    @abstractmethod
    def sleep(self, seconds: float) -> None:
        """Block for ``seconds`` of this clock's time."""

    @property
    def speed(self) -> float:
        """Clock seconds per wall second."""
        return 1.0

    def to_wall(self, seconds: float) -> float:
        """Wall seconds that ``seconds`` of this clock take."""
        return seconds / self.speed


class WallClock(Clock):
    """The real time."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class ScaledClock(Clock):
    """Simulated time that runs ``speed`` times faster than the wall, starting at ``start``.

    ``ScaledClock(speed=1440)`` plays a day in a minute. Several processes given the same ``start`` and
    ``wall_origin`` agree on the simulated time.
    """

    def __init__(self, speed: float, start: float, wall_origin: float | None = None) -> None:
        if speed <= 0:
            raise ValueError(f"clock speed must be > 0 (simulated seconds per wall second), got {speed}")
        self._speed = float(speed)
        self.start = float(start)
        self.wall_origin = time.time() if wall_origin is None else float(wall_origin)

    @property
    def speed(self) -> float:
        return self._speed

    def now(self) -> float:
        return self.start + (time.time() - self.wall_origin) * self._speed

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self._speed)


class ManualClock(Clock):
    """A clock that moves only when told to; ``sleep`` advances it. For tests."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards; advance() takes seconds >= 0, got {seconds}")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, t: float) -> None:
        with self._lock:
            self._now = float(t)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)
