"""A run's figures for people: what the run was (:class:`RunLabel`, for table and chart titles) and its summary as a
terminal table or Markdown, in units that suit the fleet's size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table

from fleetgrid.sim.params import FleetConfig
from fleetgrid.sim.units import format_days, format_number, format_si, format_si_group, format_usd, si_prefix

__all__ = ["STATE_WORDS", "RunLabel", "describe_hardware", "summary_markdown", "summary_rows", "summary_table"]

# Each state of a car-minute, in words (see fleetgrid.sim.tally.STATES).
STATE_WORDS = {
    "driving": "driving",
    "opted_out": "owner opted out",
    "unplugged": "parked, not plugged in at home",
    "no_wifi": "plugged in, out of home Wi-Fi reach",
    "low_soc": "plugged in, battery below the floor",
    "available": "available to compute",
}
_CLASS_NAMES = {"hw3": "HW3", "ai4": "AI4", "ai5": "AI5", "future_1kw": "future chip"}


def describe_hardware(config: FleetConfig) -> str:
    """One computer class as "AI4 (100 W)" or "future chip (1 kW)", a mix as "HW3 48% + AI4 52%"."""
    classes = config.hardware.classes()
    if len(classes) == 1:
        name, spec, _ = classes[0]
        prefix, factor = si_prefix(spec.board_w)
        return f"{_CLASS_NAMES[name]} ({spec.board_w / factor:g} {prefix}W)"
    return " + ".join(f"{_CLASS_NAMES[name]} {share:.0%}" for name, _, share in classes)


@dataclass(frozen=True, kw_only=True)
class RunLabel:
    """What a run was, in words: "100,000 cars · HW3 48% + AI4 52% · central scenario · 7 days"."""

    vehicles: int  # the fleet the figures stand for
    days: int
    scenario: str  # "central", "pessimistic", a file's name, or "3 scenarios"
    hardware: str  # from describe_hardware
    simulated: int | None = None  # cars actually simulated, when a smaller sample is scaled to the fleet

    def __str__(self) -> str:
        fleet = f"{self.vehicles:,} cars"
        if self.simulated is not None and self.simulated != self.vehicles:
            fleet += f" ({self.simulated:,} simulated, scaled)"
        return f"{fleet} · {self.hardware} · {self.scenario} · {format_days(self.days)}"


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(figure, value) pairs. Power shares one unit, chosen from the nameplate, so the rows compare at a glance."""
    nameplate_w = summary["nameplate_gw"] * 1e9

    def power(gw: float) -> str:
        return format_si(gw * 1e9, "W", scale_by=nameplate_w)

    def ops(pflops: float) -> str:
        return format_si(pflops * 1e15, "OP/s", highest="E")

    (mean, low, high), power_unit = format_si_group(
        [summary[f"available_gw_{k}"] * 1e9 for k in ("mean", "min", "max")], "W"
    )
    (grid, compute, awake, loss), energy_unit = format_si_group(
        [summary[f"{k}_mwh_per_day"] * 1e6 for k in ("grid", "compute", "awake", "loss")], "Wh"
    )
    (wifi, cellular), bytes_unit = format_si_group(
        [summary[f"{k}_upload_tb_per_day"] * 1e12 for k in ("wifi", "cellular")], "B", highest="E"
    )
    rows = [
        (
            "nameplate (all computers at full power)",
            f"{power(summary['nameplate_gw'])} / {ops(summary['nameplate_pflops'])} INT8",
        ),
        ("available, mean (lowest-highest minute)", f"{mean} {power_unit} ({low}-{high})"),
        ("available share of nameplate", f"{summary['available_fraction_mean']:.1%}"),
        (
            "delivered, mean (available x utilisation)",
            f"{power(summary['delivered_gw_mean'])} / {ops(summary['delivered_pflops_mean'])} INT8",
        ),
        ("grid energy a day (compute + awake + losses)", f"{grid} {energy_unit} ({compute} + {awake} + {loss})"),
        (
            "owner's electricity vs payout, a month",
            f"{format_usd(summary['owner_cost_usd_month'])} vs {format_usd(summary['owner_payout_usd_month'])}",
        ),
        ("uplink capacity, Wi-Fi / cellular (opted-in cars)", f"{wifi} / {cellular} {bytes_unit} a day"),
        ("data center of the same delivered power", format_usd(summary["datacenter_equivalent_usd"])),
        ("H100s of the same delivered INT8", format_number(summary["h100_equivalents"])),
    ]
    rows += [(f"share of car-minutes: {STATE_WORDS[k]}", f"{v:.1%}") for k, v in summary["state_fraction_mean"].items()]
    return rows


def summary_table(summary: dict[str, Any], label: RunLabel) -> Table:
    """The summary as a two-column rich table titled with what was run."""
    table = Table(title=str(label))
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in summary_rows(summary):
        table.add_row(name, value)
    return table


def summary_markdown(summary: dict[str, Any], label: RunLabel) -> str:
    """The same figures as a Markdown table under a one-line caption."""
    lines = [f"{label}", "", "| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in summary_rows(summary)]
    return "\n".join(lines)
