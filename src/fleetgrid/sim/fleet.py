"""The vectorised fleet model: one array per vehicle attribute, and each day computed as intervals.

A day is a handful of events per car -- trips, the evening plug-in, the minute charging reaches the state-of-charge
floor -- so the work grows with the number of trips, never with vehicles x minutes. Home is where a car is before
its first trip and after its last; plug-in sessions and home Wi-Fi happen only there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetgrid.sim.draws import DayDraws, VehicleDraws
from fleetgrid.sim.params import FleetConfig
from fleetgrid.sim.tables import MINUTES, ModelTables

__all__ = ["DayOutcome", "Fleet", "build_fleet", "charge", "draw_trips", "step_day"]

NEVER = np.int32(1 << 30)  # start minute of an unused trip slot; sorts after every real trip
MINUTE = np.int32  # trip minutes fit 32 bits; half the memory traffic of int64 on the (n, k) trip arrays


@dataclass(frozen=True, eq=False)
class Fleet:
    """Per-vehicle attributes for one block, all shape (n,). Energies in whole Wh."""

    board_w: np.ndarray
    int8_tops: np.ndarray
    home: np.ndarray  # bool: has a home charger
    wifi: np.ndarray  # bool: home Wi-Fi reaches the parked car
    opt_in: np.ndarray  # bool: owner lets the car compute
    cap_wh: np.ndarray  # battery capacity
    rate_wh: np.ndarray  # Wh into the battery per plugged minute
    floor_wh: np.ndarray  # compute only above this (Sentry-style 20% floor)
    limit_wh: np.ndarray  # charging stops here
    plug_below_wh: np.ndarray
    away_below_wh: np.ndarray
    away_to_wh: np.ndarray
    soc0_wh: np.ndarray
    plugged0: np.ndarray  # bool: plugged in at midnight before day 0

    @property
    def size(self) -> int:
        return len(self.board_w)


def _wh(cap_wh: np.ndarray, fraction: float | np.ndarray) -> np.ndarray:
    return (cap_wh * fraction).astype(np.int64)


def build_fleet(draws: VehicleDraws, tables: ModelTables, config: FleetConfig) -> Fleet:
    """Turn per-vehicle uniforms into attributes (categorical picks and Bernoulli flags)."""
    chg = config.charging
    hw = tables.hardware(draws.hardware)
    cap = tables.battery_wh[tables.battery(draws.battery)]
    home = draws.home < chg.home_charging
    # Constant-rates mode has no state-of-charge floor, as the back-of-envelope has none.
    floor = chg.soc_floor if config.time_structure else 0.0
    return Fleet(
        board_w=tables.hardware_w[hw],
        int8_tops=tables.hardware_tops[hw],
        home=home,
        wifi=draws.wifi < config.connectivity.wifi_reach,
        opt_in=draws.opt_in < config.owner.opt_in,
        cap_wh=cap,
        rate_wh=tables.charge_wh_per_min[tables.charger(draws.charger)],
        floor_wh=_wh(cap, floor),
        limit_wh=_wh(cap, chg.charge_limit),
        plug_below_wh=_wh(cap, chg.plug_below_soc),
        away_below_wh=_wh(cap, chg.away_below_soc),
        away_to_wh=_wh(cap, chg.away_to_soc),
        # est: a car starts between half and all of its charge limit.
        soc0_wh=_wh(cap, chg.charge_limit * (0.5 + 0.5 * draws.soc0)),
        plugged0=home & (draws.plugged0 < chg.plug_in_prob),
    )


def draw_trips(day: DayDraws, tables: ModelTables, weekend: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trips as sorted, non-overlapping [start, end) minutes; shapes (n, k). A trip that would start while the
    previous one is still going starts when it ends; trips are cut at midnight and dropped if none is left."""
    n, k = len(day.count), tables.max_trips
    used = np.arange(k) < day.count[:, None]  # (n, k): a row's first count slots, row-major = draw order
    start = np.full((n, k), NEVER, dtype=MINUTE)
    hour = (tables.weekend_hour if weekend else tables.weekday_hour)(day.hour)
    start[used] = hour * 60 + (day.minute * 60).astype(MINUTE)
    start.sort(axis=1)
    b = tables.duration(day.duration)
    span = tables.duration_intercept[b] + day.duration * tables.duration_slope[b]
    duration = np.zeros((n, k), dtype=MINUTE)
    duration[used] = np.maximum(span.astype(MINUTE), 1)  # in time order; >= 1 whatever the rounding
    end = np.minimum(start + duration, MINUTES)
    # Few cars have a trip starting before the previous one ends; only they need the slot-by-slot pass.
    clash = np.flatnonzero((start[:, 1:] < end[:, :-1]).any(axis=1))
    if clash.size:
        start[clash], end[clash] = _push_overlaps(start[clash], duration[clash])
    return start, end, start < MINUTES


