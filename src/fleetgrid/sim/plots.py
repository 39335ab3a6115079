"""PNG charts for the simulator: availability over the day per scenario, and the tornado of which knob matters.

matplotlib is imported inside the functions (the ``sim``/``plots`` extra), so the model runs without it.
"""

from __future__ import annotations

from pathlib import Path

from fleetgrid.sim.sensitivity import Swing

__all__ = ["plot_availability", "plot_tornado"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_availability(by_scenario: dict[str, list[float]], nameplate_gw: float, path: str | Path) -> Path:
    """Mean available GW for each hour of the day, one line per scenario, nameplate as a dashed line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    hours = [h + 0.5 for h in range(24)]
    for name, gw in by_scenario.items():
        ax.plot(hours, gw, marker="o", markersize=3, label=name)
    ax.axhline(
        nameplate_gw,
        linestyle="--",
        color="grey",
        label=f"nameplate {nameplate_gw:,.3g} GW",
    )
    ax.set(
        xlabel="hour of day (local time)",
        ylabel="available accelerator power, GW",
        xlim=(0, 24),
        ylim=(0, nameplate_gw * 1.05),
        title="Fleet compute available over the day, against nameplate",
    )
    ax.set_xticks(range(0, 25, 3))
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_tornado(base: float, swings: list[Swing], metric: str, path: str | Path) -> Path:
    """Horizontal bars from the metric at each knob's low end to its high end, widest on top."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(swings) + 1.5))
    for row, swing in enumerate(reversed(swings)):
        lo, hi = sorted((swing.at_low, swing.at_high))
        ax.barh(
            row,
            hi - lo,
            left=lo,
            color="tab:blue" if swing.at_high >= swing.at_low else "tab:orange",
        )
        ax.text(
            hi,
            row,
            f"  {swing.low_value:g} .. {swing.high_value:g}",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(range(len(swings)), [s.key for s in reversed(swings)], fontsize=8)
    ax.axvline(base, color="black", linewidth=1)
    ax.set(
        xlabel=metric.replace("_", " "),
        title="Which knob moves the answer most (one at a time)",
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
