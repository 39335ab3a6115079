"""The simulator reproduces the back-of-envelope in constant-rates mode and the sourced driving figures."""

from __future__ import annotations

import pytest

from fleetgrid.sim.params import FleetConfig
from fleetgrid.sim.runner import simulate_fleet
from fleetgrid.sim.scenarios import apply_overrides, load_scenario
from fleetgrid.sim.summary import summarise


def test_constant_rates_reproduce_back_of_envelope() -> None:
    # fleet-params.md: 0.8 home x 0.5 plugged x 0.8 Wi-Fi x 0.5 opt-in x 0.9 thermal = 0.144; x 0.6 = 0.0864.
    config = apply_overrides(FleetConfig(), {"time_structure": False, "hardware": {"mix": {"future_1kw": 1}}})
    s = summarise(simulate_fleet(config, 1_000_000, 1, seed=0), config, represented=100_000_000)
    assert s["available_fraction_mean"] == pytest.approx(0.144, rel=0.01)
    assert s["delivered_fraction_mean"] == pytest.approx(0.0864, rel=0.01)
    assert s["available_gw_mean"] == pytest.approx(14.4, rel=0.01)  # "~14 GW available"
    assert s["delivered_gw_mean"] == pytest.approx(8.64, rel=0.01)  # "~9 GW delivered"
    assert s["state_fraction_mean"]["driving"] == 0.0
    # No time-of-day structure: every minute sees about the same share.
    assert s["available_gw_max"] / s["available_gw_min"] < 1.05


def test_constant_rates_follow_every_knob() -> None:
    knobs = {
        "charging": {"home_charging": 0.7, "plugged_share": 0.3},
        "connectivity": {"wifi_reach": 0.6},
        "owner": {"opt_in": 0.2},
        "operation": {"thermal_derate": 0.85},
        "time_structure": False,
    }
    config = apply_overrides(FleetConfig(), knobs)
    s = summarise(simulate_fleet(config, 1_000_000, 1, seed=1), config)
    assert s["available_fraction_mean"] == pytest.approx(0.7 * 0.3 * 0.6 * 0.2 * 0.85, rel=0.03)


@pytest.fixture(scope="module")
def central() -> dict:
    config = load_scenario("central")
    return summarise(simulate_fleet(config, 100_000, 7, seed=2), config)


def test_driving_matches_aaa(central: dict) -> None:
    assert central["trips_per_day"] == pytest.approx(2.43, rel=0.02)  # AAA 2023
    assert central["driving_minutes_per_day"] == pytest.approx(60.7, rel=0.05)  # AAA 2023
    assert central["state_fraction_mean"]["driving"] == pytest.approx(1 - 0.958, abs=0.005)  # parked 95.8%


def test_time_structure_has_a_day_shape(central: dict) -> None:
    assert central["plugged_share_home"] == pytest.approx(0.5, abs=0.03)  # fleet-params est 0.5
    by_hour = central["available_gw_by_hour"]
    assert min(by_hour[1:5]) > 1.5 * max(by_hour[11:16])  # plugged in at night, driven and away by day
    assert central["available_gw_min"] < central["available_gw_mean"] < central["available_gw_max"]


def test_scenarios_are_ordered() -> None:
    results = {}
    for name in ("pessimistic", "central", "optimistic"):
        config = load_scenario(name)
        results[name] = summarise(simulate_fleet(config, 30_000, 2, seed=4), config)["delivered_gw_mean"]
    assert results["pessimistic"] < results["central"] < results["optimistic"]
