"""Metering to money: prices, energy, charges that reconcile to the micro-unit, and statements for owners and
tenants. Pure functions over usage rows; the coordinator's routes and the CLI are the edges."""

from __future__ import annotations

from .energy import AWAKE_W, CHARGING_EFFICIENCY, DEFAULT_TARIFF, check_tariff, energy_cost_micro, usage_energy_wh
from .lines import UsageLine
from .money import MICRO, check_currency, format_micro, parse_decimal, to_micro
from .prices import PriceList, RowCharge, WorkloadPrice, charge_row, hardware_factor
from .statements import (
    OwnerStatement,
    TenantBill,
    check_month,
    month_bounds,
    owner_statement,
    payout_csv,
    payout_statements,
    price_lines,
    tenant_bill,
)

__all__ = [
    "AWAKE_W",
    "CHARGING_EFFICIENCY",
    "DEFAULT_TARIFF",
    "MICRO",
    "OwnerStatement",
    "PriceList",
    "RowCharge",
    "TenantBill",
    "UsageLine",
    "WorkloadPrice",
    "charge_row",
    "check_currency",
    "check_month",
    "check_tariff",
    "energy_cost_micro",
    "format_micro",
    "hardware_factor",
    "month_bounds",
    "owner_statement",
    "parse_decimal",
    "payout_csv",
    "payout_statements",
    "price_lines",
    "tenant_bill",
    "to_micro",
    "usage_energy_wh",
]
