"""The vectorised model and the minute-stepped reference, same seed, must agree minute by minute."""

from __future__ import annotations

import numpy as np
import pytest

from fleetgrid.sim.params import FleetConfig
from fleetgrid.sim.reference import simulate_reference
from fleetgrid.sim.runner import simulate_fleet
from fleetgrid.sim.scenarios import apply_overrides
from fleetgrid.sim.tally import STATES

# Friday, Saturday, Sunday: both start-hour tables and the weekend carry-over are exercised.
WEEKEND = {"driving": {"start_weekday": 4}}
# Small batteries, slow chargers and a high floor: low-SOC sessions and away top-ups happen often.
STRESSED = {
    "driving": {"start_weekday": 4, "trips_per_day": 4.0},
    "charging": {
        "soc_floor": 0.55,
        "plug_below_soc": 0.3,
        "charger_kw": [1.4],
        "charger_share": [1.0],
        "battery_kwh": [20.0],
        "battery_share": [1.0],
        "away_below_soc": 0.3,
        "away_to_soc": 0.45,
    },
}


def _compare(config: FleetConfig, vehicles: int, days: int, seed: int) -> np.ndarray:
    fast = simulate_fleet(config, vehicles, days, seed)
    slow = simulate_reference(config, vehicles, days, seed)
    for i, state in enumerate(STATES):
        diff = np.flatnonzero(fast.states[i] != slow.states[i])
        assert diff.size == 0, (
            f"{state} differs first at minute {diff[:1]}: {fast.states[i][diff[:3]]} vs {slow.states[i][diff[:3]]}"
        )
    np.testing.assert_allclose(fast.available_w, slow.available_w, rtol=1e-12, atol=1e-6)
    np.testing.assert_allclose(fast.available_tops, slow.available_tops, rtol=1e-12, atol=1e-6)
    assert fast.sums == slow.sums
    assert fast.states.sum(axis=0).tolist() == [vehicles] * (days * 1440)  # every car in exactly one state
    return fast.states


def test_lockstep_central_1000_vehicles() -> None:
    states = _compare(apply_overrides(FleetConfig(), WEEKEND), 1000, 3, seed=11)
    for i, state in enumerate(STATES):
        if state != "low_soc":
            assert states[i].sum() > 0, f"no {state} minutes: the comparison would prove nothing about it"


def test_lockstep_stressed_state_of_charge() -> None:
    states = _compare(apply_overrides(FleetConfig(), STRESSED), 300, 3, seed=5)
    assert states[STATES.index("low_soc")].sum() > 1000  # the floor and charging arithmetic are exercised


@pytest.mark.parametrize("plugged_share", [0.5, 1.0])
def test_lockstep_constant_rates(plugged_share: float) -> None:
    config = apply_overrides(
        FleetConfig(),
        {"time_structure": False, "charging": {"plugged_share": plugged_share}},
    )
    _compare(config, 300, 2, seed=3)
