"""Hand-rolled commuter days for demos and tests, until the simulator's calibrated traces are in use.

A day: leave home 07:00-08:30 and drive 20-45 min to work; leave work 16:30-18:30 and drive 20-45 min home;
with probability 0.43 an evening errand (AAA American Driving Survey 2023: 2.43 trips a day); plug in at home
5-20 min after the last trip until morning; home Wi-Fi whenever the car is at home. Each day starts at the charge
the previous one ended with (worked out with the default battery, drain and charger of :mod:`.soc`).
"""

from __future__ import annotations

import random

from fleetgrid.errors import InvalidInput
from fleetgrid.vehicle.schedule import MINUTES_PER_DAY, DaySchedule, VehicleTrace
from fleetgrid.vehicle.soc import BATTERY_KWH, CHARGER_KW, CHARGING_EFFICIENCY, DRIVING_KWH_PER_MINUTE, DayProfile

__all__ = ["ERRAND_PROBABILITY", "synthetic_trace"]

ERRAND_PROBABILITY = 0.43
"""Chance of a third trip in a day: AAA 2023 counts 2.43 trips per driver per day."""

_DRAIN_PER_S = DRIVING_KWH_PER_MINUTE / 60 / BATTERY_KWH
_CHARGE_PER_S = CHARGER_KW * CHARGING_EFFICIENCY / 3600 / BATTERY_KWH


def _day(rng: random.Random, soc_start: float) -> DaySchedule:
    leave = rng.randint(420, 510)
    at_work = leave + rng.randint(20, 45)
    leave_work = rng.randint(990, 1110)
    home = leave_work + rng.randint(20, 45)
    trips = [(leave, at_work), (leave_work, home)]
    wifi = [(0, leave)]
    if rng.random() < ERRAND_PROBABILITY:
        errand = home + rng.randint(45, 120)
        errand_end = errand + rng.randint(15, 40)
        trips.append((errand, errand_end))
        wifi += [(home, errand), (errand_end, MINUTES_PER_DAY)]
    else:
        wifi.append((home, MINUTES_PER_DAY))
    # Plugged since last night, unplugged a few minutes before leaving; plugged again after the last trip.
    plugged = [(0, leave - rng.randint(3, 10)), (trips[-1][1] + rng.randint(5, 20), MINUTES_PER_DAY)]
    return DaySchedule(trips=tuple(trips), plugged=tuple(plugged), wifi=tuple(wifi), soc_start=soc_start)


def synthetic_trace(vehicle_id: str, seed: int, days: int = 1) -> VehicleTrace:
    """``days`` plausible commuter days for ``vehicle_id``; the same ``seed`` gives the same days."""
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise InvalidInput(f"synthetic trace days must be an integer >= 1, got {days!r}")
    rng = random.Random(seed)
    soc = round(rng.uniform(0.5, 0.9), 3)
    schedule = []
    for _ in range(days):
        day = _day(rng, soc)
        schedule.append(day)
        soc = round(DayProfile.build(day, _DRAIN_PER_S, _CHARGE_PER_S).end_soc, 4)
    return VehicleTrace(vehicle_id=vehicle_id, days=tuple(schedule))
