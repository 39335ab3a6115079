"""A car's state of charge over one traced day, in closed form: linear drain while driving, linear charge while
plugged in (capped at full), flat while parked unplugged.

The day is cut at every trip and plug boundary into segments of one mode each; the charge at each segment's
start is carried over from the last, so any second's charge is one lookup and one multiply, never a
per-minute loop. Parked unplugged the charge is held flat: whether the computer works (and what that costs) is
for the agent and the simulator to account, not the trace.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from enum import StrEnum

from fleetgrid.vehicle.schedule import MINUTES_PER_DAY, DaySchedule

__all__ = [
    "BATTERY_KWH",
    "CHARGER_KW",
    "CHARGING_EFFICIENCY",
    "DRIVING_KWH_PER_MINUTE",
    "DayProfile",
    "Mode",
    "Segment",
]

BATTERY_KWH = 75.0
"""Usable battery, Model 3/Y Long Range (range 57-100 kWh)."""

DRIVING_KWH_PER_MINUTE = 29.1 * 0.28 / 60.7
"""~0.134 kWh a minute at the wheel (est): 29.1 mi in 60.7 min of driving a day (AAA American Driving Survey
2023) at 0.28 kWh/mi (Model Y, insidefuturemobility)."""

CHARGER_KW = 7.7
"""Home Level 2 charger, low end of Tesla's 7.7-11.5 kW (tesla.com onboard charger and Wall Connector pages)."""

CHARGING_EFFICIENCY = 0.88
"""Share of wall energy that reaches the battery (range 0.85-0.94; Tesla EPA filings via Car and Driver)."""

_SECONDS_PER_DAY = MINUTES_PER_DAY * 60


class Mode(StrEnum):
    DRIVING = "driving"
    PLUGGED = "plugged"
    PARKED = "parked"


@dataclass(frozen=True, slots=True)
class Segment:
    """Seconds ``[start, end)`` after local midnight in one mode, starting at charge ``soc0``.

    ``full_at`` (plugged segments only) is the whole second from which the battery is full, if that falls inside
    the segment; the car charges before it and sits full from it on.
    """

    start: int
    end: int
    mode: Mode
    soc0: float
    full_at: int | None = None

    def soc(self, second: float, drain_per_s: float, charge_per_s: float) -> float:
        elapsed = second - self.start
        if self.mode is Mode.DRIVING:
            return max(0.0, self.soc0 - drain_per_s * elapsed)
        if self.mode is Mode.PLUGGED:
            if self.full_at is not None and second >= self.full_at:
                return 1.0
            return min(1.0, self.soc0 + charge_per_s * elapsed)
        return self.soc0

    def charging(self, second: float) -> bool:
        return self.mode is Mode.PLUGGED and (self.full_at is None or second < self.full_at)


@dataclass(frozen=True, slots=True)
class DayProfile:
    """One day's segments, covering ``[0, 86400)`` seconds without gaps."""

    segments: tuple[Segment, ...]
    drain_per_s: float
    charge_per_s: float
    starts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts", tuple(s.start for s in self.segments))

    @classmethod
    def build(cls, day: DaySchedule, drain_per_s: float, charge_per_s: float) -> DayProfile:
        """``drain_per_s`` and ``charge_per_s`` are fractions of the battery a second."""
        cuts = {0, _SECONDS_PER_DAY}
        for start, end in (*day.trips, *day.plugged):
            cuts.update((start * 60, end * 60))
        bounds = sorted(cuts)
        segments: list[Segment] = []
        soc = day.soc_start
        for start, end in itertools.pairwise(bounds):
            mid_minute = (start + end) / 120
            if day.driving(mid_minute):
                mode = Mode.DRIVING
            elif day.plugged_in(mid_minute):
                mode = Mode.PLUGGED
            else:
                mode = Mode.PARKED
            if segments and segments[-1].mode is mode and mode is not Mode.PLUGGED:
                # Adjacent trips or parked stretches behave as one; plugged ones keep their own full_at.
                prev = segments.pop()
                start, soc = prev.start, prev.soc0
            full_at = None
            if mode is Mode.PLUGGED:
                if soc >= 1.0:
                    full_at = start
                elif charge_per_s > 0:
                    t_full = start + math.ceil((1.0 - soc) / charge_per_s)
                    full_at = t_full if t_full < end else None
            segment = Segment(start=start, end=end, mode=mode, soc0=soc, full_at=full_at)
            segments.append(segment)
            soc = segment.soc(end, drain_per_s, charge_per_s)
        return cls(segments=tuple(segments), drain_per_s=drain_per_s, charge_per_s=charge_per_s)

    def segment_at(self, second: float) -> Segment:
        """The segment holding ``second`` (0 <= second < 86400)."""
        return self.segments[max(0, bisect.bisect_right(self.starts, second) - 1)]

    def soc_at(self, second: float) -> float:
        return self.segment_at(second).soc(second, self.drain_per_s, self.charge_per_s)

    @property
    def end_soc(self) -> float:
        """Charge at the day's last second (what the next day would start at, were the car continuous)."""
        last = self.segments[-1]
        return last.soc(last.end, self.drain_per_s, self.charge_per_s)

    def change_seconds(self) -> tuple[int, ...]:
        """Seconds at which driving, plug or charging status may change: segment starts and full-charge moments."""
        points = {s.start for s in self.segments}
        points.update(s.full_at for s in self.segments if s.full_at is not None)
        return tuple(sorted(points))
