"""The answer to the pitch "100 million cars x 1 kW = 100 GW": nameplate next to simulated available and delivered
compute, across scenarios, for a future 1 kW computer and today's ~100 W AI4, and what a data center would cost.

Fleet-wide fractions converge long before 100 M cars, so the pitch simulates a sample (200,000 cars for a week by
default; the sampling error is well under 1%) and scales it to the fleet it stands for. ``--ray`` simulates every
car instead.
"""

from __future__ import annotations

from dataclasses import replace

from fleetgrid.sim.params import FleetConfig
from fleetgrid.sim.runner import simulate_fleet
from fleetgrid.sim.scenarios import HARDWARE_PRESETS, SCENARIOS, apply_overrides
from fleetgrid.sim.summary import summarise

__all__ = ["PITCH_CLASSES", "PITCH_FLEET", "pitch_markdown", "pitch_rows"]

PITCH_FLEET = 100_000_000
PITCH_CLASSES = (
    ("future_1kw", "1 kW (future chip, Musk's figure)"),
    ("ai4", "~100 W (AI4, today)"),
)


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
    rows = []
    for hardware, label in PITCH_CLASSES:
        by_scenario = {}
        for name, overrides in SCENARIOS.items():
            config = apply_overrides(base or FleetConfig(), overrides)
            config = replace(
                config,
                hardware=replace(config.hardware, mix=dict(HARDWARE_PRESETS[hardware])),
            )
            simulated = fleet if ray else min(sample, fleet)
            tally = simulate_fleet(config, simulated, days, seed, ray=ray)
            by_scenario[name] = summarise(tally, config, represented=fleet)
        central = by_scenario["central"]
        rows.append(
            {
                "computer": label,
                "hardware": hardware,
                "vehicles": fleet,
                "simulated_vehicles": central["simulated_vehicles"],
                "days": days,
                "nameplate_gw": central["nameplate_gw"],
                **{
                    f"{k}_{s}": by_scenario[s][k] for k in ("available_gw_mean", "delivered_gw_mean") for s in SCENARIOS
                },
                "available_gw_min_central": central["available_gw_min"],
                "available_gw_max_central": central["available_gw_max"],
                "delivered_pflops_central": central["delivered_pflops_mean"],
                "grid_gw_central": central["grid_mwh_per_day"] / 24 / 1e3,
                "awake_gw_central": central["awake_mwh_per_day"] / 24 / 1e3,
                "owner_cost_usd_month_central": central["owner_cost_usd_month"],
                "datacenter_usd_central": central["datacenter_equivalent_usd"],
                "h100_equivalents_central": central["h100_equivalents"],
            }
        )
    return rows


def pitch_markdown(rows: list[dict[str, object]]) -> str:
    """The pitch table as Markdown, ready for the README."""
    lines = [
        (
            "| computer per car | nameplate | available, central (pessimistic-optimistic) | available over the day, "
            "central (lowest-highest minute) | delivered, central (pessimistic-optimistic) | delivered INT8 | grid draw "
            "(of which awake overhead) | owner's electricity | data center of the delivered GW |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['computer']} | {r['nameplate_gw']:.0f} GW | {r['available_gw_mean_central']:.1f} GW "
            f"({r['available_gw_mean_pessimistic']:.1f}-{r['available_gw_mean_optimistic']:.1f}) "
            f"| {r['available_gw_min_central']:.1f}-{r['available_gw_max_central']:.1f} GW "
            f"| {r['delivered_gw_mean_central']:.1f} GW "
            f"({r['delivered_gw_mean_pessimistic']:.1f}-{r['delivered_gw_mean_optimistic']:.1f}) "
            f"| {r['delivered_pflops_central'] / 1e3:,.0f} EOP/s "
            f"(~{r['h100_equivalents_central'] / 1e6:.1f} M H100s) "
            f"| {r['grid_gw_central']:.1f} GW ({r['awake_gw_central']:.1f} GW) "
            f"| ${r['owner_cost_usd_month_central']:.2f}/month "
            f"| ${r['datacenter_usd_central'] / 1e9:,.0f} B |"
        )
    r0 = rows[0]
    lines.append("")
    lines.append(
        f"{r0['vehicles']:,} cars; {r0['simulated_vehicles']:,} simulated for {r0['days']} days and scaled. "
        "Grid draw = delivered compute + 250 W awake overhead per working car + charging losses; owner's "
        "electricity is per opted-in owner; data center at $50 B per GW (Jensen Huang 2025)."
    )
    return "\n".join(lines)
