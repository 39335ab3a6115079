"""The billing maths against hand-computed figures: money, prices, energy, months."""

from __future__ import annotations

import calendar
from decimal import Decimal

import pytest

from fleetgrid.billing import (
    PriceList,
    WorkloadPrice,
    charge_row,
    check_currency,
    check_month,
    check_tariff,
    energy_cost_micro,
    format_micro,
    hardware_factor,
    month_bounds,
    parse_decimal,
    to_micro,
    usage_energy_wh,
)
from fleetgrid.errors import InvalidInput


def test_decimal_strings_are_parsed_exactly_and_bad_ones_named():
    assert parse_decimal("p", "0.00001") == Decimal("0.00001")
    assert parse_decimal("p", 3) == Decimal(3)
    for bad, needle in [("-0.1", "out of range"), ("abc", "not a decimal number"), ("NaN", "not finite"),
                        ("Infinity", "not finite"), (0.1, "not a decimal string"), (True, "not a decimal string"),
                        ("0.0000000000001", "decimal places")]:
        with pytest.raises(InvalidInput, match=needle) as info:
            parse_decimal("price inference.per_item", bad)
        assert "price inference.per_item" in info.value.message
    assert parse_decimal("fee", "0.99", high=Decimal(1), high_open=True) == Decimal("0.99")
    with pytest.raises(InvalidInput, match=r"\[0, 1\)"):
        parse_decimal("fee", "1", high=Decimal(1), high_open=True)


def test_currencies_are_iso_4217():
    assert check_currency(" usd ") == "USD" and check_currency("EUR") == "EUR" and check_currency("JPY") == "JPY"
    for bad in ("XYZ", "US", "", 840, None):
        with pytest.raises(InvalidInput, match="ISO 4217"):
            check_currency(bad)


def test_rounding_is_half_to_even_and_formatting_exact():
    assert to_micro(Decimal("0.0000005")) == 0 and to_micro(Decimal("0.0000015")) == 2
    assert to_micro(Decimal("0.0000025")) == 2 and to_micro(Decimal("1.2345674")) == 1_234_567
    assert format_micro(1_234_500, "USD") == "1.234500 USD"
    assert format_micro(-5, "EUR") == "-0.000005 EUR"


def test_a_row_is_charged_exactly_and_fee_plus_credit_is_the_charge():
    price = WorkloadPrice(per_accelerator_s=Decimal("0.0002"), per_item=Decimal("0.00001"))
    # ai4 (the reference): 0.0002 x 10 s + 0.00001 x 1000 items = 0.012 -> 12,000 micro; fee 15% = 1,800.
    row = charge_row(price, Decimal("0.15"), hardware="ai4", accelerator_s=10.0, items=1000, tokens=0, steps=0,
                     examples=0)
    assert (row.charge, row.fee, row.credit) == (12_000, 1_800, 10_200)
    # hw3 is worth 144/243 of an ai4 second: 243 s -> 144 reference seconds -> 0.0288 -> 28,800 micro.
    assert hardware_factor("ai4") == 1 and hardware_factor("hw3") == Decimal(144) / Decimal(243)
    hw3 = charge_row(price, Decimal("0.15"), hardware="hw3", accelerator_s=243.0, items=0, tokens=0, steps=0,
                     examples=0)
    assert (hw3.charge, hw3.fee, hw3.credit) == (28_800, 4_320, 24_480)
    other = WorkloadPrice(per_1k_tokens=Decimal("0.002"), per_step=Decimal("0.001"), per_example=Decimal("0.000001"))
    # 0.002 x 1.5 + 0.001 x 50 + 0.000001 x 7 = 0.003 + 0.05 + 0.000007 -> 53,007 micro; fee 1/3 -> 17,669.
    r = charge_row(other, Decimal("0.3333333333"), hardware="ai5", accelerator_s=99.0, items=5, tokens=1500,
                   steps=50, examples=7)
    assert (r.charge, r.fee, r.credit) == (53_007, 17_669, 35_338)


def test_price_lists_are_validated_naming_the_bad_value():
    plist = PriceList.parse("usd", "0.15", {"inference": {"per_item": "0.00001"}})
    assert plist.currency == "USD" and plist.prices["inference"].per_item == Decimal("0.00001")
    assert plist.to_json()["prices"]["inference"]["per_step"] == "0"
    cases = [("XXX", "0.1", {}, "ISO 4217"), ("USD", "1.5", {}, "operator_fee"),
             ("USD", "-0.1", {}, "operator_fee"),
             ("USD", "0.1", {"inference": {"per_item": "-1"}}, "inference.per_item"),
             ("USD", "0.1", {"inference": {"per_item": "cheap"}}, "not a decimal number"),
             ("USD", "0.1", {"inference": {"per_hour": "1"}}, "per_hour"),
             ("USD", "0.1", {"Bad Kind": {"per_item": "1"}}, "Bad Kind")]
    for currency, fee, prices, needle in cases:
        with pytest.raises(InvalidInput, match=needle):
            PriceList.parse(currency, fee, prices)


def test_energy_is_board_power_plus_awake_overhead_plus_charging_losses():
    # An hour of AI4 (100 W) with the car awake (250 W) on battery: 350 Wh.
    assert usage_energy_wh("ai4", 3600.0, 3600.0, False) == pytest.approx(350.0)
    assert usage_energy_wh("ai4", 3600.0, 3600.0, None) == pytest.approx(350.0)
    # Plugged in, the wall supplies that through a charger 88% efficient.
    assert usage_energy_wh("ai4", 3600.0, 3600.0, True) == pytest.approx(350.0 / 0.88)
    # Half an hour of HW3 (72 W) in an hour-long lease: 36 + 250 Wh.
    assert usage_energy_wh("hw3", 1800.0, 3600.0, False) == pytest.approx(286.0)
    # Held time unknown (0): the car was awake at least while it computed.
    assert usage_energy_wh("ai5", 360.0, 0.0, False) == pytest.approx((200 + 250) / 10)
    # 350 Wh at 0.1747/kWh = 0.061145.
    assert energy_cost_micro(350.0, Decimal("0.1747")) == 61_145
    assert energy_cost_micro(0.0, Decimal("0.1747")) == 0


def test_tariffs_and_months_are_checked():
    assert check_tariff("0.1747") == Decimal("0.1747")
    for bad in ("-0.01", "10001", "lots", 0.2):
        with pytest.raises(InvalidInput, match="tariff"):
            check_tariff(bad)
    start, end = month_bounds("2026-11")
    assert (start, end) == (calendar.timegm((2026, 11, 1, 0, 0, 0)), calendar.timegm((2026, 12, 1, 0, 0, 0)))
    assert month_bounds("2026-12")[1] == calendar.timegm((2027, 1, 1, 0, 0, 0))
    for bad in ("2026-13", "2026-1", "nov", "1969-12"):
        with pytest.raises(InvalidInput, match="YYYY-MM"):
            check_month(bad)
