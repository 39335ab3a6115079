"""Which knob moves the answer most: one-at-a-time sweeps of every range in :data:`~fleetgrid.sim.scenarios.RANGES`
around a base scenario, the data behind the tornado chart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleetgrid.sim.params import FleetConfig
from fleetgrid.sim.progress import OnRun
from fleetgrid.sim.runner import simulate_fleet
from fleetgrid.sim.scenarios import RANGE_LABELS, RANGES, apply_overrides
from fleetgrid.sim.summary import summarise
from fleetgrid.sim.units import format_days

__all__ = ["TORNADO_RUNS", "Swing", "tornado"]

TORNADO_RUNS = 2 * len(RANGES) + 1  # each knob at both ends, and the base


@dataclass(frozen=True)
class Swing:
    """The metric with one knob at the low and at the high end of its range, everything else at base."""

    key: str
    low_value: float
    high_value: float
    at_low: float
    at_high: float

    @property
    def span(self) -> float:
        return abs(self.at_high - self.at_low)


def _nested(dotted: str, value: float) -> dict[str, Any]:
    head, _, rest = dotted.partition(".")
    return {head: _nested(rest, value) if rest else value}


def tornado(
    base: FleetConfig,
    vehicles: int = 20_000,
    days: int = 7,
    seed: int = 0,
    metric: str = "delivered_gw_mean",
    represented: int | None = None,
    on_run: OnRun | None = None,
) -> tuple[float, list[Swing]]:
    """(metric at base, swings sorted widest first). Same seed throughout, so differences are the knob's alone.
    :data:`TORNADO_RUNS` simulations, each announced to ``on_run`` (for a progress bar)."""

    def run(config: FleetConfig, what: str) -> float:
        progress = on_run(f"sensitivity, {what}: {vehicles:,} cars x {format_days(days)}") if on_run else None
        summary: dict[str, Any] = summarise(
            simulate_fleet(config, vehicles, days, seed, progress=progress), config, represented
        )
        return float(summary[metric])

    swings = [
        Swing(
            key,
            low,
            high,
            run(apply_overrides(base, _nested(key, low)), f"{RANGE_LABELS[key]} = {low:g}"),
            run(apply_overrides(base, _nested(key, high)), f"{RANGE_LABELS[key]} = {high:g}"),
        )
        for key, (low, high) in RANGES.items()
    ]
    return run(base, "base run"), sorted(swings, key=lambda s: s.span, reverse=True)
