"""The answer to the pitch "100 million cars x 1 kW = 100 GW": nameplate next to simulated available and delivered
compute, across scenarios, for a future 1 kW computer and today's ~100 W AI4, and what a data center would cost.

Fleet-wide fractions converge long before 100 M cars, so the pitch simulates a sample (200,000 cars for a week by
default; the sampling error is well under 1%) and scales it to the fleet it stands for. ``--ray`` simulates every
car instead.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rich.table import Table

from fleetgrid.sim.params import FleetConfig
from fleetgrid.sim.progress import OnRun
from fleetgrid.sim.runner import simulate_fleet
from fleetgrid.sim.scenarios import HARDWARE_PRESETS, SCENARIOS, apply_overrides
from fleetgrid.sim.summary import summarise
from fleetgrid.sim.units import format_days, format_usd, si_prefix

__all__ = [
    "PITCH_CLASSES",
    "PITCH_FLEET",
    "pitch_config",
    "pitch_markdown",
    "pitch_row",
    "pitch_rows",
    "pitch_summaries",
    "pitch_table",
    "pitch_vehicle_days",
]

PITCH_FLEET = 100_000_000
PITCH_CLASSES = (
    ("future_1kw", "1 kW (future chip, Musk's figure)"),
    ("ai4", "~100 W (AI4, today)"),
)
# (Markdown header as in the README, the shorter label the terminal table uses); one per cell of a row.
PITCH_COLUMNS = (
    ("computer per car", "computer per car"),
    ("nameplate", "nameplate (all computers at full power)"),
    ("available, central (pessimistic-optimistic)", "available, central (pessimistic to optimistic)"),
    ("available over the day, central (lowest-highest minute)", "available over the day (lowest to highest minute)"),
    ("delivered, central (pessimistic-optimistic)", "delivered, central (pessimistic to optimistic)"),
    ("delivered INT8", "delivered INT8"),
    ("grid draw (of which awake overhead)", "grid draw (of which awake overhead)"),
    ("owner's electricity", "owner's electricity, per opted-in owner"),
    ("data center of the delivered GW", "data center of the same delivered power"),
)


def pitch_config(hardware: str, scenario: str, base: FleetConfig | None = None) -> FleetConfig:
    """``base`` (the sourced defaults, or them with ``--set``) in a named scenario, every car carrying ``hardware``."""
    config = apply_overrides(base or FleetConfig(), SCENARIOS[scenario])
    return replace(config, hardware=replace(config.hardware, mix=dict(HARDWARE_PRESETS[hardware])))


def pitch_vehicle_days(fleet: int, sample: int, days: int, *, ray: bool = False) -> list[int]:
    """Vehicle-days of each run :func:`pitch_summaries` makes, in order (for a progress bar)."""
    return [(fleet if ray else min(sample, fleet)) * days] * (len(PITCH_CLASSES) * len(SCENARIOS))


def pitch_summaries(
    fleet: int = PITCH_FLEET,
    sample: int = 200_000,
    days: int = 7,
    seed: int = 0,
    *,
    ray: bool = False,
    base: FleetConfig | None = None,
    on_run: OnRun | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """hardware -> scenario -> :func:`summarise` of a sample scaled to ``fleet`` (every car with ``ray``)."""
    simulated = fleet if ray else min(sample, fleet)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for hardware, _ in PITCH_CLASSES:
        out[hardware] = {}
        for name in SCENARIOS:
            config = pitch_config(hardware, name, base)
            description = f"{hardware}, {name} scenario: {simulated:,} cars x {format_days(days)}"
            progress = on_run(description) if on_run else None
            tally = simulate_fleet(config, simulated, days, seed, ray=ray, progress=progress)
            out[hardware][name] = summarise(tally, config, represented=fleet)
    return out


def pitch_row(hardware: str, by_scenario: dict[str, dict[str, Any]]) -> dict[str, object]:
    """One computer class's row: central figures with the pessimistic-optimistic range."""
    central = by_scenario["central"]
    return {
        "computer": dict(PITCH_CLASSES)[hardware],
        "hardware": hardware,
        "vehicles": central["vehicles"],
        "simulated_vehicles": central["simulated_vehicles"],
        "days": central["days"],
        "nameplate_gw": central["nameplate_gw"],
        **{f"{k}_{s}": by_scenario[s][k] for k in ("available_gw_mean", "delivered_gw_mean") for s in SCENARIOS},
        "available_gw_min_central": central["available_gw_min"],
        "available_gw_max_central": central["available_gw_max"],
        "delivered_pflops_central": central["delivered_pflops_mean"],
        "grid_gw_central": central["grid_mwh_per_day"] / 24 / 1e3,
        "awake_gw_central": central["awake_mwh_per_day"] / 24 / 1e3,
        "owner_cost_usd_month_central": central["owner_cost_usd_month"],
        "datacenter_usd_central": central["datacenter_equivalent_usd"],
        "h100_equivalents_central": central["h100_equivalents"],
    }


