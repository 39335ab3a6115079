"""``fleetgrid simulate``: the fleet simulator on the command line.

:func:`simulate` is a plain function with typer-annotated parameters; the main CLI registers it with
``app.command("simulate")(simulate)`` and ``python -m fleetgrid.sim`` runs it alone. Invalid settings print one
line naming the problem and what is accepted, and exit with code 2.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from fleetgrid.errors import InvalidInput
from fleetgrid.sim.params import FleetConfig
from fleetgrid.sim.scenarios import (
    SCENARIOS,
    apply_overrides,
    hardware_mix,
    load_scenario,
    parse_assignments,
)

__all__ = ["build_config", "simulate"]


def build_config(scenario: str, hardware: str | None, assignments: list[str], constant_rates: bool) -> FleetConfig:
    """Scenario (named or file), then ``--hardware``, then ``--set`` overrides, then ``--constant-rates``."""
    config = load_scenario(scenario)
    if hardware:
        config = apply_overrides(config, {"hardware": {"mix": hardware_mix(hardware)}})
    if assignments:
        config = apply_overrides(config, parse_assignments(assignments))
    return replace(config, time_structure=False) if constant_rates else config


def _power(gw: float) -> str:
    """GW for a fleet, MW or kW for a small one, so a 1,000-car run does not read 0.000 GW."""
    for unit, scale in (("GW", 1.0), ("MW", 1e3), ("kW", 1e6)):
        if abs(gw) * scale >= 1 or unit == "kW":
            return f"{gw * scale:,.2f} {unit}"
    raise AssertionError("unreachable")


def _table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['vehicles']:,} vehicles x {summary['days']} days")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        (
            "nameplate",
            f"{_power(summary['nameplate_gw'])}  /  {summary['nameplate_pflops']:,.0f} PFLOP/s INT8",
        ),
        (
            "available (mean; lowest-highest minute)",
            (
                f"{_power(summary['available_gw_mean'])}; "
                f"{_power(summary['available_gw_min'])}-{_power(summary['available_gw_max'])}"
            ),
        ),
        (
            "available fraction of nameplate",
            f"{summary['available_fraction_mean']:.3f}",
        ),
        (
            "delivered (mean)",
            f"{_power(summary['delivered_gw_mean'])}  /  {summary['delivered_pflops_mean']:,.0f} PFLOP/s INT8",
        ),
        (
            "grid energy (compute + awake + losses)",
            (
                f"{summary['grid_mwh_per_day']:,.1f} MWh/day "
                f"({summary['compute_mwh_per_day']:,.1f} + {summary['awake_mwh_per_day']:,.1f} + "
                f"{summary['loss_mwh_per_day']:,.1f})"
            ),
        ),
        (
            "owner electricity vs payout",
            f"${summary['owner_cost_usd_month']:,.2f} vs ${summary['owner_payout_usd_month']:,.2f} a month",
        ),
        (
            "upload over Wi-Fi / cellular",
            f"{summary['wifi_upload_tb_per_day']:,.0f} / {summary['cellular_upload_tb_per_day']:,.0f} TB/day",
        ),
        (
            "data center for the delivered GW",
            f"${summary['datacenter_equivalent_usd'] / 1e9:,.2f} B",
        ),
    ]
    rows += [(f"share of fleet: {k}", f"{v:.3f}") for k, v in summary["state_fraction_mean"].items()]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


def _plots(config: FleetConfig, directory: Path, vehicles: int, days: int, seed: int) -> list[Path]:
    from fleetgrid.sim.plots import plot_availability, plot_tornado
    from fleetgrid.sim.runner import simulate_fleet
    from fleetgrid.sim.sensitivity import tornado
    from fleetgrid.sim.summary import summarise

    directory.mkdir(parents=True, exist_ok=True)
    sample = min(vehicles, 50_000)  # the shapes, not the totals, are what the charts show; scaled to the fleet
    profiles, nameplate = {}, 0.0
    for name, overrides in SCENARIOS.items():
        cfg = apply_overrides(replace(config, time_structure=True), overrides)
        summary = summarise(simulate_fleet(cfg, sample, min(days, 7), seed), cfg, represented=vehicles)
        profiles[name] = summary["available_gw_by_hour"]
        nameplate = summary["nameplate_gw"]
    base, swings = tornado(config, min(vehicles, 20_000), min(days, 7), seed, represented=vehicles)
    return [
        plot_availability(profiles, nameplate, directory / "availability_by_hour.png"),
        plot_tornado(base, swings, "delivered_gw_mean", directory / "tornado.png"),
    ]


def simulate(
    vehicles: Annotated[
        int | None,
        typer.Option(
            help="Cars in the fleet (default 100,000; with --pitch 100,000,000, the fleet the sample stands for)."
        ),
    ] = None,
    days: Annotated[
        int,
        typer.Option(help="Days to simulate; day 0 is a Monday unless driving.start_weekday."),
    ] = 7,
    scenario: Annotated[
        str,
        typer.Option(help="optimistic | central | pessimistic | path to a TOML file."),
    ] = "central",
    seed: Annotated[
        int,
        typer.Option(help="Seed; same seed, same result, however the fleet is split."),
    ] = 0,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a knob: section.key=value (repeat)."),
    ] = None,
    hardware: Annotated[
        str | None,
        typer.Option(help="hw3 | ai4 | ai5 | future_1kw | mix | hw3:0.4,ai4:0.6"),
    ] = None,
    constant_rates: Annotated[
        bool,
        typer.Option(
            "--constant-rates",
            help="No time-of-day structure: the back-of-envelope's constant fractions.",
        ),
    ] = False,
    pitch: Annotated[
        bool,
        typer.Option(
            "--pitch",
            help="100 M cars at 1 kW and at ~100 W against the pitch, across all three scenarios (--set applies; "
            "--scenario and --hardware do not).",
        ),
    ] = False,
    sample: Annotated[
        int,
        typer.Option(help="--pitch: cars actually simulated, scaled to --vehicles."),
    ] = 200_000,
    ray: Annotated[bool, typer.Option("--ray", help="Shard the fleet across Ray workers.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as one JSON object.")] = False,
    plots: Annotated[
        Path | None,
        typer.Option(help="Write availability and tornado PNGs into this folder."),
    ] = None,
    export_traces: Annotated[
        Path | None,
        typer.Option(help="Write per-vehicle daily schedules (JSON Lines) for the simulated vehicle bus, then stop."),
    ] = None,
) -> None:
    """Simulate a fleet of parked cars' AI computers: what is available, delivered, drawn from the grid and paid."""
    if vehicles is None:
        from fleetgrid.sim.pitch import PITCH_FLEET

        vehicles = PITCH_FLEET if pitch else 100_000
    try:
        _run(
            vehicles,
            days,
            scenario,
            seed,
            set_ or [],
            hardware,
            constant_rates,
            pitch,
            sample,
            ray,
            json_out,
            plots,
            export_traces,
        )
    except InvalidInput as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc


