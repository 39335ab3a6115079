"""Energy a usage row cost its car, in Wh, and what that energy cost its owner at their electricity tariff.

The figures are the simulator's (:mod:`fleetgrid.sim.params`) and the hardware profiles'
(:mod:`fleetgrid.vehicle.hardware`), sourced in ``shared/fleet-params.md``: one set of numbers for the whole
project, imported here, never copied.
"""

from __future__ import annotations

import functools
from decimal import Decimal

from fleetgrid.errors import InvalidInput
from fleetgrid.sim.params import ChargingParams, EconomicsParams, OperationParams
from fleetgrid.vehicle.hardware import get_profile

from .money import parse_decimal, to_micro

__all__ = ["AWAKE_W", "CHARGING_EFFICIENCY", "DEFAULT_TARIFF", "MAX_TARIFF", "check_tariff", "energy_cost_micro",
           "usage_energy_wh"]

AWAKE_W = OperationParams().awake_w
"""Watts a parked car draws to stay awake while its computer works: 250 W (Model 3 measured 263 W; TeslaMate #87
200-230 W; range 200-320 W)."""

CHARGING_EFFICIENCY = ChargingParams().charging_efficiency
"""Share of the energy drawn from the wall that reaches the battery: 0.88 (Tesla EPA filings via Car and Driver,
13-14% loss at Level 2; range 0.85-0.94)."""

DEFAULT_TARIFF = Decimal(str(EconomicsParams().electricity_usd_kwh))
"""An owner's electricity price per kWh until they set theirs: the US residential average, 0.1747 USD (EIA, May
2025; range 0.11 (ND) - 0.41 (HI))."""

MAX_TARIFF = Decimal(10_000)
"""The highest tariff per kWh accepted, in the price list's currency: wide enough for currencies with small units
(Indonesian rupiah: ~1,500 IDR/kWh), low enough to catch a tariff typed in the wrong unit."""


def check_tariff(value: object) -> Decimal:
    """An electricity tariff per kWh: a decimal string in [0, MAX_TARIFF]; InvalidInput naming it otherwise."""
    return parse_decimal("electricity tariff (per kWh)", value, high=MAX_TARIFF, places=6)


def usage_energy_wh(hardware: str, accelerator_s: float, held_s: float, plugged_in: bool | None, *,
                    awake_w: float = AWAKE_W, charging_efficiency: float = CHARGING_EFFICIENCY) -> float:
    """Wh one usage row cost: the computer's board power for its accelerator-seconds, plus the awake overhead for
    as long as the car worked (``held_s``, at least the accelerator-seconds), plus the charger's losses on both
    when the car was plugged in (it drew that energy from the wall, not from the battery). ``plugged_in`` None
    (not known) counts as on battery: the statement never claims losses it cannot show."""
    if accelerator_s < 0 or held_s < 0:
        raise InvalidInput(f"usage seconds must be >= 0, got accelerator_s={accelerator_s}, held_s={held_s}")
    board_w = _board_w(hardware)
    wh = (board_w * accelerator_s + awake_w * max(held_s, accelerator_s)) / 3600.0
    if plugged_in:
        wh /= charging_efficiency
    return wh


@functools.lru_cache(maxsize=64)
def _board_w(hardware: str) -> float:
    return get_profile(hardware).watts


def energy_cost_micro(wh: float, tariff_per_kwh: Decimal) -> int:
    """What ``wh`` cost at ``tariff_per_kwh`` (major units per kWh), in micro-units, rounded half to even."""
    return to_micro(Decimal(repr(wh)) / 1000 * tariff_per_kwh) if wh else 0


