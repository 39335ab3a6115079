"""``fleetgrid simulate``: the fleet simulator on the command line.

:func:`simulate` is a plain function with typer-annotated parameters; the main CLI registers it with
``app.command("simulate")(simulate)`` and ``python -m fleetgrid.sim`` runs it alone. Invalid settings print one
line naming the problem and what is accepted, and exit with code 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from fleetgrid.errors import InvalidInput
from fleetgrid.sim.params import FleetConfig
from fleetgrid.sim.scenarios import (
    SCENARIOS,
    apply_overrides,
    hardware_mix,
    load_scenario,
    parse_assignments,
)

if TYPE_CHECKING:
    from fleetgrid.sim.progress import FleetProgress

__all__ = ["build_config", "simulate"]

# The charts show shapes and ranges, not totals, so they simulate a sample scaled to the fleet, for at most a week.
AVAILABILITY_SAMPLE = 50_000
TORNADO_SAMPLE = 20_000
PLOT_DAYS = 7


def build_config(scenario: str, hardware: str | None, assignments: list[str], constant_rates: bool) -> FleetConfig:
    """Scenario (named or file), then ``--hardware``, then ``--set`` overrides, then ``--constant-rates``."""
    config = load_scenario(scenario)
    if hardware:
        config = apply_overrides(config, {"hardware": {"mix": hardware_mix(hardware)}})
    if assignments:
        config = apply_overrides(config, parse_assignments(assignments))
    return replace(config, time_structure=False) if constant_rates else config


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
            help="100 M cars at 1 kW and at ~100 W against the pitch, across all three scenarios: a table in the "
            "terminal, --markdown for the README's (--set applies; --scenario, --hardware, --constant-rates do not).",
        ),
    ] = False,
    sample: Annotated[
        int,
        typer.Option(help="--pitch: cars actually simulated, scaled to --vehicles."),
    ] = 200_000,
    ray: Annotated[bool, typer.Option("--ray", help="Shard the fleet across Ray workers.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as one JSON object.")] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the figures as a Markdown table (the README's pitch table).")
    ] = False,
    plots: Annotated[
        Path | None,
        typer.Option(
            help="Also write charts into this folder (created if missing): compute available by hour of day per "
            "scenario, and the tornado of which knob matters most; with --pitch, both for each computer class. "
            "Needs matplotlib: pip install 'fleetgrid\\[plots]'."
        ),
    ] = None,
    export_traces: Annotated[
        Path | None,
        typer.Option(help="Write per-vehicle daily schedules (JSON Lines) for the simulated vehicle bus, then stop."),
    ] = None,
) -> None:
    """Simulate a fleet of parked cars' AI computers: what is available, delivered, drawn from the grid and paid."""
    request = Request(
        vehicles=vehicles,
        days=days,
        scenario=scenario,
        seed=seed,
        assignments=set_ or [],
        hardware=hardware,
        constant_rates=constant_rates,
        pitch=pitch,
        sample=sample,
        ray=ray,
        json_out=json_out,
        markdown=markdown,
        plots=plots,
        export_traces=export_traces,
    )
    try:
        _run(request)
    except InvalidInput as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


@dataclass(frozen=True, kw_only=True)
class Request:
    """The command's options, as typed on the command line (``vehicles`` None: the default for the mode)."""

    vehicles: int | None
    days: int
    scenario: str
    seed: int
    assignments: list[str]
    hardware: str | None
    constant_rates: bool
    pitch: bool
    sample: int
    ray: bool
    json_out: bool
    markdown: bool
    plots: Path | None
    export_traces: Path | None

    @property
    def fleet(self) -> int:
        from fleetgrid.sim.pitch import PITCH_FLEET

        if self.vehicles is not None:
            return self.vehicles
        return PITCH_FLEET if self.pitch else 100_000

    @property
    def plot_days(self) -> int:
        return min(self.days, PLOT_DAYS)


def _run(req: Request) -> None:
    """Check everything that can be checked, then simulate with progress on stderr, then print."""
    from fleetgrid.sim.runner import check_run

    _check_combination(req)
    config = build_config(req.scenario, req.hardware, req.assignments, req.constant_rates)
    if req.export_traces is not None:
        _export(req, config, req.export_traces)
        return
    if req.pitch:
        if req.sample < 1:
            raise InvalidInput(f"sample = {req.sample!r}; accepted: an integer >= 1 (cars simulated for --pitch)")
        check_run(req.fleet, req.days, req.seed, ray=True)
        check_run(req.fleet if req.ray else min(req.sample, req.fleet), req.days, req.seed, ray=req.ray)
    else:
        check_run(req.fleet, req.days, req.seed, ray=req.ray)
    if req.plots is not None:
        _prepare_plots(req.plots)
    if req.pitch:
        _pitch(req)
    else:
        _single(req, config)