def _run(
    vehicles: int,
    days: int,
    scenario: str,
    seed: int,
    assignments: list[str],
    hardware: str | None,
    constant_rates: bool,
    pitch: bool,
    sample: int,
    ray: bool,
    json_out: bool,
    plots: Path | None,
    export_traces: Path | None,
) -> None:
    from fleetgrid.sim.runner import check_run, simulate_fleet
    from fleetgrid.sim.summary import summarise

    config = build_config(scenario, hardware, assignments, constant_rates)
    if pitch:
        _pitch(vehicles, sample, days, seed, ray, json_out, assignments)
        return
    if export_traces is not None:
        from fleetgrid.sim.traces import export_traces as export

        written = export(export_traces, config, vehicles, days, seed)
        message = {
            "exported_vehicles": written,
            "days": days,
            "path": str(export_traces),
        }
        typer.echo(
            json.dumps(message) if json_out else f"wrote {written:,} vehicle traces x {days} days to {export_traces}"
        )
        return
    check_run(vehicles, days, seed, ray=ray)
    summary = summarise(simulate_fleet(config, vehicles, days, seed, ray=ray), config)
    if plots is not None:
        summary["plots"] = [str(p) for p in _plots(config, plots, vehicles, days, seed)]
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        _table(summary)


def _pitch(
    vehicles: int,
    sample: int,
    days: int,
    seed: int,
    ray: bool,
    json_out: bool,
    assignments: list[str],
) -> None:
    from fleetgrid.sim.pitch import pitch_markdown, pitch_rows
    from fleetgrid.sim.runner import check_run

    if sample < 1:
        raise InvalidInput(f"sample = {sample!r}; accepted: an integer >= 1 (cars simulated for --pitch)")
    check_run(vehicles, days, seed, ray=True)
    check_run(vehicles if ray else min(sample, vehicles), days, seed, ray=ray)
    base = apply_overrides(FleetConfig(), parse_assignments(assignments)) if assignments else None
    rows = pitch_rows(vehicles, sample, days, seed, ray=ray, base=base)
    typer.echo(json.dumps({"pitch": rows}) if json_out else pitch_markdown(rows))
