"""The configuration compiled into lookup tables that turn uniform random numbers into vehicle attributes and trips.

Both the vectorised model and the slow reference read the same tables, so they agree draw for draw. Energy is in
whole watt-hours (and whole Wh per minute) so the two implementations' integer arithmetic is bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fleetgrid.sim.params import FleetConfig

__all__ = ["MINUTES", "ModelTables", "compile_tables", "pick"]

MINUTES = 1440


def _cumulative(shares: tuple[float, ...] | list[float] | np.ndarray) -> np.ndarray:
    """[0, p0, p0+p1, ..., 1] with trailing zero-share bins pinned to 1 so no uniform < 1 lands in them."""
    p = np.asarray(shares, dtype=np.float64)
    p = p / p.sum()
    cum = np.concatenate([[0.0], np.cumsum(p)])
    last = int(np.flatnonzero(p > 0)[-1])
    cum[last + 1 :] = 1.0
    return cum


def pick(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index i with cum[i] <= u < cum[i+1]: inverse-CDF sampling of a categorical distribution."""
    idx = np.searchsorted(cum, u, side="right") - 1
    return np.clip(idx, 0, len(cum) - 2)


def _poisson_pmf(mean: float, top: int) -> np.ndarray:
    """Poisson(mean) over 0..top with the tail beyond ``top`` folded into ``top``."""
    pmf = np.array([math.exp(-mean) * mean**k / math.factorial(k) for k in range(top + 1)])
    pmf[top] += max(0.0, 1.0 - pmf.sum())
    return pmf


@dataclass(frozen=True, eq=False)
class ModelTables:
    """Cumulative tables (for :func:`pick`) and integer energy rates derived from a :class:`FleetConfig`."""

    max_trips: int
    trips_cum: np.ndarray  # (max_trips + 2,)
    weekday_cum: np.ndarray  # (25,)
    weekend_cum: np.ndarray  # (25,)
    duration_cum: np.ndarray  # (bins + 1,)
    duration_lo: np.ndarray  # (bins,) lower edge, minutes
    duration_width: np.ndarray  # (bins,)
    duration_share: np.ndarray  # (bins,) normalised
    hardware_cum: np.ndarray
    hardware_w: np.ndarray
    hardware_tops: np.ndarray
    battery_cum: np.ndarray
    battery_wh: np.ndarray  # int64
    charger_cum: np.ndarray
    charge_wh_per_min: np.ndarray  # int64, energy into the battery per plugged minute
    drive_wh_per_min: int
    plugged_minutes: int  # constant-rates mode: minutes a day a home charger owner is plugged in
    start_weekday: int

    def is_weekend(self, day: int) -> bool:
        return (self.start_weekday + day) % 7 >= 5


def compile_tables(config: FleetConfig) -> ModelTables:
    """Pure: the same config always yields the same tables."""
    drv, chg = config.driving, config.charging
    classes = config.hardware.classes()
    edges = np.asarray(drv.duration_edges_min, dtype=np.float64)
    share = np.asarray(drv.duration_share, dtype=np.float64)
    return ModelTables(
        max_trips=drv.max_trips,
        trips_cum=_cumulative(_poisson_pmf(drv.trips_per_day, drv.max_trips)),
        weekday_cum=_cumulative(drv.weekday_start_share),
        weekend_cum=_cumulative(drv.weekend_start_share),
        duration_cum=_cumulative(share),
        duration_lo=edges[:-1].copy(),
        duration_width=np.diff(edges),
        duration_share=share / share.sum(),
        hardware_cum=_cumulative([s for _, _, s in classes]),
        hardware_w=np.array([c.board_w for _, c, _ in classes], dtype=np.float64),
        hardware_tops=np.array([c.int8_tops for _, c, _ in classes], dtype=np.float64),
        battery_cum=_cumulative(chg.battery_share),
        battery_wh=np.array([round(k * 1000) for k in chg.battery_kwh], dtype=np.int64),
        charger_cum=_cumulative(chg.charger_share),
        charge_wh_per_min=np.array(
            [max(1, round(k * 1000 * chg.charging_efficiency / 60)) for k in chg.charger_kw], dtype=np.int64
        ),
        drive_wh_per_min=round(drv.kwh_per_minute * 1000),
        plugged_minutes=round(chg.plugged_share * MINUTES),
        start_weekday=drv.start_weekday,
    )
