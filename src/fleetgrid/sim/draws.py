"""Uniform random numbers for one block of vehicles, drawn in a fixed order from a seed.

The fleet is cut into fixed blocks of :data:`BLOCK` vehicles, each with its own generator seeded by
``(seed, block index)``. So a run's result depends only on the seed -- not on how blocks are grouped into chunks
or sharded across Ray workers -- and the slow reference can replay exactly the numbers the vectorised model used.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fleetgrid.sim.tables import Categorical

__all__ = [
    "BLOCK",
    "DayDraws",
    "VehicleDraws",
    "block_rng",
    "block_sizes",
    "draw_day",
    "draw_vehicles",
]

BLOCK = 65_536

# Column order of the per-vehicle draw matrix.
VEHICLE_COLUMNS = (
    "hardware",
    "home",
    "wifi",
    "opt_in",
    "battery",
    "charger",
    "soc0",
    "plugged0",
)


@dataclass(frozen=True, eq=False)
class VehicleDraws:
    """Per-vehicle uniforms in [0, 1); one column each, shape (n,)."""

    u: np.ndarray  # (n, len(VEHICLE_COLUMNS))

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.u[:, VEHICLE_COLUMNS.index(name)]
        except ValueError:
            raise AttributeError(name) from None


@dataclass(frozen=True, eq=False)
class DayDraws:
    """One day's uniforms for n vehicles. Trip uniforms are drawn only for the trips there are (the count is
    drawn first), flat in vehicle order: vehicle i's trips follow those of vehicles 0..i-1."""

    n_trips: np.ndarray  # (n,) uniform behind the day's trip count
    plug: np.ndarray  # (n,) evening plug-in decision, or the plug window's phase in constant-rates mode
    count: np.ndarray  # (n,) trips drawn, = pick(trips.cum, n_trips)
    hour: np.ndarray  # (trips,) start hour of each trip
    minute: np.ndarray  # (trips,) start minute within the hour
    duration: np.ndarray  # (trips,)


def block_rng(seed: int, block: int) -> np.random.Generator:
    return np.random.default_rng([seed, block])


def block_sizes(vehicles: int) -> Iterator[tuple[int, int]]:
    """(block index, vehicles in it) covering ``vehicles`` in order."""
    for index, first in enumerate(range(0, vehicles, BLOCK)):
        yield index, min(BLOCK, vehicles - first)


def draw_vehicles(rng: np.random.Generator, n: int) -> VehicleDraws:
    return VehicleDraws(rng.random((n, len(VEHICLE_COLUMNS))))


def draw_day(rng: np.random.Generator, n: int, trips: Categorical) -> DayDraws:
    """``trips``: the trip-count distribution (:attr:`ModelTables.trips`)."""
    u = rng.random((n, 2))
    count = trips(u[:, 0])
    per_trip = rng.random((3, int(count.sum())))  # so the cost follows the number of trips, not slots
    return DayDraws(
        n_trips=u[:, 0],
        plug=u[:, 1],
        count=count,
        hour=per_trip[0],
        minute=per_trip[1],
        duration=per_trip[2],
    )
