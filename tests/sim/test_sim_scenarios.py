"""Scenario files and overrides: every knob reachable, every mistake named."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetgrid.errors import InvalidInput
from fleetgrid.sim.params import FleetConfig
from fleetgrid.sim.scenarios import (
    SCENARIOS,
    apply_overrides,
    hardware_mix,
    load_scenario,
    parse_assignments,
)


def test_named_scenarios_apply_their_ranges() -> None:
    assert load_scenario("central") == FleetConfig()
    assert load_scenario("optimistic").owner.opt_in == 0.8
    assert load_scenario("pessimistic").connectivity.wifi_reach == 0.6
    assert set(SCENARIOS) == {"central", "optimistic", "pessimistic"}


def test_toml_file_with_base_and_nested_sections(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        'base = "pessimistic"\ntime_structure = false\n[owner]\nopt_in = 0.35\n'
        "[hardware]\nmix = { ai4 = 1 }\n[hardware.ai4]\nboard_w = 120\n"
        "[driving]\nduration_share = [1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
    )
    config = load_scenario(path)
    assert config.owner.opt_in == 0.35
    assert config.charging.home_charging == 0.7  # from the pessimistic base
    assert config.hardware.mix == {"ai4": 1.0} and config.hardware.ai4.board_w == 120.0
    assert config.time_structure is False
    assert config.driving.duration_share == (1.0,) * 9


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"owner": {"opt_inn": 0.3}}, ["owner.opt_inn", "opt_in", "payout_usd_month"]),
        ({"ownr": {}}, ["'ownr'", "hardware", "driving", "charging"]),
        ({"owner": {"opt_in": 1.5}}, ["owner.opt_in", "[0, 1]"]),
        ({"owner": {"opt_in": "lots"}}, ["owner.opt_in", "a number"]),
        ({"owner": 0.5}, ["owner", "section"]),
        ({"driving": {"max_trips": 2.5}}, ["driving.max_trips", "int"]),
        (
            {"driving": {"weekday_start_share": [1, 2]}},
            ["driving.weekday_start_share", "24"],
        ),
        ({"hardware": {"mix": {"hw9": 1}}}, ["hw9", "future_1kw"]),
        ({"hardware": {"ai4": {"board_w": 0}}}, ["hardware.ai4.board_w", "> 0"]),
        ({"time_structure": "no"}, ["time_structure", "true or false"]),
        (
            {"operation": {"thermal_derate": 0.99, "thermal_swing": 0.05}},
            ["thermal_swing", "<= 1"],
        ),
    ],
)
def test_bad_overrides_name_the_key_and_what_is_accepted(overrides: dict, words: list[str]) -> None:
    with pytest.raises(InvalidInput) as info:
        apply_overrides(FleetConfig(), overrides)
    for word in words:
        assert word in info.value.message


def test_assignments_parse_toml_literals() -> None:
    got = parse_assignments(["owner.opt_in=0.3", "hardware.mix={ai4=1}", "time_structure=false"])
    assert got == {
        "owner": {"opt_in": 0.3},
        "hardware": {"mix": {"ai4": 1}},
        "time_structure": False,
    }
    with pytest.raises(InvalidInput, match="KEY=VALUE"):
        parse_assignments(["owner.opt_in"])


def test_hardware_specs() -> None:
    assert hardware_mix("ai4") == {"ai4": 1.0}
    assert hardware_mix("hw3:0.25,ai4:0.75") == {"hw3": 0.25, "ai4": 0.75}
    with pytest.raises(InvalidInput, match="NAME:SHARE"):
        hardware_mix("ai4:lots")


def test_bad_scenario_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[owner\n")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        load_scenario(bad)
    with pytest.raises(InvalidInput, match="optimistic"):
        load_scenario("rosy")
