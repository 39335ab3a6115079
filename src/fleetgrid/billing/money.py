"""Money as integer micro-units of a currency (10**-6 of its major unit), never floats: parsing decimal prices,
validating ISO 4217 codes, rounding exactly.

No amount is ever split: a row's charge is rounded once, its fee once, and the owner's credit is the difference,
so credits and fees add up to the charges exactly without an allocation step (largest remainder or other)."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from fleetgrid.errors import InvalidInput

__all__ = ["ISO_4217", "MICRO", "check_currency", "format_micro", "parse_decimal", "to_micro"]

MICRO = 1_000_000
"""Micro-units per major unit (per dollar, per euro): every amount fleetgrid stores or sums is an int of these."""

# Active ISO 4217 alphabetic codes (the SIX list, 2024), funds and precious metals (X..) left out: a price list
# is in money owners can be paid in.
ISO_4217 = frozenset("""
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD CAD CDF CHF
CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG
HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA
MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD
RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX
USD UYU UZS VES VND VUV WST XAF XCD XOF XPF YER ZAR ZMW ZWL
""".split())


def check_currency(code: object) -> str:
    """``code`` as an upper-case ISO 4217 code; InvalidInput naming it otherwise."""
    if not isinstance(code, str) or code.strip().upper() not in ISO_4217:
        raise InvalidInput(f"currency {code!r} is not an ISO 4217 code; accepted: a three-letter code such as "
                           "USD, EUR, GBP or JPY")
    return code.strip().upper()


def parse_decimal(name: str, value: object, *, low: Decimal = Decimal(0), high: Decimal | None = None,
                  high_open: bool = False, places: int = 12) -> Decimal:
    """A finite decimal written as a string (or an int) in ``[low, high]`` (``[low, high)`` with ``high_open``),
    with at most ``places`` digits after the point. Floats are refused: ``0.1`` as a float is not 0.1."""
    bounds = f"[{low}, {high}{')' if high_open else ']'}" if high is not None else f">= {low}"
    accepted = f"a decimal string such as \"0.0002\", {bounds}, at most {places} decimal places"
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidInput(f"{name} = {value!r} is not a decimal string; accepted: {accepted}")
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, ValueError):
        raise InvalidInput(f"{name} = {value!r} is not a decimal number; accepted: {accepted}") from None
    if not number.is_finite():
        raise InvalidInput(f"{name} = {value!r} is not finite; accepted: {accepted}")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if -exponent > places:
        raise InvalidInput(f"{name} = {value!r} has more than {places} decimal places; accepted: {accepted}")
    too_high = high is not None and (number >= high if high_open else number > high)
    if number < low or too_high:
        raise InvalidInput(f"{name} = {value!r} is out of range; accepted: {accepted}")
    return number


def to_micro(amount: Decimal) -> int:
    """``amount`` in major units as micro-units, rounded half to even (the banker's rounding: no drift either way
    over many rows)."""
    return int((amount * MICRO).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def format_micro(micro: int, currency: str, places: int = 6) -> str:
    """``1234500`` USD as ``'1.234500 USD'`` (exact: integer arithmetic only)."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    digits = f"{frac:06d}"[:places]
    return f"{sign}{whole}.{digits} {currency}" if places else f"{sign}{whole} {currency}"
