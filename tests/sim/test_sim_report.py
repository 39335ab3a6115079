"""The figures as people read them: the run's summary table and the pitch table, in a terminal and as Markdown."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from fleetgrid.sim import FleetConfig, simulate_fleet, summarise
from fleetgrid.sim.pitch import PITCH_COLUMNS, pitch_markdown, pitch_rows, pitch_table
from fleetgrid.sim.report import RunLabel, describe_hardware, summary_markdown, summary_rows, summary_table
from fleetgrid.sim.scenarios import apply_overrides


def _render(renderable: object, width: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False).print(renderable)
    return out.getvalue().splitlines()


@pytest.fixture(scope="module")
def pitch() -> list[dict[str, object]]:
    return pitch_rows(sample=500, days=1)


@pytest.fixture(scope="module")
def summary() -> dict[str, object]:
    config = FleetConfig()
    return summarise(simulate_fleet(config, 2_000, 1, seed=0), config)


def test_pitch_table_fits_a_160_column_terminal(pitch: list[dict[str, object]]) -> None:
    lines = _render(pitch_table(pitch), 160)
    assert max(len(line) for line in lines) <= 160
    text = "\n".join(lines)
    assert "1 kW (future chip, Musk's figure)" in text and "~100 W (AI4, today)" in text
    assert "100 GW" in text and "10 GW" in text  # nameplate of 100 M cars at 1 kW and at 100 W
    assert "pessimistic to optimistic" in text and "100,000,000 cars" in text
    # every figure on one line at 160 columns: one row per figure, nothing wrapped
    assert sum(short in text for _, short in PITCH_COLUMNS[1:]) == len(PITCH_COLUMNS) - 1
    assert max(len(line) for line in _render(pitch_table(pitch), 80)) <= 80  # and it still fits 80


def test_pitch_markdown_keeps_the_readme_layout(pitch: list[dict[str, object]]) -> None:
    lines = pitch_markdown(pitch).splitlines()
    assert lines[0].startswith("| computer per car | nameplate | available, central (pessimistic-optimistic) |")
    assert lines[1] == "|---|---|---|---|---|---|---|---|---|"
    assert lines[2].startswith("| 1 kW (future chip, Musk's figure) | 100 GW | ") and " EOP/s (~" in lines[2]
    assert lines[3].startswith("| ~100 W (AI4, today) | 10 GW | ")
    assert lines[5].startswith("100,000,000 cars; 500 simulated for 1 day and scaled.")


def test_small_pitch_fleet_reads_in_kw_not_zero_gw() -> None:
    rows = pitch_rows(fleet=1_000, sample=500, days=1)
    line = pitch_markdown(rows).splitlines()[2]
    assert "| 1,000 kW |" in line and "0 GW" not in line  # 1,000 cars x 1 kW


def test_summary_labels_capacity_as_capacity(summary: dict[str, object]) -> None:
    rows = dict(summary_rows(summary))
    capacity = [name for name in rows if "Wi-Fi / cellular" in name]
    assert capacity == ["uplink capacity, Wi-Fi / cellular (opted-in cars)"]
    assert rows[capacity[0]].endswith("TB a day")  # 2,000 cars: ~170 TB a day over Wi-Fi
    assert not any(name.startswith("upload") for name in rows)


def test_summary_power_is_in_the_unit_of_the_fleet(summary: dict[str, object]) -> None:
    rows = dict(summary_rows(summary))
    assert rows["nameplate (all computers at full power)"].startswith("173 kW")  # 960 x 72 W + 1,040 x 100 W ~ 173 kW
    assert "kW" in rows["available, mean (lowest-highest minute)"]
    assert "GW" not in "".join(rows.values())


def test_summary_table_and_markdown(summary: dict[str, object]) -> None:
    label = RunLabel(vehicles=2_000, days=1, scenario="central scenario", hardware=describe_hardware(FleetConfig()))
    assert str(label) == "2,000 cars · HW3 48% + AI4 52% · central scenario · 1 day"
    lines = _render(summary_table(summary, label), 160)
    assert max(len(line) for line in lines) <= 160 and str(label) in lines[0]
    markdown = summary_markdown(summary, label).splitlines()
    assert markdown[2:4] == ["| figure | value |", "|---|---|"]
    assert all(line.startswith("| ") and line.endswith(" |") for line in markdown[4:])


def test_describe_hardware() -> None:
    ai4 = apply_overrides(FleetConfig(), {"hardware": {"mix": {"ai4": 1.0}}})
    assert describe_hardware(ai4) == "AI4 (100 W)"
    future = apply_overrides(FleetConfig(), {"hardware": {"mix": {"future_1kw": 1.0}}})
    assert describe_hardware(future) == "future chip (1 kW)"
    sampled = RunLabel(vehicles=100_000_000, days=7, scenario="3 scenarios", hardware="AI4 (100 W)", simulated=5_000)
    assert str(sampled).startswith("100,000,000 cars (5,000 simulated, scaled) · AI4 (100 W)")
