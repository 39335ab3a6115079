"""PNG charts for the simulator: compute available over the day per scenario, and the tornado of which knob moves
the answer most. Each chart is built as a matplotlib :class:`~matplotlib.figure.Figure` (tests read its axes and
legend) and written by :func:`save`; power is in the unit that suits the fleet (W to GW).

matplotlib is an extra (``fleetgrid[plots]``) imported inside the functions, so the model runs without it;
:func:`require_matplotlib` lets the command refuse ``--plots`` before it simulates anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fleetgrid.errors import InvalidInput
from fleetgrid.sim.scenarios import RANGE_LABELS
from fleetgrid.sim.sensitivity import Swing
from fleetgrid.sim.units import format_number, format_si, si_prefix

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["METRIC_WORDS", "availability_figure", "require_matplotlib", "save", "tornado_figure"]

PLOTS_EXTRA = "pip install 'fleetgrid[plots]'"
# The tornado's metrics (summary keys in GW) in words.
METRIC_WORDS = {
    "delivered_gw_mean": "mean delivered compute power",
    "available_gw_mean": "mean available compute power",
}
SCENARIO_COLOURS = {"pessimistic": "tab:red", "central": "tab:blue", "optimistic": "tab:green"}
LOW_COLOUR, HIGH_COLOUR = "tab:orange", "tab:purple"


def require_matplotlib() -> None:
    """Raise :class:`InvalidInput` naming the extra to install when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise InvalidInput(f"--plots needs matplotlib, which is not installed; accepted: {PLOTS_EXTRA}") from exc


def availability_figure(by_scenario: dict[str, Sequence[float]], nameplate_gw: float, title: str) -> Figure:
    """Mean available power for each hour of the day, one line per scenario, nameplate as a dashed line."""
    from matplotlib.figure import Figure

    prefix, factor = si_prefix(nameplate_gw * 1e9)
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.subplots()
    hours = [h + 0.5 for h in range(24)]
    for name, gw in by_scenario.items():
        ax.plot(
            hours,
            [x * 1e9 / factor for x in gw],
            marker="o",
            markersize=3,
            color=SCENARIO_COLOURS.get(name),
            label=f"{name} scenario" if name in SCENARIO_COLOURS else name,
        )
    ax.axhline(
        nameplate_gw * 1e9 / factor,
        linestyle="--",
        color="grey",
        label=f"nameplate, {format_si(nameplate_gw * 1e9, 'W')} (every computer at full power)",
    )
    ax.set(
        xlabel="hour of day (local time)",
        ylabel=f"available compute power ({prefix}W)",
        xlim=(0, 24),
        ylim=(0, nameplate_gw * 1e9 / factor * 1.05),
    )
    fig.suptitle(f"Compute available over the day (hourly mean) against nameplate\n{title}", fontsize=11)
    ax.set_xticks(range(0, 25, 3))
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=4, fontsize=8)
    return fig


def tornado_figure(base: float, swings: list[Swing], title: str, metric: str = "delivered_gw_mean") -> Figure:
    """Two bars per knob, widest swing on top: from the base run to the metric with the knob at the low end of its
    range, and to the metric with it at the high end; each bar ends with the knob's value there."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if metric not in METRIC_WORDS:
        raise ValueError(f"metric {metric!r}; accepted: {', '.join(METRIC_WORDS)}")
    values = [base] + [v for s in swings for v in (s.at_low, s.at_high)]
    prefix, factor = si_prefix(max(abs(v) for v in values) * 1e9)
    scaled = [v * 1e9 / factor for v in values]
    span = (max(scaled) - min(scaled)) or 1.0
    x0 = base * 1e9 / factor

    fig = Figure(figsize=(9, 0.5 * len(swings) + 2.2), layout="constrained")
    ax = fig.subplots()
    rows = list(reversed(swings))  # barh draws bottom-up; the widest swing goes on top
    for row, swing in enumerate(rows):
        for offset, at, knob, colour in (
            (0.2, swing.at_low, swing.low_value, LOW_COLOUR),
            (-0.2, swing.at_high, swing.high_value, HIGH_COLOUR),
        ):
            end = at * 1e9 / factor
            ax.barh(row + offset, end - x0, left=x0, height=0.38, color=colour)
            right = end >= x0
            ax.text(
                end + (0.01 if right else -0.01) * span,
                row + offset,
                f"{knob:g}",
                va="center",
                ha="left" if right else "right",
                fontsize=7,
            )
    ax.set_yticks(range(len(rows)), [RANGE_LABELS.get(s.key, s.key) for s in rows], fontsize=8)
    base_line = ax.axvline(x0, color="black", linewidth=1, label=f"base run: {format_number(x0)} {prefix}W")
    ax.set_xlim(min(scaled) - 0.12 * span, max(scaled) + 0.12 * span)
    ax.set_xlabel(f"{METRIC_WORDS[metric]} ({prefix}W)")
    fig.suptitle(f"Which knob moves {METRIC_WORDS[metric]} most\n{title}", fontsize=11)
    fig.legend(
        handles=[
            Patch(color=LOW_COLOUR, label="knob at the low end of its range"),
            Patch(color=HIGH_COLOUR, label="knob at the high end of its range"),
            base_line,
        ],
        title="one knob at a time, the rest at base; the number at a bar's end is the knob's value",
        title_fontsize=8,
        loc="outside lower center",
        ncols=3,
        fontsize=8,
    )
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG; returns the path."""
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
