"""Per-minute counts of the fleet's states, accumulated from a day's intervals with difference arrays.

Each car is in exactly one state each minute, taken in this order (the first that applies):
driving > opted_out > unplugged > no_wifi > low_soc > available. A :class:`Tally` adds up over blocks, chunks and
Ray shards with ``+``, so the way a fleet is split never changes the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fleetgrid.sim.fleet import DayOutcome, Fleet
from fleetgrid.sim.tables import MINUTES

__all__ = ["SCALARS", "STATES", "Tally", "coverage", "tally_day"]

STATES = ("driving", "opted_out", "unplugged", "no_wifi", "low_soc", "available")

# Whole-run sums kept alongside the per-minute series.
SCALARS = (
    "vehicles",  # cars simulated
    "opted_in",  # cars whose owner opted in
    "home_charging",  # cars with a home charger
    "board_w",  # sum of board power over all cars (nameplate)
    "int8_tops",  # sum of INT8 peak over all cars
    "wifi_minutes",  # opted-in car-minutes within home Wi-Fi reach
    "cellular_minutes",  # opted-in car-minutes outside it
    "plugged_minutes",  # car-minutes plugged in at home (any owner)
    "driving_minutes",
    "trips",
)


@dataclass(eq=False)
class Tally:
    """Per-minute series over ``days * 1440`` minutes plus whole-run sums."""

    days: int
    sums: dict[str, float] = field(default_factory=dict)
    # Sized by ``days``, so made in __post_init__ rather than passed in.
    states: np.ndarray = field(init=False)  # (len(STATES), days * 1440) int64
    available_w: np.ndarray = field(init=False)  # (days * 1440,) board W, no derate
    available_tops: np.ndarray = field(init=False)  # (days * 1440,)

    def __post_init__(self) -> None:
        m = self.days * MINUTES
        self.states = np.zeros((len(STATES), m), dtype=np.int64)
        self.available_w = np.zeros(m)
        self.available_tops = np.zeros(m)
        for key in SCALARS:
            self.sums.setdefault(key, 0.0)

    def __add__(self, other: Tally) -> Tally:
        if other.days != self.days:
            raise ValueError(f"cannot add a {other.days}-day tally to a {self.days}-day tally")
        total = Tally(days=self.days, sums={k: self.sums[k] + other.sums[k] for k in SCALARS})
        np.add(self.states, other.states, out=total.states)
        np.add(self.available_w, other.available_w, out=total.available_w)
        np.add(self.available_tops, other.available_tops, out=total.available_tops)
        return total

    def add_fleet(self, fleet: Fleet) -> None:
        self.sums["vehicles"] += fleet.size
        self.sums["opted_in"] += int(fleet.opt_in.sum())
        self.sums["home_charging"] += int(fleet.home.sum())
        self.sums["board_w"] += float(fleet.board_w.sum())
        self.sums["int8_tops"] += float(fleet.int8_tops.sum())


def coverage(starts: np.ndarray, ends: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """How many intervals [start, end) (or how much weight) cover each minute of the day; shape (1440,).

    A difference array: +w at each start, -w at each end, then a running sum -- O(intervals + minutes).
    """
    up = np.bincount(starts, weights=weights, minlength=MINUTES + 1)
    down = np.bincount(ends, weights=weights, minlength=MINUTES + 1)
    return np.cumsum(up - down)[:MINUTES]


def tally_day(tally: Tally, day: int, out: DayOutcome, fleet: Fleet) -> None:
    """Add one day of one block to ``tally``."""
    window = slice(day * MINUTES, (day + 1) * MINUTES)
    trips_out = out.valid & ~fleet.opt_in[:, None]
    driving = coverage(out.start[out.valid], out.end[out.valid])
    driving_out = coverage(out.start[trips_out], out.end[trips_out])
    n_out = fleet.size - int(fleet.opt_in.sum())
    states = tally.states[:, window]
    states[0] += driving
    states[1] += n_out - driving_out
    states[2] += (fleet.size - n_out) - (driving - driving_out)  # opted-in and parked; plugged taken off below
    zero = np.zeros(fleet.size, dtype=np.int64)
    plugged_minutes = 0
    for a, b, low, on in (
        (zero, out.morning_end, out.low_morning, out.plugged_morning),
        (out.evening_start, out.evening_end, out.low_evening, out.plugged_evening),
    ):
        _add_session(tally, window, a, b, low, on, fleet)
        plugged_minutes += int(np.maximum(b - a, 0)[on].sum())
    tally.sums["plugged_minutes"] += plugged_minutes
    _add_day_sums(tally, out, fleet)


def _add_session(
    tally: Tally,
    window: slice,
    a: np.ndarray,
    b: np.ndarray,
    low: np.ndarray,
    on: np.ndarray,
    fleet: Fleet,
) -> None:
    """One home plug-in session per car, [a, b): opted-in cars in it are no_wifi, low_soc, then available."""
    states = tally.states[:, window]
    plugged = on & fleet.opt_in
    off_wifi = plugged & ~fleet.wifi
    serving = plugged & fleet.wifi
    no_wifi = coverage(a[off_wifi], b[off_wifi])
    start, ready, stop = a[serving], (a + low)[serving], b[serving]
    low_soc = coverage(start, ready)
    available = coverage(ready, stop)
    states[2] -= no_wifi + low_soc + available
    states[3] += no_wifi
    states[4] += low_soc
    states[5] += available
    tally.available_w[window] += coverage(ready, stop, fleet.board_w[serving])
    tally.available_tops[window] += coverage(ready, stop, fleet.int8_tops[serving])


def _add_day_sums(tally: Tally, out: DayOutcome, fleet: Fleet) -> None:
    home_minutes = np.where(out.home_all_day, MINUTES, out.morning_end + (MINUTES - out.evening_start))
    reach = fleet.opt_in & fleet.wifi
    wifi_minutes = int(home_minutes[reach].sum())
    tally.sums["wifi_minutes"] += wifi_minutes
    tally.sums["cellular_minutes"] += int(fleet.opt_in.sum()) * MINUTES - wifi_minutes
    tally.sums["driving_minutes"] += int((out.end - out.start)[out.valid].sum())
    tally.sums["trips"] += int(out.valid.sum())
