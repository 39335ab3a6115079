"""``fleetgrid simulate`` through a small typer app, as the main CLI registers it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fleetgrid.sim import STATES, FleetConfig, export_traces, simulate_fleet
from fleetgrid.sim.cli import simulate
from fleetgrid.vehicle.schedule import load_traces

app = typer.Typer()
app.command("simulate")(simulate)
app.command("noop")(lambda: None)  # two commands, so "simulate" is addressed by name as in the real CLI
runner = CliRunner()

REQUIRED = [
    "nameplate_gw",
    "available_fraction_mean",
    "available_gw_mean",
    "delivered_gw_mean",
    "available_gw_min",
    "available_gw_max",
    "grid_mwh_per_day",
    "owner_cost_usd_month",
    "vehicles",
    "days",
]


def _json(*args: str) -> dict:
    result = runner.invoke(app, ["simulate", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_json_has_the_required_keys() -> None:
    out = _json("--vehicles", "5000", "--days", "2", "--seed", "3")
    assert set(REQUIRED) <= set(out)
    assert out["vehicles"] == 5000 and out["days"] == 2
    assert out["available_gw_min"] <= out["available_gw_mean"] <= out["available_gw_max"] < out["nameplate_gw"]
    assert out["delivered_gw_mean"] < out["available_gw_mean"]
    assert sum(out["state_fraction_mean"].values()) == pytest.approx(1.0)


def test_table_output_and_same_seed_same_answer() -> None:
    result = runner.invoke(app, ["simulate", "--vehicles", "3000", "--days", "1"])
    assert result.exit_code == 0 and "available" in result.stdout
    a = _json(
        "--vehicles",
        "3000",
        "--days",
        "1",
        "--seed",
        "1",
        "--scenario",
        "optimistic",
        "--hardware",
        "ai4",
    )
    b = _json(
        "--vehicles",
        "3000",
        "--days",
        "1",
        "--seed",
        "1",
        "--scenario",
        "optimistic",
        "--hardware",
        "ai4",
    )
    assert a == b and a["nameplate_gw"] == pytest.approx(3000 * 100 / 1e9)


def test_constant_rates_flag() -> None:
    out = _json("--vehicles", "200000", "--days", "1", "--constant-rates")
    assert out["time_structure"] is False
    assert out["available_fraction_mean"] == pytest.approx(0.144, rel=0.02)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--vehicles", "-3"], ["vehicles = -3", "from 1"]),
        (["--vehicles", "0"], ["vehicles = 0"]),
        (["--vehicles", "5000000000"], ["vehicles", "2,000,000,000"]),
        (["--days", "100000"], ["days = 100000", "3653"]),
        (["--set", "owner.opt_in=1.5"], ["owner.opt_in", "[0, 1]"]),
        (
            ["--set", "charging.home_charging=-0.1"],
            ["charging.home_charging", "[0, 1]"],
        ),
        (["--set", "owner.opt_inn=0.2"], ["owner.opt_inn", "opt_in"]),
        (["--set", "nonsense"], ["KEY=VALUE"]),
        (["--scenario", "rosy"], ["rosy", "optimistic", "central", "pessimistic"]),
        (["--hardware", "hw9"], ["hw9", "ai4"]),
        (["--vehicles", "100000000", "--days", "7"], ["--ray", "vehicle-days"]),
        (["--pitch", "--sample", "0"], ["sample", ">= 1"]),
        (
            ["--export-traces", "x.jsonl", "--vehicles", "2000000"],
            ["--export-traces", "1,000,000"],
        ),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(args: list[str], words: list[str], tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    for word in words:
        assert word in result.stderr


def test_not_a_number_is_a_usage_error() -> None:
    result = runner.invoke(app, ["simulate", "--vehicles", "many"])
    assert result.exit_code == 2 and "Usage" in result.output  # typer's own check, before ours


def test_export_traces_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    result = runner.invoke(
        app,
        ["simulate", "--export-traces", str(path), "--vehicles", "300", "--days", "3"],
    )
    assert result.exit_code == 0, result.output
    traces = load_traces(path)
    assert len(traces) == 300 and all(len(t.days) == 3 for t in traces)
    assert len({t.vehicle_id for t in traces}) == 300
    days = [d for t in traces for d in t.days]
    assert sum(len(d.trips) for d in days) / len(days) == pytest.approx(2.43, rel=0.1)
    assert any(d.plugged for d in days) and any(d.wifi for d in days)
    for d in days:  # replayable: never plugged in or on home Wi-Fi while driving
        for minute in (0, 420, 720, 1080, 1439):
            assert not (d.driving(minute) and (d.plugged_in(minute) or d.on_wifi(minute)))
            assert not (d.plugged_in(minute) and any(s <= minute < e for s, e in d.trips))


def test_exported_traces_are_the_simulated_fleet(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    export_traces(path, FleetConfig(), 400, 2, seed=8)
    traces = load_traces(path)
    tally = simulate_fleet(FleetConfig(), 400, 2, seed=8)
    for day in (0, 1):
        for minute in range(0, 1440, 7):
            driving = sum(t.days[day].driving(minute) for t in traces)
            assert driving == tally.states[STATES.index("driving"), day * 1440 + minute]


def test_unwritable_trace_path_is_bad_input(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "traces.jsonl"
    result = runner.invoke(app, ["simulate", "--export-traces", str(target), "--vehicles", "10", "--days", "1"])
    assert result.exit_code == 2 and "cannot write traces" in result.stderr


def test_pitch_table() -> None:
    result = runner.invoke(app, ["simulate", "--pitch", "--sample", "3000", "--days", "1", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["pitch"]
    kw1, ai4 = rows
    assert kw1["vehicles"] == 100_000_000 and kw1["nameplate_gw"] == pytest.approx(100.0)
    assert ai4["nameplate_gw"] == pytest.approx(10.0)
    for row in rows:
        assert (
            row["delivered_gw_mean_pessimistic"]
            < row["delivered_gw_mean_central"]
            < row["delivered_gw_mean_optimistic"]
            < row["nameplate_gw"]
        )
    # fleet-params: with ~0.1 kW computers the 250 W awake overhead costs more than the compute delivers.
    assert ai4["awake_gw_central"] > ai4["delivered_gw_mean_central"]
    table = runner.invoke(app, ["simulate", "--pitch", "--sample", "2000", "--days", "1"]).stdout
    assert table.startswith("| computer per car") and "100,000,000 cars" in table


def test_plots_are_written(tmp_path: Path) -> None:
    out = _json("--vehicles", "1500", "--days", "1", "--plots", str(tmp_path))
    for name in ("availability_by_hour.png", "tornado.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert len(out["plots"]) == 2


def test_python_dash_m() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetgrid.sim",
            "--vehicles",
            "500",
            "--days",
            "1",
            "--json",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["vehicles"] == 500
