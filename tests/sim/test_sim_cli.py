"""``fleetgrid simulate`` through a small typer app, as the main CLI registers it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from fleetgrid.sim import STATES, FleetConfig, export_traces, simulate_fleet
from fleetgrid.sim import runner as runner_module
from fleetgrid.sim.cli import simulate
from fleetgrid.sim.progress import FleetProgress
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
        (["--json", "--markdown"], ["--json", "--markdown", "one of them"]),
        (["--pitch", "--hardware", "ai4"], ["--pitch", "--hardware"]),
        (["--pitch", "--scenario", "optimistic"], ["--pitch", "--scenario"]),
        (["--export-traces", "x.jsonl", "--plots", "charts"], ["--export-traces", "--plots"]),
        (["--scenario", "."], ["scenario '.'", "optimistic"]),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(args: list[str], words: list[str], tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and "simulating" not in result.stderr  # refused before any run
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
    markdown = runner.invoke(app, ["simulate", "--pitch", "--sample", "2000", "--days", "1", "--markdown"]).stdout
    assert markdown.startswith("| computer per car | nameplate |") and "100,000,000 cars" in markdown
    assert markdown.splitlines()[1] == "|---|---|---|---|---|---|---|---|---|"


def test_pitch_in_a_160_column_terminal_is_a_table_that_fits() -> None:
    result = runner.invoke(app, ["simulate", "--pitch", "--sample", "500", "--days", "1"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 160
    assert "|---|" not in result.stdout and "1 kW (future chip, Musk's figure)" in result.stdout
    assert any(line.lstrip("│ ").startswith("nameplate") and "100 GW" in line for line in lines)


def test_progress_names_each_run_on_stderr() -> None:
    result = runner.invoke(app, ["simulate", "--pitch", "--sample", "500", "--days", "1"])
    announced = [line for line in result.stderr.splitlines() if line.startswith("simulating ")]
    assert [line.split(":")[0] for line in announced] == [f"simulating {i}/6" for i in range(1, 7)]
    assert "future_1kw, central scenario: 500 cars x 1 day" in announced[0]


def test_progress_bar_in_a_terminal_counts_every_vehicle_day() -> None:
    out = io.StringIO()
    with FleetProgress(1, 70_000 * 2, console=Console(file=out, force_terminal=True, width=100)) as progress:
        simulate_fleet(FleetConfig(), 70_000, 2, seed=0, progress=progress.run("two blocks x 2 days"))
    assert progress.done == progress.vehicle_days == 140_000
    assert "simulating" in out.getvalue() and "two blocks x 2 days" in out.getvalue()


def test_markdown_for_a_plain_run() -> None:
    result = runner.invoke(app, ["simulate", "--vehicles", "1000", "--days", "1", "--markdown"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "1,000 cars · HW3 48% + AI4 52% · central scenario · 1 day"
    assert lines[2:4] == ["| figure | value |", "|---|---|"]
    assert any(line.startswith("| uplink capacity, Wi-Fi / cellular") for line in lines)


def test_plots_are_written(tmp_path: Path) -> None:
    out = _json("--vehicles", "1500", "--days", "1", "--plots", str(tmp_path))
    for name in ("availability_by_hour.png", "tornado.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert out["plots"] == [str(tmp_path / "availability_by_hour.png"), str(tmp_path / "tornado.png")]


def test_plots_paths_are_printed_under_the_table(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "charts"  # made if missing
    result = runner.invoke(app, ["simulate", "--vehicles", "800", "--days", "1", "--plots", str(folder)])
    assert result.exit_code == 0, result.output
    wrote = [f"wrote {folder / 'availability_by_hour.png'}", f"wrote {folder / 'tornado.png'}"]
    assert result.stdout.splitlines()[-2:] == wrote
    markdown = runner.invoke(
        app, ["simulate", "--vehicles", "800", "--days", "1", "--plots", str(folder), "--markdown"]
    )
    assert "wrote" not in markdown.stdout and markdown.stderr.splitlines()[-2:] == wrote  # Markdown stays pasteable


def test_pitch_plots_are_written_and_printed(tmp_path: Path) -> None:
    args = ["simulate", "--pitch", "--sample", "400", "--days", "1", "--plots", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    names = [
        f"{chart}_{hardware}.png" for hardware in ("future_1kw", "ai4") for chart in ("availability_by_hour", "tornado")
    ]
    for name in names:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
        assert f"wrote {tmp_path / name}" in result.stdout.splitlines()
    # the plan the progress announced matches the runs made: 6 pitch runs + 2 x 19 tornado runs
    assert "simulating 44/44: " in result.stderr and "45/44" not in result.stderr
    rows = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert rows["plots"] == [str(tmp_path / name) for name in names] and len(rows["pitch"]) == 2


@pytest.mark.parametrize("mode", [[], ["--pitch", "--sample", "300"]])
def test_missing_matplotlib_is_refused_before_simulating(
    mode: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("simulated although --plots cannot be drawn")

    monkeypatch.setattr(runner_module, "simulate_blocks", must_not_run)
    folder = tmp_path / "charts"
    result = runner.invoke(app, ["simulate", *mode, "--vehicles", "500", "--days", "1", "--plots", str(folder)])
    assert result.exit_code == 2, result.output
    assert (
        result.stderr
        == "error: --plots needs matplotlib, which is not installed; accepted: pip install 'fleetgrid[plots]'\n"
    )
    assert result.stdout == "" and not folder.exists()


def test_missing_matplotlib_in_a_fresh_process(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None; sys.argv = ['fleetgrid'] + sys.argv[1:]; "
        "from fleetgrid.sim.__main__ import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "--pitch", "--days", "1", "--plots", str(tmp_path / "p")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'fleetgrid[plots]'" in done.stderr
    assert "Traceback" not in done.stderr and "simulating" not in done.stderr


def test_plots_into_a_file_is_bad_input(tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")
    result = runner.invoke(app, ["simulate", "--vehicles", "10", "--days", "1", "--plots", str(target)])
    assert result.exit_code == 2 and "cannot create the folder" in result.stderr and "simulating" not in result.stderr


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