def _check_combination(req: Request) -> None:
    if req.json_out and req.markdown:
        raise InvalidInput("--json and --markdown both given; accepted: one of them (or neither, for a table)")
    if req.pitch and (req.scenario != "central" or req.hardware is not None or req.constant_rates):
        raise InvalidInput(
            "--pitch compares its own computer classes in all three scenarios; accepted: --pitch without "
            "--scenario, --hardware and --constant-rates (--set still applies)"
        )
    if req.export_traces is not None and (req.pitch or req.plots is not None):
        raise InvalidInput(
            "--export-traces writes traces and stops; accepted: it without --pitch and --plots (run those separately)"
        )


def _prepare_plots(directory: Path) -> None:
    """Refuse ``--plots`` before anything is simulated: matplotlib missing, or a folder that cannot be made."""
    from fleetgrid.sim.plots import require_matplotlib

    require_matplotlib()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(
            f"--plots {str(directory)!r}: cannot create the folder ({exc.strerror or exc}); accepted: a folder "
            "that exists or can be created"
        ) from exc


def _export(req: Request, config: FleetConfig, path: Path) -> None:
    from fleetgrid.sim.traces import export_traces

    written = export_traces(path, config, req.fleet, req.days, req.seed)
    message = {"exported_vehicles": written, "days": req.days, "path": str(path)}
    typer.echo(json.dumps(message) if req.json_out else f"wrote {written:,} vehicle traces x {req.days} days to {path}")


def _scenario_words(req: Request, scenario: str | None = None) -> str:
    """The scenario as a title says it: "central scenario", "my-fleet.toml scenario, 2 --set overrides"."""
    scenario = scenario or req.scenario
    name = scenario if scenario in SCENARIOS else Path(scenario).name
    words = f"{name} scenario"
    if req.assignments:
        n = len(req.assignments)
        words += f", {n} --set override" + ("s" if n > 1 else "")
    return words + (", constant rates" if req.constant_rates and not req.pitch else "")


def _single(req: Request, config: FleetConfig) -> None:
    """One run of the fleet as configured, plus the charts' runs with --plots."""
    from fleetgrid.sim.progress import FleetProgress
    from fleetgrid.sim.report import RunLabel, describe_hardware, summary_markdown, summary_table
    from fleetgrid.sim.runner import simulate_fleet
    from fleetgrid.sim.sensitivity import TORNADO_RUNS
    from fleetgrid.sim.summary import summarise

    vehicles, days = req.fleet, req.days
    label = RunLabel(vehicles=vehicles, days=days, scenario=_scenario_words(req), hardware=describe_hardware(config))
    plan = [vehicles * days]
    if req.plots is not None:
        plan += [min(vehicles, AVAILABILITY_SAMPLE) * req.plot_days] * len(_availability_configs(req))
        plan += [min(vehicles, TORNADO_SAMPLE) * req.plot_days] * TORNADO_RUNS
    with FleetProgress(len(plan), sum(plan)) as progress:
        run = progress.run(f"{label}")
        summary = summarise(simulate_fleet(config, vehicles, days, req.seed, ray=req.ray, progress=run), config)
        written = [] if req.plots is None else _run_plots(req, config, progress, req.plots)
    if written:
        summary["plots"] = [str(p) for p in written]
    if req.json_out:
        typer.echo(json.dumps(summary))
    elif req.markdown:
        typer.echo(summary_markdown(summary, label))
    else:
        Console().print(summary_table(summary, label))
    _print_written(req, written)


def _print_written(req: Request, written: list[Path]) -> None:
    """Paths go with the result: in the JSON object; under the table; on stderr beside Markdown, which stays
    ready to paste."""
    if req.json_out:
        return
    for path in written:
        typer.echo(f"wrote {path}", err=req.markdown)


def _availability_configs(req: Request) -> dict[str, FleetConfig]:
    """The availability chart's lines: the three named scenarios with this run's --hardware and --set, and the
    scenario file too when --scenario names one. Always time-structured: the chart is the day's shape."""
    names = list(SCENARIOS) + ([] if req.scenario in SCENARIOS else [req.scenario])
    return {
        (name if name in SCENARIOS else Path(name).name): build_config(name, req.hardware, req.assignments, False)
        for name in names
    }


