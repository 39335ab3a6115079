"""The slow reference: the same fleet model, one vehicle at a time and one minute at a time, in plain Python.

It shares only the random numbers (:mod:`~fleetgrid.sim.draws`) and the lookup tables with the vectorised model;
attributes, trips, charging and every state are worked out here again with scalar code, minute by minute. A test
runs both on the same seed and requires identical per-minute state counts; the benchmark times both.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from fleetgrid.sim.draws import BLOCK, block_rng, block_sizes, draw_day, draw_vehicles
from fleetgrid.sim.params import FleetConfig
from fleetgrid.sim.tables import MINUTES, ModelTables, compile_tables
from fleetgrid.sim.tally import STATES, Tally

__all__ = ["simulate_reference"]

DRIVING, OPTED_OUT, UNPLUGGED, NO_WIFI, LOW_SOC, AVAILABLE = range(len(STATES))


def _pick(cum: list[float], u: float) -> int:
    return min(max(bisect.bisect_right(cum, u) - 1, 0), len(cum) - 2)


class _Lists:
    """The model tables as plain Python lists, so the reference does scalar work on Python floats."""

    def __init__(self, t: ModelTables) -> None:
        self.trips = t.trips  # the draws need it to size the day's trip uniforms
        self.is_weekend = t.is_weekend
        # Each categorical table as its cumulative shares, for _pick.
        self.trips_cum: list[float] = t.trips.cum.tolist()
        self.weekday_hour_cum: list[float] = t.weekday_hour.cum.tolist()
        self.weekend_hour_cum: list[float] = t.weekend_hour.cum.tolist()
        self.duration_cum: list[float] = t.duration.cum.tolist()
        self.hardware_cum: list[float] = t.hardware.cum.tolist()
        self.battery_cum: list[float] = t.battery.cum.tolist()
        self.charger_cum: list[float] = t.charger.cum.tolist()
        self.duration_intercept: list[float] = t.duration_intercept.tolist()
        self.duration_slope: list[float] = t.duration_slope.tolist()
        self.hardware_w: list[float] = t.hardware_w.tolist()
        self.hardware_tops: list[float] = t.hardware_tops.tolist()
        self.battery_wh: list[int] = t.battery_wh.tolist()
        self.charge_wh_per_min: list[int] = t.charge_wh_per_min.tolist()
        self.drive_wh_per_min = t.drive_wh_per_min
        self.plugged_minutes = t.plugged_minutes


@dataclass
class _Car:
    board_w: float
    tops: float
    home: bool
    wifi: bool
    opt_in: bool
    rate: int
    floor: int
    limit: int
    plug_below: int
    away_below: int
    away_to: int
    soc: int
    plugged: bool


def _car(u: list[float], t: _Lists, config: FleetConfig) -> _Car:
    hardware, home, wifi, opt_in, battery, charger, soc0, plugged0 = u
    chg = config.charging
    hw = _pick(t.hardware_cum, hardware)
    cap = t.battery_wh[_pick(t.battery_cum, battery)]
    has_home = home < chg.home_charging
    floor = chg.soc_floor if config.time_structure else 0.0
    return _Car(
        board_w=t.hardware_w[hw],
        tops=t.hardware_tops[hw],
        home=has_home,
        wifi=wifi < config.connectivity.wifi_reach,
        opt_in=opt_in < config.owner.opt_in,
        rate=t.charge_wh_per_min[_pick(t.charger_cum, charger)],
        floor=int(cap * floor),
        limit=int(cap * chg.charge_limit),
        plug_below=int(cap * chg.plug_below_soc),
        away_below=int(cap * chg.away_below_soc),
        away_to=int(cap * chg.away_to_soc),
        soc=int(cap * (chg.charge_limit * (0.5 + 0.5 * soc0))),
        plugged=has_home and plugged0 < chg.plug_in_prob,
    )


def _trips(
    count: int,
    hours: list[float],
    minutes: list[float],
    durations: list[float],
    t: _Lists,
    weekend: bool,
) -> list[tuple[int, int]]:
    """This car's ``count`` trips from its uniforms (``hours`` etc. hold exactly its drawn trips)."""
    hour_cum = t.weekend_hour_cum if weekend else t.weekday_hour_cum
    starts = sorted(_pick(hour_cum, hours[i]) * 60 + int(minutes[i] * 60) for i in range(count))
    trips, prev_end = [], 0
    for i, start in enumerate(starts):
        u = durations[i]
        b = _pick(t.duration_cum, u)
        span = t.duration_intercept[b] + u * t.duration_slope[b]
        start = max(start, prev_end)
        if start >= MINUTES:
            break
        prev_end = min(start + max(1, int(span)), MINUTES)
        trips.append((start, prev_end))
    return trips


