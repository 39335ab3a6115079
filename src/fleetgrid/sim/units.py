"""Figures in units that suit their size: a 1,000-car fleet reads "86.5 kW", not "0.000 GW", and a 100 M-car one
"14.4 GW". Pure functions shared by the tables and the charts, so both pick the same unit for the same fleet."""

from __future__ import annotations

__all__ = ["PREFIXES", "format_days", "format_number", "format_si", "format_si_group", "format_usd", "si_prefix"]

PREFIXES = (("", 1.0), ("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12), ("P", 1e15), ("E", 1e18))
_NAMES = [name for name, _ in PREFIXES]


def si_prefix(magnitude: float, *, lowest: str = "", highest: str = "G") -> tuple[str, float]:
    """(prefix, factor): the largest prefix from ``lowest`` to ``highest`` in which ``|magnitude|`` is at least 1.

    ``highest`` defaults to G because the biggest fleet (2 billion cars at 1 kW) is still a readable 2,000 GW.
    The magnitude is rounded to 3 significant digits first, so 999.96 W reads "1.00 kW", not "1,000 W".
    """
    lo, hi = _NAMES.index(lowest), _NAMES.index(highest)
    rounded = float(f"{abs(magnitude):.3g}")
    for name, factor in reversed(PREFIXES[lo : hi + 1]):
        if rounded >= factor:
            return name, factor
    return PREFIXES[lo]


def format_number(value: float) -> str:
    """Three significant digits for small numbers, whole numbers with thousands separators from 100 up."""
    size = abs(float(f"{value:.3g}"))
    if size >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if size >= 10 else f"{value:.2f}"


def format_si(value: float, unit: str, *, scale_by: float | None = None, highest: str = "G") -> str:
    """``value`` (in ``unit``) with a prefix: ``format_si(8.65e6, "W")`` is "8.65 MW". ``scale_by`` picks the prefix
    from another magnitude instead, so figures that belong together (mean, lowest, highest) share one unit."""
    name, factor = si_prefix(value if scale_by is None else scale_by, highest=highest)
    return f"{format_number(value / factor)} {name}{unit}"


def format_si_group(values: list[float], unit: str, *, highest: str = "G") -> tuple[list[str], str]:
    """Numbers that read together, all in the prefix that suits the largest, and that prefixed unit, to be written
    once: ``format_si_group([2.56e6, 5.4e5], "Wh")`` is ``(["2.56", "0.54"], "MWh")``."""
    name, factor = si_prefix(max(abs(v) for v in values), highest=highest)
    return [format_number(v / factor) for v in values], f"{name}{unit}"


def format_days(days: int) -> str:
    """``1`` is "1 day", ``7`` is "7 days"."""
    return f"{days:,} day" if days == 1 else f"{days:,} days"


def format_usd(usd: float) -> str:
    """Dollars: "$9.42", "$8,720", "$35.8 M", "$432 B"."""
    for word, factor in (("B", 1e9), ("M", 1e6)):
        if abs(usd) >= factor:
            return f"${format_number(usd / factor)} {word}"
    return f"${usd:,.2f}" if abs(usd) < 100 else f"${usd:,.0f}"
