"""Pure pieces of the model against hand-computed arrays."""

from __future__ import annotations

import numpy as np
import pytest

from fleetgrid.sim.draws import BLOCK, block_rng, draw_day
from fleetgrid.sim.fleet import Fleet, charge, draw_trips
from fleetgrid.sim.params import FleetConfig
from fleetgrid.sim.runner import simulate_blocks, simulate_fleet
from fleetgrid.sim.summary import thermal_derate
from fleetgrid.sim.tables import Categorical, compile_tables, pick
from fleetgrid.sim.tally import coverage


def test_coverage_counts_and_weights() -> None:
    starts, ends = np.array([0, 10, 10, 1439]), np.array([20, 15, 1440, 1440])
    got = coverage(starts, ends)
    assert got[:10].tolist() == [1] * 10
    assert got[10:15].tolist() == [3] * 5
    assert got[15:20].tolist() == [2] * 5
    assert got[20:1439].tolist() == [1] * 1419
    assert got[1439] == 2
    weighted = coverage(np.array([5]), np.array([7]), np.array([2.5]))
    assert weighted[4:8].tolist() == [0.0, 2.5, 2.5, 0.0]


def _fleet(**arrays: np.ndarray) -> Fleet:
    base = {name: np.zeros(len(arrays["floor_wh"]), dtype=np.int64) for name in Fleet.__dataclass_fields__}
    return Fleet(**{**base, **arrays})


def test_charge_floor_and_limit() -> None:
    fleet = _fleet(
        floor_wh=np.array([1000, 1000, 1000, 1000]),
        limit_wh=np.array([5000, 5000, 5000, 5000]),
        rate_wh=np.array([100, 100, 100, 100]),
    )
    soc = np.array([850, 850, 6000, 850])
    minutes = np.array([60, 1, 60, 60])
    on = np.array([True, True, True, False])
    low, after = charge(soc, minutes, on, fleet)
    # 150 Wh short at 100 Wh/min: 2 minutes below the floor (ceil), cut to the session's 1 minute.
    assert low.tolist() == [2, 1, 0, 0]
    # Charged to the limit; 1 minute adds 100; above the limit stays; unplugged stays.
    assert after.tolist() == [5000, 950, 6000, 850]


def test_trips_are_sorted_disjoint_and_within_the_day() -> None:
    config = FleetConfig()
    tables = compile_tables(config)
    day = draw_day(block_rng(0, 0), 20_000, tables.trips)
    start, end, valid = draw_trips(day, tables, weekend=False)
    assert (valid.sum(axis=1) <= day.count).all()
    s, e = np.where(valid, start, 0), np.where(valid, end, 0)
    assert ((e > s) | ~valid).all() and (e <= 1440).all()
    assert ((s[:, 1:] >= e[:, :-1]) | ~valid[:, 1:]).all()  # each trip starts after the previous one ends
    assert (valid[:, 1:] <= valid[:, :-1]).all()  # used slots come first


def test_categorical_matches_binary_search_even_on_edges() -> None:
    shares = [0.0, 0.1, 0.0, 0.3, 1e-6, 0.6 - 1e-6, 0.0]
    cat = Categorical(shares)
    u = np.concatenate(
        [
            np.random.default_rng(0).random(200_000),
            cat.cum[:-1],
            np.nextafter(cat.cum[1:-1], 0),
        ]
    )
    u = u[(u >= 0) & (u < 1)]
    assert (cat(u) == pick(cat.cum, u)).all()
    assert set(np.unique(cat(u)).tolist()) <= {
        1,
        3,
        4,
        5,
    }  # zero-share bins are never drawn


def test_thermal_derate_averages_to_the_knob() -> None:
    config = FleetConfig()
    derate = thermal_derate(config, np.arange(1440))
    assert derate.mean() == pytest.approx(config.operation.thermal_derate)
    assert derate.argmin() == 15 * 60  # worst at 3 pm


def test_result_does_not_depend_on_how_blocks_are_grouped() -> None:
    config, vehicles = FleetConfig(), BLOCK + 700
    whole = simulate_fleet(config, vehicles, 1, seed=9)
    parts = simulate_blocks(config, vehicles, 1, 9, [1]) + simulate_blocks(config, vehicles, 1, 9, [0])
    assert (whole.states == parts.states).all() and whole.sums == parts.sums
    other_seed = simulate_fleet(config, vehicles, 1, seed=10)
    assert not (whole.states == other_seed.states).all()