def _push_overlaps(start: np.ndarray, duration: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start each trip no earlier than the previous one ends, slot by slot; shapes (rows, k)."""
    end = np.empty_like(start)
    prev_end = np.zeros(len(start), dtype=start.dtype)
    for slot in range(start.shape[1]):  # k array ops, not a per-vehicle loop
        s = np.maximum(start[:, slot], prev_end)
        start[:, slot] = s
        end[:, slot] = np.minimum(s + duration[:, slot], MINUTES)
        prev_end = end[:, slot]
    return start, end


def charge(soc: np.ndarray, minutes: np.ndarray, on: np.ndarray, fleet: Fleet) -> tuple[np.ndarray, np.ndarray]:
    """A plug-in session of ``minutes``: (minutes spent below the floor, state of charge after).

    The car computes only once it is above its floor, so the first ``ceil((floor - soc) / rate)`` minutes are
    spent charging; a car at or above its charge limit stays where it is.
    """
    below = on & (soc < fleet.floor_wh)
    to_floor = -((soc - fleet.floor_wh) // fleet.rate_wh)  # ceil division in integers
    low = np.where(below, np.minimum(minutes, to_floor), 0)
    charged = np.minimum(fleet.limit_wh, soc + minutes * fleet.rate_wh)
    return low, np.where(on & (soc < fleet.limit_wh), charged, soc)


@dataclass(frozen=True, eq=False)
class DayOutcome:
    """One day of one block: the intervals every state is derived from. Shapes (n,) unless noted."""

    start: np.ndarray  # (n, k) trip starts (NEVER or >= 1440 where unused)
    end: np.ndarray  # (n, k)
    valid: np.ndarray  # (n, k) bool
    morning_end: np.ndarray  # home from 0 to here (first trip's start; 1440 on a day without trips)
    evening_start: np.ndarray  # home from here to 1440 (last trip's end; 1440 on a day without trips)
    evening_end: np.ndarray  # end of the evening session: 1440, except in constant-rates mode
    home_all_day: np.ndarray  # bool: no trips, so at home between morning_end and evening_start too
    plugged_morning: np.ndarray  # bool: plugged in over [0, morning_end)
    plugged_evening: np.ndarray  # bool: plugged in over [evening_start, evening_end)
    low_morning: np.ndarray  # minutes of the morning session below the floor
    low_evening: np.ndarray
    soc_start: np.ndarray  # Wh at midnight
    soc_end: np.ndarray  # Wh at the next midnight
    plugged_end: np.ndarray  # bool: plugged in at the next midnight


def step_day(
    fleet: Fleet,
    soc: np.ndarray,
    plugged: np.ndarray,
    day: DayDraws,
    tables: ModelTables,
    config: FleetConfig,
    weekend: bool,
) -> DayOutcome:
    """Advance every car of a block by one day, starting from (state of charge, plugged in) at midnight."""
    if not config.time_structure:
        return _constant_day(fleet, soc, day, tables)
    start, end, valid = draw_trips(day, tables, weekend)
    has = valid[:, 0]
    rows = np.arange(len(start))
    morning_end = np.where(has, start[:, 0], MINUTES).astype(np.int64)
    last = np.maximum(valid.sum(axis=1) - 1, 0)
    evening_start = np.where(has, end[rows, last], MINUTES).astype(np.int64)
    low_m, soc_now = charge(soc, morning_end, plugged, fleet)
    soc_now = _drive(soc_now, np.maximum(end - start, 0), valid, fleet, tables)  # unused slots: end <= start
    wants = (day.plug < config.charging.plug_in_prob) | (soc_now < fleet.plug_below_wh)
    evening = has & fleet.home & wants
    low_e, soc_now = charge(soc_now, MINUTES - evening_start, evening, fleet)
    return DayOutcome(
        start=start,
        end=end,
        valid=valid,
        morning_end=morning_end,
        evening_start=evening_start,
        evening_end=np.full(len(start), MINUTES, dtype=np.int64),
        home_all_day=~has,
        plugged_morning=plugged,
        plugged_evening=evening,
        low_morning=low_m,
        low_evening=low_e,
        soc_start=soc,
        soc_end=soc_now,
        plugged_end=np.where(has, evening, plugged),
    )


def _drive(soc: np.ndarray, driven: np.ndarray, valid: np.ndarray, fleet: Fleet, tables: ModelTables) -> np.ndarray:
    """State of charge after the day's trips (``driven``: minutes per trip, (n, k), 0 where unused). After any
    trip that leaves a car below ``away_below_wh`` it tops up to ``away_to_wh``. Charge only falls while
    driving, so a car that ends the day above the threshold never dipped: only the others need the trip-by-trip
    pass."""
    after = soc - driven.sum(axis=1, dtype=np.int64) * tables.drive_wh_per_min
    dips = np.flatnonzero(after < fleet.away_below_wh)
    if dips.size:
        level, below, to = soc[dips], fleet.away_below_wh[dips], fleet.away_to_wh[dips]
        for slot in range(driven.shape[1]):
            level = level - driven[dips, slot].astype(np.int64) * tables.drive_wh_per_min
            level = np.where(valid[dips, slot] & (level < below), to, level)
        after[dips] = level
    return after


def _constant_day(fleet: Fleet, soc: np.ndarray, day: DayDraws, tables: ModelTables) -> DayOutcome:
    """Constant-rates mode: no trips; a home charger owner is plugged in for ``plugged_minutes`` in one window
    starting at a uniformly random minute (wrapping past midnight into the morning), so every minute of the day
    sees the same expected share."""
    n, k = len(soc), tables.max_trips
    offset = (day.plug * MINUTES).astype(np.int64)
    stop = offset + tables.plugged_minutes
    zeros = np.zeros(n, dtype=np.int64)
    never = np.full((n, k), NEVER, dtype=MINUTE)
    return DayOutcome(
        start=never,
        end=np.full((n, k), MINUTES, dtype=MINUTE),
        valid=np.zeros((n, k), dtype=bool),
        morning_end=np.maximum(stop - MINUTES, 0),
        evening_start=offset,
        evening_end=np.minimum(stop, MINUTES),
        home_all_day=np.ones(n, dtype=bool),
        plugged_morning=fleet.home,
        plugged_evening=fleet.home,
        low_morning=zeros,
        low_evening=zeros,
        soc_start=soc,
        soc_end=soc,
        plugged_end=fleet.home,
    )