def _day(
    car: _Car,
    trips: list[tuple[int, int]],
    plug_u: float,
    t: _Lists,
    config: FleetConfig,
    out: list[list[int]],
    avail_w: list[float],
    avail_tops: list[float],
    offset: int,
) -> dict[str, int]:
    """Step one car through one day; returns the day's scalar sums."""
    constant = not config.time_structure
    if constant:
        window_start = int(plug_u * MINUTES)
        window_stop = window_start + t.plugged_minutes
    first = trips[0][0] if trips else MINUTES
    last = trips[-1][1] if trips else MINUTES
    evening_plugged = False
    sums = {"wifi_minutes": 0, "plugged_minutes": 0, "driving_minutes": 0}
    trip_i = 0
    for minute in range(MINUTES):
        while trip_i < len(trips) and minute >= trips[trip_i][1]:
            trip_i += 1
        if trip_i < len(trips) and trips[trip_i][0] <= minute:
            state = DRIVING
            sums["driving_minutes"] += 1
            car.soc -= t.drive_wh_per_min
            if minute == trips[trip_i][1] - 1:  # the trip's last minute
                if car.soc < car.away_below:
                    car.soc = car.away_to
                if trip_i == len(trips) - 1:  # home: decide tonight's plug-in
                    wants = plug_u < config.charging.plug_in_prob or car.soc < car.plug_below
                    evening_plugged = car.home and wants
        else:
            at_home = not trips or minute < first or minute >= last
            if constant:
                plugged = car.home and (window_start <= minute < window_stop or minute < window_stop - MINUTES)
            else:
                plugged = at_home and (car.plugged if minute < first else evening_plugged)
            sums["wifi_minutes"] += int(at_home and car.wifi and car.opt_in)
            sums["plugged_minutes"] += int(plugged)
            low = plugged and car.soc < car.floor
            if plugged and car.soc < car.limit:
                car.soc = min(car.limit, car.soc + car.rate)
            if not car.opt_in:
                state = OPTED_OUT
            elif not plugged:
                state = UNPLUGGED
            elif not car.wifi:
                state = NO_WIFI
            elif low:
                state = LOW_SOC
            else:
                state = AVAILABLE
                avail_w[offset + minute] += car.board_w
                avail_tops[offset + minute] += car.tops
        out[state][offset + minute] += 1
    if constant:
        car.plugged = car.home
    elif trips:
        car.plugged = evening_plugged
    return sums


def _reference_block(
    config: FleetConfig,
    t: _Lists,
    seed: int,
    block: int,
    n: int,
    days: int,
    tally: Tally,
) -> None:
    rng = block_rng(seed, block)
    vehicle_u = draw_vehicles(rng, n).u.tolist()
    day_draws = [draw_day(rng, n, t.trips) for _ in range(days)]
    plain = [
        (
            d.n_trips.tolist(),
            d.plug.tolist(),
            d.hour.tolist(),
            d.minute.tolist(),
            d.duration.tolist(),
        )
        for d in day_draws
    ]
    first_trip = [0] * days  # where the current car's trip uniforms start in each day's flat arrays
    out = [[0] * (days * MINUTES) for _ in STATES]
    avail_w, avail_tops = [0.0] * (days * MINUTES), [0.0] * (days * MINUTES)
    for i in range(n):  # one vehicle at a time
        car = _car(vehicle_u[i], t, config)
        tally.sums["vehicles"] += 1
        tally.sums["opted_in"] += int(car.opt_in)
        tally.sums["home_charging"] += int(car.home)
        tally.sums["board_w"] += car.board_w
        tally.sums["int8_tops"] += car.tops
        for d, (n_u, plug_u, hours, minutes, durations) in enumerate(plain):
            count = _pick(t.trips_cum, n_u[i])
            mine = slice(first_trip[d], first_trip[d] + count)
            first_trip[d] += count
            trips = (
                []
                if not config.time_structure
                else _trips(
                    count,
                    hours[mine],
                    minutes[mine],
                    durations[mine],
                    t,
                    t.is_weekend(d),
                )
            )
            sums = _day(car, trips, plug_u[i], t, config, out, avail_w, avail_tops, d * MINUTES)
            tally.sums["trips"] += len(trips)
            tally.sums["wifi_minutes"] += sums["wifi_minutes"]
            tally.sums["cellular_minutes"] += int(car.opt_in) * MINUTES - sums["wifi_minutes"]
            tally.sums["plugged_minutes"] += sums["plugged_minutes"]
            tally.sums["driving_minutes"] += sums["driving_minutes"]
    tally.states += np.array(out, dtype=np.int64)
    tally.available_w += np.array(avail_w)
    tally.available_tops += np.array(avail_tops)


def simulate_reference(config: FleetConfig, vehicles: int, days: int, seed: int = 0) -> Tally:
    """Same contract as :func:`fleetgrid.sim.runner.simulate_fleet`, at roughly a thousandth of the speed."""
    tables = _Lists(compile_tables(config))
    tally = Tally(days=days)
    for block, n in block_sizes(vehicles):
        assert n <= BLOCK
        _reference_block(config, tables, seed, block, n, days, tally)
    return tally
