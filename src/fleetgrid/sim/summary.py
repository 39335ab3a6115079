"""Pure arithmetic from a :class:`~fleetgrid.sim.tally.Tally` to the figures people ask about: GW and PFLOP/s
available and delivered, grid energy, the owner's bill against the payout, and the fleet's upload budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fleetgrid.sim.params import FleetConfig
from fleetgrid.sim.tables import MINUTES
from fleetgrid.sim.tally import STATES, Tally

__all__ = ["DAYS_PER_MONTH", "Series", "summarise", "thermal_derate", "time_series"]

DAYS_PER_MONTH = 365.25 / 12
PEAK_HEAT_MINUTE = 15 * 60  # est: afternoon heat peaks around 3 pm local time


def thermal_derate(config: FleetConfig, minutes: np.ndarray) -> np.ndarray:
    """Share of board power a parked car sustains at each minute of the day: ``thermal_derate`` on average,
    ``thermal_swing`` lower at 3 pm and higher at 3 am; flat in constant-rates mode."""
    op = config.operation
    if not config.time_structure:
        return np.full(minutes.shape, op.thermal_derate)
    phase = 2 * np.pi * ((minutes % MINUTES) - PEAK_HEAT_MINUTE) / MINUTES
    return op.thermal_derate - op.thermal_swing * np.cos(phase)


@dataclass(frozen=True, eq=False)
class Series:
    """Per-minute series for a run (length ``days * 1440``), scaled to the fleet they represent."""

    available_gw: np.ndarray
    delivered_gw: np.ndarray
    available_pflops: np.ndarray
    delivered_pflops: np.ndarray
    grid_gw: np.ndarray  # compute + awake overhead + conversion losses
    state_fraction: np.ndarray  # (len(STATES), minutes)


def time_series(tally: Tally, config: FleetConfig, scale: float = 1.0) -> Series:
    """``scale`` multiplies extensive figures, for a sample standing in for a bigger fleet."""
    op = config.operation
    derate = thermal_derate(config, np.arange(tally.days * MINUTES))
    available_w = tally.available_w * derate * scale
    delivered_w = available_w * op.utilisation
    # A car kept awake to work draws its awake overhead on top of the board; idle available cars sleep.
    awake_w = tally.states[STATES.index("available")] * op.utilisation * op.awake_w * scale
    grid_w = (delivered_w + awake_w) / config.charging.charging_efficiency
    tops = tally.available_tops * derate * scale
    return Series(
        available_gw=available_w / 1e9,
        delivered_gw=delivered_w / 1e9,
        available_pflops=tops / 1e3,
        delivered_pflops=tops * op.utilisation / 1e3,
        grid_gw=grid_w / 1e9,
        state_fraction=tally.states / max(tally.sums["vehicles"], 1),
    )


def summarise(tally: Tally, config: FleetConfig, represented: int | None = None) -> dict[str, Any]:
    """The run's headline figures as a flat JSON-able dict. ``represented``: the fleet size a sample stands for."""
    simulated = int(tally.sums["vehicles"])
    vehicles = represented or simulated
    scale = vehicles / simulated
    s = time_series(tally, config, scale)
    op, eco, con = config.operation, config.economics, config.connectivity
    nameplate_gw = tally.sums["board_w"] * scale / 1e9
    days = tally.days
    grid_mwh_day = float(s.grid_gw.sum()) * 1e3 / 60 / days  # GW-minutes -> MWh, per day
    awake_mwh_day = float(tally.states[STATES.index("available")].sum()) * op.utilisation * op.awake_w * scale
    awake_mwh_day = awake_mwh_day / 60 / 1e6 / days
    compute_mwh_day = float(s.delivered_gw.sum()) * 1e3 / 60 / days
    opted_in = tally.sums["opted_in"] * scale
    cost_month = grid_mwh_day * 1e3 * eco.electricity_usd_kwh * DAYS_PER_MONTH / max(opted_in, 1)
    bytes_per_min = {
        k: mbps * 1e6 / 8 * 60 for k, mbps in (("wifi", con.wifi_up_mbps), ("cellular", con.cellular_up_mbps))
    }
    delivered_gw_mean = float(s.delivered_gw.mean())
    by_hour = s.available_gw.reshape(days, 24, 60).mean(axis=(0, 2))
    return {
        "vehicles": vehicles,
        "simulated_vehicles": simulated,
        "days": days,
        "time_structure": config.time_structure,
        "nameplate_gw": nameplate_gw,
        "nameplate_pflops": tally.sums["int8_tops"] * scale / 1e3,
        "available_fraction_mean": float(s.available_gw.mean()) / nameplate_gw if nameplate_gw else 0.0,
        "delivered_fraction_mean": delivered_gw_mean / nameplate_gw if nameplate_gw else 0.0,
        "available_gw_mean": float(s.available_gw.mean()),
        "available_gw_min": float(s.available_gw.min()),
        "available_gw_max": float(s.available_gw.max()),
        "delivered_gw_mean": delivered_gw_mean,
        "available_pflops_mean": float(s.available_pflops.mean()),
        "delivered_pflops_mean": float(s.delivered_pflops.mean()),
        "state_fraction_mean": {name: float(s.state_fraction[i].mean()) for i, name in enumerate(STATES)},
        "grid_mwh_per_day": grid_mwh_day,
        "compute_mwh_per_day": compute_mwh_day,
        "awake_mwh_per_day": awake_mwh_day,
        "loss_mwh_per_day": grid_mwh_day - compute_mwh_day - awake_mwh_day,
        "owner_cost_usd_month": cost_month,
        "owner_payout_usd_month": config.owner.payout_usd_month,
        "owner_net_usd_month": config.owner.payout_usd_month - cost_month,
        "wifi_upload_tb_per_day": tally.sums["wifi_minutes"] * scale * bytes_per_min["wifi"] / 1e12 / days,
        "cellular_upload_tb_per_day": tally.sums["cellular_minutes"] * scale * bytes_per_min["cellular"] / 1e12 / days,
        "datacenter_equivalent_usd": delivered_gw_mean * eco.datacenter_usd_per_gw,
        "h100_equivalents": float(s.delivered_pflops.mean()) * 1e3 / eco.h100_int8_tops,
        "plugged_share_home": tally.sums["plugged_minutes"] / max(tally.sums["home_charging"] * MINUTES * days, 1),
        "trips_per_day": tally.sums["trips"] / simulated / days,
        "driving_minutes_per_day": tally.sums["driving_minutes"] / simulated / days,
        "available_gw_by_hour": [float(x) for x in by_hour],
    }