def pitch_rows(
    fleet: int = PITCH_FLEET,
    sample: int = 200_000,
    days: int = 7,
    seed: int = 0,
    *,
    ray: bool = False,
    base: FleetConfig | None = None,
) -> list[dict[str, object]]:
    """One row per computer class: central figures with the pessimistic-optimistic range."""
    summaries = pitch_summaries(fleet, sample, days, seed, ray=ray, base=base)
    return [pitch_row(hardware, by_scenario) for hardware, by_scenario in summaries.items()]


def _cells(r: dict[str, Any]) -> list[str]:
    """A row's cells, one per :data:`PITCH_COLUMNS`. Power is in the unit that suits the central available power
    (GW for the pitch's 100 M cars, as in the README; kW for a 1,000-car try), one unit across the row."""
    prefix, factor = si_prefix(r["available_gw_mean_central"] * 1e9)
    unit = f"{prefix}W"

    def p(key: str, digits: int = 1) -> str:
        return f"{r[key] * 1e9 / factor:,.{digits}f}"

    ops = r["delivered_pflops_central"] * 1e15
    ops_prefix, ops_factor = si_prefix(ops, lowest="P", highest="E")
    return [
        str(r["computer"]),
        f"{p('nameplate_gw', 0)} {unit}",
        (
            f"{p('available_gw_mean_central')} {unit} "
            f"({p('available_gw_mean_pessimistic')}-{p('available_gw_mean_optimistic')})"
        ),
        f"{p('available_gw_min_central')}-{p('available_gw_max_central')} {unit}",
        (
            f"{p('delivered_gw_mean_central')} {unit} "
            f"({p('delivered_gw_mean_pessimistic')}-{p('delivered_gw_mean_optimistic')})"
        ),
        f"{ops / ops_factor:,.0f} {ops_prefix}OP/s (~{_h100s(r['h100_equivalents_central'])} H100s)",
        f"{p('grid_gw_central')} {unit} ({p('awake_gw_central')} {unit})",
        f"${r['owner_cost_usd_month_central']:.2f}/month",
        f"${r['datacenter_usd_central'] / 1e9:,.0f} B"
        if r["datacenter_usd_central"] >= 1e9
        else format_usd(r["datacenter_usd_central"]),
    ]


def _h100s(count: float) -> str:
    return f"{count / 1e6:.1f} M" if count >= 1e5 else f"{count:,.0f}"


def _footnote(rows: list[dict[str, Any]]) -> str:
    r0 = rows[0]
    return (
        f"{r0['vehicles']:,} cars; {r0['simulated_vehicles']:,} simulated for {format_days(r0['days'])} and scaled. "
        "Grid draw = delivered compute + 250 W awake overhead per working car + charging losses; owner's "
        "electricity is per opted-in owner; data center at $50 B per GW (Jensen Huang 2025)."
    )


def pitch_markdown(rows: list[dict[str, object]]) -> str:
    """The pitch table as Markdown, ready for the README."""
    lines = [
        "| " + " | ".join(long for long, _ in PITCH_COLUMNS) + " |",
        "|" + "---|" * len(PITCH_COLUMNS),
    ]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join([*lines, "", _footnote(rows)])


def pitch_table(rows: list[dict[str, object]]) -> Table:
    """The pitch table for a terminal: one row per figure, one column per computer class, so it fits 100 columns
    (the Markdown's nine columns would wrap every cell)."""
    r0 = rows[0]
    table = Table(
        title=f"The pitch, simulated: {r0['vehicles']:,} parked cars",
        caption=_footnote(rows),
        caption_justify="left",
    )
    table.add_column("figure")
    cells = [_cells(r) for r in rows]
    for row_cells in cells:
        table.add_column(row_cells[0], justify="right")
    for i, (_, short) in enumerate(PITCH_COLUMNS[1:], 1):
        table.add_row(short, *(c[i] for c in cells))
    return table
