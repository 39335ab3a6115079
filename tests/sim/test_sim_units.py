"""Unit choice for figures: hand-computed cases for the prefix, the number format and the dollars."""

from __future__ import annotations

import pytest

from fleetgrid.sim.units import format_days, format_number, format_si, format_si_group, format_usd, si_prefix


@pytest.mark.parametrize(
    ("watts", "prefix"),
    [
        (0.0, ""),  # nothing available: plain watts, not a crash
        (0.4, ""),  # below 1 W there is no smaller prefix to go to
        (72.0, ""),  # one HW3 board
        (999.0, ""),
        (999.96, "k"),  # rounds to 1.00e3 at three digits, so it reads "1.00 kW", not "1,000 W"
        (1_000.0, "k"),  # one 1 kW car
        (100_000.0, "k"),  # 1,000 AI4 cars x 100 W
        (8_650_000.0, "M"),  # 100,000 cars of the default mix: 48,000 x 72 W + 52,000 x 100 W = 8.656 MW
        (1.2e9, "G"),
        (100e9, "G"),  # the pitch: 100 M cars x 1 kW
        (2e12, "G"),  # 2 billion cars x 1 kW stays in GW (2,000 GW): the highest prefix for power
        (-2.5e6, "M"),  # the magnitude decides, not the sign
    ],
)
def test_si_prefix_picks_the_largest_unit_the_value_fills(watts: float, prefix: str) -> None:
    assert si_prefix(watts)[0] == prefix
    assert si_prefix(watts)[1] == {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}[prefix]


def test_si_prefix_bounds() -> None:
    assert si_prefix(9.7e19, lowest="P", highest="E") == ("E", 1e18)  # 97,171 EOP/s, as in the README
    assert si_prefix(9.8e17, lowest="P", highest="E") == ("P", 1e15)
    assert si_prefix(5.0, lowest="P", highest="E") == ("P", 1e15)  # never below the lowest
    assert si_prefix(8.67e15, highest="E") == ("P", 1e15)


def test_numbers_and_units_read_as_three_digits() -> None:
    assert format_number(0.7237) == "0.72"
    assert format_number(14.44) == "14.4"
    assert format_number(99.96) == "100"
    assert format_number(19_527.4) == "19,527"
    assert format_si(8_656_000.0, "W") == "8.66 MW"
    assert format_si(123_456.0, "W") == "123 kW"
    assert format_si(72.0, "W") == "72.0 W"
    assert format_si(716_890.0, "W", scale_by=8.65e6) == "0.72 MW"  # in the unit of the nameplate beside it
    assert format_si_group([2.56e6, 5.4e5, 1.71e6], "Wh") == (["2.56", "0.54", "1.71"], "MWh")
    assert format_si_group([8.67e15, 2.06e15], "B", highest="E") == (["8.67", "2.06"], "PB")


def test_dollars_and_days() -> None:
    assert format_usd(432e9) == "$432 B"
    assert format_usd(35.8e6) == "$35.8 M"
    assert format_usd(8_720.4) == "$8,720"
    assert format_usd(9.42) == "$9.42"
    assert (format_days(1), format_days(7)) == ("1 day", "7 days")
