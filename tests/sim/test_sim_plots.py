"""The charts, read from matplotlib's figure objects (axes, labels, legend, bar colours), not from pixels."""

from __future__ import annotations

import pytest
from matplotlib.colors import to_rgba

from fleetgrid.sim.plots import HIGH_COLOUR, LOW_COLOUR, availability_figure, tornado_figure
from fleetgrid.sim.scenarios import RANGE_LABELS, RANGES
from fleetgrid.sim.sensitivity import Swing

TITLE = "100,000 cars · AI4 (100 W) · central scenario · 7 days"


def _swings() -> tuple[float, list[Swing]]:
    """A 100,000-car run delivering ~0.83 MW: the axis must read MW, not 0.0008 GW."""
    return 0.83e-3, [
        Swing("owner.opt_in", 0.2, 0.8, 0.33e-3, 1.33e-3),
        Swing("operation.utilisation", 0.4, 0.8, 0.55e-3, 1.10e-3),
        Swing("charging.soc_floor", 0.1, 0.3, 0.84e-3, 0.82e-3),
    ]


def test_availability_axis_is_in_the_fleets_unit() -> None:
    hourly = [0.0012 * (1 + h / 24) for h in range(24)]  # GW: 1.2-2.4 MW
    fig = availability_figure({"central": hourly, "pessimistic": [x / 5 for x in hourly]}, 0.01, TITLE)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "available compute power (MW)"
    assert ax.get_xlabel() == "hour of day (local time)"
    assert ax.get_ylim()[1] == pytest.approx(10.5)  # nameplate 0.01 GW = 10 MW, plus 5% headroom
    central = ax.get_lines()[0].get_ydata()
    assert central[0] == pytest.approx(1.2) and max(central) < 2.5
    assert TITLE in fig.get_suptitle()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["central scenario", "pessimistic scenario"]
    assert labels[2].startswith("nameplate, 10.0 MW")


def test_tornado_axis_legend_and_labels_are_plain_words() -> None:
    base, swings = _swings()
    fig = tornado_figure(base, swings, TITLE)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "mean delivered compute power (MW)"
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks == [RANGE_LABELS[s.key] for s in reversed(swings)]  # widest on top
    assert not any("_" in t or "." in t for t in ticks)  # no raw keys like owner.opt_in
    legend = fig.legends[0]
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[0] == "knob at the low end of its range"
    assert texts[1] == "knob at the high end of its range"
    assert texts[2] == "base run: 0.83 MW"
    assert "knob's value" in legend.get_title().get_text()
    # the legend's colours are the bars' colours: low-end bars orange, high-end bars purple
    handles = legend.legend_handles
    assert to_rgba(handles[0].get_facecolor()) == to_rgba(LOW_COLOUR)
    assert to_rgba(handles[1].get_facecolor()) == to_rgba(HIGH_COLOUR)
    bars = {to_rgba(p.get_facecolor()) for p in ax.patches}
    assert bars == {to_rgba(LOW_COLOUR), to_rgba(HIGH_COLOUR)}
    # each bar starts at the base run and ends at the metric with the knob at that end, labelled with its value
    top_low = max(ax.patches, key=lambda p: p.get_y())  # owner.opt_in at 0.2, drawn highest
    assert top_low.get_x() == pytest.approx(0.83) and top_low.get_x() + top_low.get_width() == pytest.approx(0.33)
    assert {"0.2", "0.8", "0.4", "0.1", "0.3"} <= {t.get_text() for t in ax.texts}
    assert TITLE in fig.get_suptitle() and "_" not in fig.get_suptitle()


def test_every_range_has_words() -> None:
    assert set(RANGE_LABELS) == set(RANGES)
