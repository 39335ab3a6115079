"""The operator's price list: what a tenant pays per unit of each workload's work, and the operator's fee; and the
pure maths that turns one usage row into a charge, a fee and an owner credit, exactly, in micro-units."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from fleetgrid.errors import InvalidInput
from fleetgrid.vehicle.hardware import get_profile

from .money import check_currency, parse_decimal, to_micro

__all__ = ["MAX_PRICE", "PRICE_UNITS", "REFERENCE_HARDWARE", "PriceList", "RowCharge", "WorkloadPrice",
           "charge_row", "hardware_factor"]

MAX_PRICE = Decimal(1_000_000)
"""The highest price per unit accepted (major units): catches a price typed in micro-units by mistake."""

REFERENCE_HARDWARE = "ai4"
"""Accelerator-seconds are priced as seconds of this computer; another car's are scaled by its INT8 throughput."""

PRICE_UNITS = ("per_accelerator_s", "per_item", "per_1k_tokens", "per_step", "per_example")
"""What a workload's work is priced by; a price list entry names any of them (the others are 0)."""

_WORKLOAD = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True, slots=True)
class WorkloadPrice:
    """Prices of one workload's work, in major units of the price list's currency; all >= 0."""

    per_accelerator_s: Decimal = Decimal(0)
    """Per second of the reference computer (REFERENCE_HARDWARE); see :func:`hardware_factor`."""
    per_item: Decimal = Decimal(0)
    """Per inference item computed."""
    per_1k_tokens: Decimal = Decimal(0)
    """Per 1,000 tokens generated or read."""
    per_step: Decimal = Decimal(0)
    """Per optimizer step taken on the car."""
    per_example: Decimal = Decimal(0)
    """Per training or evaluation example processed."""

    @classmethod
    def parse(cls, workload: str, data: Mapping[str, Any]) -> WorkloadPrice:
        unknown = sorted(set(data) - set(PRICE_UNITS))
        if unknown:
            raise InvalidInput(f"price of workload {workload!r}: unknown unit(s) {unknown}; accepted: "
                               f"{', '.join(PRICE_UNITS)}")
        return cls(**{unit: parse_decimal(f"price {workload}.{unit}", value, high=MAX_PRICE)
                      for unit, value in data.items()})

    def to_json(self) -> dict[str, str]:
        return {unit: str(getattr(self, unit)) for unit in PRICE_UNITS}


@dataclass(frozen=True, slots=True)
class PriceList:
    """Prices per workload kind, the operator's fee and the currency, in force from ``set_at`` on."""

    currency: str
    operator_fee: Decimal
    """Share of each charge the operator keeps, in [0, 1); the owner is credited the rest."""
    prices: Mapping[str, WorkloadPrice] = field(default_factory=dict)
    set_at: float = 0.0
    version: int = 0

    @classmethod
    def parse(cls, currency: object, operator_fee: object, prices: object, *, set_at: float = 0.0,
              version: int = 0) -> PriceList:
        """Validate everything an operator sends; InvalidInput names the first bad value."""
        if not isinstance(prices, Mapping):
            raise InvalidInput(f"prices must be an object of workload -> unit prices, got {type(prices).__name__}")
        parsed: dict[str, WorkloadPrice] = {}
        for workload, entry in prices.items():
            if not isinstance(workload, str) or not _WORKLOAD.match(workload):
                raise InvalidInput(f"workload {workload!r} is not a workload kind; accepted: lower-case names such "
                                   "as inference, train, evaluate")
            if not isinstance(entry, Mapping):
                raise InvalidInput(f"price of workload {workload!r} must be an object of unit -> decimal string")
            parsed[workload] = WorkloadPrice.parse(workload, entry)
        return cls(currency=check_currency(currency),
                   operator_fee=parse_decimal("operator_fee", operator_fee, high=Decimal(1), high_open=True),
                   prices=parsed, set_at=set_at, version=version)

    def to_json(self) -> dict[str, Any]:
        return {"currency": self.currency, "operator_fee": str(self.operator_fee),
                "prices": {k: v.to_json() for k, v in sorted(self.prices.items())}}


@dataclass(frozen=True, slots=True)
class RowCharge:
    """One usage row in money (micro-units): ``charge == fee + credit`` always."""

    charge: int
    fee: int
    credit: int


@functools.lru_cache(maxsize=64)
def hardware_factor(hardware: str) -> Decimal:
    """How many reference-computer seconds one second of ``hardware`` is worth: the ratio of INT8 peaks."""
    return Decimal(repr(get_profile(hardware).int8_tops)) / Decimal(repr(get_profile(REFERENCE_HARDWARE).int8_tops))


def charge_row(price: WorkloadPrice, operator_fee: Decimal, *, hardware: str, accelerator_s: float, items: int,
               tokens: int, steps: int, examples: int) -> RowCharge:
    """The tenant's charge for one row (exact, then rounded once, half to even, to a micro-unit), the operator's
    fee on it (rounded likewise) and the owner's credit: the rest, so the three reconcile by construction."""
    exact = Decimal(0)
    if price.per_accelerator_s and accelerator_s:  # (only the units priced: a statement prices many rows)
        exact += price.per_accelerator_s * Decimal(repr(float(accelerator_s))) * hardware_factor(hardware)
    if price.per_item and items:
        exact += price.per_item * items
    if price.per_1k_tokens and tokens:
        exact += price.per_1k_tokens * tokens / 1000
    if price.per_step and steps:
        exact += price.per_step * steps
    if price.per_example and examples:
        exact += price.per_example * examples
    charge = to_micro(exact)
    fee = int((charge * operator_fee).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    return RowCharge(charge=charge, fee=fee, credit=charge - fee)