def _run_plots(req: Request, config: FleetConfig, progress: FleetProgress, directory: Path) -> list[Path]:
    """The two charts of a plain run, on samples scaled to the fleet: the charts show shapes and ranges."""
    from fleetgrid.sim.plots import availability_figure, save, tornado_figure
    from fleetgrid.sim.report import RunLabel, describe_hardware
    from fleetgrid.sim.runner import simulate_fleet
    from fleetgrid.sim.sensitivity import tornado
    from fleetgrid.sim.summary import summarise
    from fleetgrid.sim.units import format_days

    vehicles, days, hardware = req.fleet, req.plot_days, describe_hardware(config)
    sample, profiles, nameplate = min(vehicles, AVAILABILITY_SAMPLE), {}, 0.0
    for name, cfg in _availability_configs(req).items():
        run = progress.run(f"availability chart, {name} scenario: {sample:,} cars x {format_days(days)}")
        tally = simulate_fleet(cfg, sample, days, req.seed, progress=run)
        summary: dict[str, Any] = summarise(tally, cfg, represented=vehicles)
        profiles[name], nameplate = summary["available_gw_by_hour"], summary["nameplate_gw"]
    n = min(vehicles, TORNADO_SAMPLE)
    base, swings = tornado(config, n, days, req.seed, represented=vehicles, on_run=progress.run)
    availability = RunLabel(
        vehicles=vehicles, days=days, scenario=f"{len(profiles)} scenarios", hardware=hardware, simulated=sample
    )
    sensitivity = RunLabel(vehicles=vehicles, days=days, scenario=_scenario_words(req), hardware=hardware, simulated=n)
    return [
        save(availability_figure(profiles, nameplate, str(availability)), directory / "availability_by_hour.png"),
        save(tornado_figure(base, swings, str(sensitivity)), directory / "tornado.png"),
    ]


def _pitch(req: Request) -> None:
    """Both computer classes in all three scenarios, scaled to the fleet; with --plots, each class's charts."""
    from fleetgrid.sim.pitch import (
        PITCH_CLASSES,
        pitch_markdown,
        pitch_row,
        pitch_summaries,
        pitch_table,
        pitch_vehicle_days,
    )
    from fleetgrid.sim.progress import FleetProgress
    from fleetgrid.sim.sensitivity import TORNADO_RUNS

    base = apply_overrides(FleetConfig(), parse_assignments(req.assignments)) if req.assignments else None
    fleet, sample, days = req.fleet, req.sample, req.days
    plan = pitch_vehicle_days(fleet, sample, days, ray=req.ray)
    if req.plots is not None:
        plan += [min(fleet, sample, TORNADO_SAMPLE) * req.plot_days] * TORNADO_RUNS * len(PITCH_CLASSES)
    with FleetProgress(len(plan), sum(plan)) as progress:
        summaries = pitch_summaries(fleet, sample, days, req.seed, ray=req.ray, base=base, on_run=progress.run)
        written = [] if req.plots is None else _pitch_plots(req, summaries, base, progress, req.plots)
    rows = [pitch_row(hardware, by_scenario) for hardware, by_scenario in summaries.items()]
    if req.json_out:
        typer.echo(json.dumps({"pitch": rows, **({"plots": [str(p) for p in written]} if written else {})}))
    elif req.markdown:
        typer.echo(pitch_markdown(rows))
    else:
        Console().print(pitch_table(rows))
    _print_written(req, written)


def _pitch_plots(
    req: Request,
    summaries: dict[str, dict[str, dict[str, Any]]],
    base: FleetConfig | None,
    progress: FleetProgress,
    directory: Path,
) -> list[Path]:
    """For each computer class: availability by hour from the pitch's own runs, and a tornado around its central
    scenario on a sample scaled to the fleet."""
    from fleetgrid.sim.pitch import pitch_config
    from fleetgrid.sim.plots import availability_figure, save, tornado_figure
    from fleetgrid.sim.report import RunLabel, describe_hardware
    from fleetgrid.sim.sensitivity import tornado

    written = []
    for hardware, by_scenario in summaries.items():
        config = pitch_config(hardware, "central", base)
        central = by_scenario["central"]
        label = RunLabel(
            vehicles=central["vehicles"],
            days=central["days"],
            scenario=f"{len(by_scenario)} scenarios",
            hardware=describe_hardware(config),
            simulated=central["simulated_vehicles"],
        )
        profiles = {name: summary["available_gw_by_hour"] for name, summary in by_scenario.items()}
        figure = availability_figure(profiles, central["nameplate_gw"], str(label))
        written.append(save(figure, directory / f"availability_by_hour_{hardware}.png"))
        n = min(req.fleet, req.sample, TORNADO_SAMPLE)
        swing_base, swings = tornado(config, n, req.plot_days, req.seed, represented=req.fleet, on_run=progress.run)
        label = replace(label, days=req.plot_days, scenario=_scenario_words(req, "central"), simulated=n)
        written.append(save(tornado_figure(swing_base, swings, str(label)), directory / f"tornado_{hardware}.png"))
    return written
