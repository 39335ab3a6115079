"""The fleet model's knobs: one typed, nested, validated configuration with every default's source beside it.

Sources are the rows of ``shared/fleet-params.md``; "est" marks a figure that is derived or assumed rather than
measured. Every field is overridable from a scenario TOML file or ``--set section.field=value`` (see
:mod:`fleetgrid.sim.scenarios`). Validation raises :class:`fleetgrid.errors.InvalidInput` naming the dotted key.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, fields

from fleetgrid.errors import InvalidInput

__all__ = [
    "ChargingParams",
    "ConnectivityParams",
    "DrivingParams",
    "EconomicsParams",
    "FleetConfig",
    "HardwareClass",
    "HardwareParams",
    "OperationParams",
    "OwnerParams",
]


def _fraction(key: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise InvalidInput(f"{key} = {value!r} is not a fraction; accepted: a number in [0, 1]")


def _positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidInput(f"{key} = {value!r} is out of range; accepted: a finite number {bound}")


def _shares(key: str, values: tuple[float, ...], length: int | None = None) -> None:
    if length is not None and len(values) != length:
        raise InvalidInput(f"{key} has {len(values)} entries; accepted: exactly {length} non-negative shares")
    if any(not (isinstance(v, int | float) and math.isfinite(v) and v >= 0) for v in values) or sum(values) <= 0:
        raise InvalidInput(f"{key} = {list(values)!r} is not a distribution; accepted: non-negative shares, sum > 0")


@dataclass(frozen=True, kw_only=True)
class HardwareClass:
    """One in-car AI computer: what it draws at full load and its INT8 peak."""

    board_w: float
    int8_tops: float

    def __post_init__(self) -> None:
        _positive("hardware.<class>.board_w", self.board_w)
        _positive("hardware.<class>.int8_tops", self.int8_tops)


@dataclass(frozen=True, kw_only=True)
class HardwareParams:
    """The computers in the fleet and the share of cars carrying each (``mix``; shares are normalised)."""

    # Tesla Autonomy Day 2019: 144 TOPS at 72 W per board.
    hw3: HardwareClass = field(default_factory=lambda: HardwareClass(board_w=72.0, int8_tops=144.0))
    # teslanewsdaily; 42how (2023): ~243 TOPS (est, 2 x 121.6) at ~100 W (range 80-160 W).
    ai4: HardwareClass = field(default_factory=lambda: HardwareClass(board_w=100.0, int8_tops=243.0))
    # notebookcheck leak: ~2,000-2,500 TOPS; 150-250 W claimed -> 200 W (est).
    ai5: HardwareClass = field(default_factory=lambda: HardwareClass(board_w=200.0, int8_tops=2250.0))
    # Musk, 2025 shareholder meeting: "~1 kW per car" for later chips. TOPS (est, no source): AI5's ~11 TOPS/W
    # held at 1 kW.
    future_1kw: HardwareClass = field(default_factory=lambda: HardwareClass(board_w=1000.0, int8_tops=11250.0))
    # est: AI4 shipped from 2023, so of ~8.8 M deliveries to end-2025 about half carry AI4 (delivery reports).
    mix: dict[str, float] = field(default_factory=lambda: {"hw3": 0.48, "ai4": 0.52})

    def __post_init__(self) -> None:
        names = self.class_names()
        for name in self.mix:
            if name not in names:
                raise InvalidInput(f"hardware.mix names {name!r}; accepted classes: {', '.join(names)}")
        _shares("hardware.mix", tuple(self.mix.values()))

    @staticmethod
    def class_names() -> tuple[str, ...]:
        return ("hw3", "ai4", "ai5", "future_1kw")

    def classes(self) -> list[tuple[str, HardwareClass, float]]:
        """(name, class, normalised share) for every class in the mix, in a fixed order."""
        total = sum(self.mix.values())
        return [(n, getattr(self, n), self.mix[n] / total) for n in self.class_names() if n in self.mix]


# FHWA Highway Statistics table NT-3 (NHTS 2001): % of trips starting in each hour. Anchors kept exactly: weekday
# peak 5-6 pm 8.6%, 7 am 7.7%, midnight-5 am 1.3% in total; Saturday peak at noon 8.6%. Hours between the
# anchors are interpolated (est); Sunday reuses Saturday (est). Shares are normalised before use.
WEEKDAY_START_SHARE = (
    0.4,
    0.25,
    0.2,
    0.2,
    0.25,
    1.2,
    3.8,
    7.7,
    6.0,
    4.9,
    5.1,
    5.7,
    6.6,
    6.3,
    6.7,
    7.0,
    7.6,
    8.6,
    6.2,
    5.2,
    4.0,
    3.2,
    1.9,
    1.0,
)
WEEKEND_START_SHARE = (
    0.9,
    0.6,
    0.4,
    0.3,
    0.3,
    0.6,
    1.3,
    2.5,
    4.3,
    6.0,
    7.6,
    8.3,
    8.6,
    8.3,
    7.9,
    7.6,
    7.3,
    6.9,
    5.8,
    4.7,
    3.7,
    2.8,
    2.0,
    1.3,
)


@dataclass(frozen=True, kw_only=True)
class DrivingParams:
    """When and how long cars are driven. Trips are drawn per vehicle-day; the day's last trip ends at home."""

    # AAA American Driving Survey 2023: 2.43 trips per driver per day. Shape (est): Poisson, tail folded into
    # ``max_trips``.
    trips_per_day: float = 2.43
    max_trips: int = 8
    weekday_start_share: tuple[float, ...] = WEEKDAY_START_SHARE
    weekend_start_share: tuple[float, ...] = WEEKEND_START_SHARE
    # Trip duration bins in minutes, uniform within a bin. Shape est; mean ~25 min = AAA 2023's 60.7 min of
    # driving a day over 2.43 trips.
    duration_edges_min: tuple[float, ...] = (1, 5, 10, 15, 20, 30, 45, 60, 90, 165)
    duration_share: tuple[float, ...] = (
        0.10,
        0.18,
        0.17,
        0.13,
        0.16,
        0.12,
        0.06,
        0.05,
        0.03,
    )
    # Energy per driving minute: AAA 2023 29.1 mi in 60.7 min, at 0.28 kWh/mi (Model Y, insidefuturemobility).
    miles_per_day: float = 29.1
    minutes_per_day: float = 60.7
    kwh_per_mile: float = 0.28
    # Day 0's weekday, 0 = Monday; days 5 and 6 of each week use the weekend start-hour table.
    start_weekday: int = 0

    def __post_init__(self) -> None:
        _positive("driving.trips_per_day", self.trips_per_day, allow_zero=True)
        if not (isinstance(self.max_trips, int) and 1 <= self.max_trips <= 32):
            raise InvalidInput(f"driving.max_trips = {self.max_trips!r}; accepted: an integer in [1, 32]")
        _shares("driving.weekday_start_share", self.weekday_start_share, 24)
        _shares("driving.weekend_start_share", self.weekend_start_share, 24)
        edges = self.duration_edges_min
        if len(edges) != len(self.duration_share) + 1 or any(b <= a for a, b in itertools.pairwise(edges)):
            raise InvalidInput(
                f"driving.duration_edges_min = {list(edges)!r}; accepted: increasing edges, one more than "
                f"driving.duration_share ({len(self.duration_share)} shares)"
            )
        if edges[0] < 1 or edges[-1] > 1440:
            raise InvalidInput(f"driving.duration_edges_min spans {edges[0]}-{edges[-1]}; accepted: within 1-1440")
        _shares("driving.duration_share", self.duration_share)
        _positive("driving.miles_per_day", self.miles_per_day, allow_zero=True)
        _positive("driving.minutes_per_day", self.minutes_per_day)
        _positive("driving.kwh_per_mile", self.kwh_per_mile, allow_zero=True)
        if self.start_weekday not in range(7):
            raise InvalidInput(f"driving.start_weekday = {self.start_weekday!r}; accepted: 0 (Monday) to 6")

    @property
    def kwh_per_minute(self) -> float:
        return self.miles_per_day * self.kwh_per_mile / self.minutes_per_day


@dataclass(frozen=True, kw_only=True)
class ChargingParams:
    """Home charging, the nightly plug-in decision and the battery's state-of-charge rules."""

    # IEA; INL EV Project: 0.83 of charging is done at home (range 0.7-0.9); the back-of-envelope uses 0.8.
    home_charging: float = 0.8
    # Chance a home charger owner plugs in after the day's last trip (est). Calibrated so the share of time
    # plugged in at home comes out near fleet-params' 0.5 (est, range 0.3-0.7).
    plug_in_prob: float = 0.6
    # Below this state of charge an owner always plugs in (est).
    plug_below_soc: float = 0.5
    # Constant-rates mode only: share of time plugged in at home, fleet-params 0.5 (est, range 0.3-0.7).
    plugged_share: float = 0.5
    # tesla.com: 1.4 kW (Level 1) to 11.5 kW; 7.7-11.5 kW is typical. Shares est.
    charger_kw: tuple[float, ...] = (1.4, 7.7, 11.5)
    charger_share: tuple[float, ...] = (0.1, 0.6, 0.3)
    # Model 3/Y Long Range 75 kWh (range 57-100). Shares est.
    battery_kwh: tuple[float, ...] = (57.5, 75.0, 82.0, 100.0)
    battery_share: tuple[float, ...] = (0.3, 0.5, 0.1, 0.1)
    # Tesla EPA filings via Car and Driver: 0.88 (13-14% loss at Level 2; range 0.85-0.94).
    charging_efficiency: float = 0.88
    # est: a common daily charge limit.
    charge_limit: float = 0.8
    # Tesla Sentry Mode / Cabin Overheat Protection: stop at 20% -> a plugged car charges to this before computing.
    soc_floor: float = 0.2
    # est: a car that falls below ``away_below_soc`` after a trip tops up away from home to ``away_to_soc``.
    away_below_soc: float = 0.15
    away_to_soc: float = 0.6

    def __post_init__(self) -> None:
        for name in (
            "home_charging",
            "plug_in_prob",
            "plug_below_soc",
            "plugged_share",
            "charge_limit",
            "soc_floor",
            "away_below_soc",
            "away_to_soc",
        ):
            _fraction(f"charging.{name}", getattr(self, name))
        _positive("charging.charging_efficiency", self.charging_efficiency)
        _fraction("charging.charging_efficiency", self.charging_efficiency)
        for name in ("charger_kw", "battery_kwh"):
            values = getattr(self, name)
            if not values or any(not (isinstance(v, int | float) and 0 < v < 1e4) for v in values):
                raise InvalidInput(f"charging.{name} = {list(values)!r}; accepted: a list of numbers in (0, 10000)")
            shares = getattr(self, name.split("_")[0] + "_share")
            _shares(f"charging.{name.split('_')[0]}_share", shares, len(values))


@dataclass(frozen=True, kw_only=True)
class ConnectivityParams:
    """Which cars reach home Wi-Fi, and the upload rates used for the fleet's data budget."""

    # est proxy: Pew 2025 (78% home broadband) x NCTA (89% of those use Wi-Fi) -> 0.8 (range 0.6-0.9).
    wifi_reach: float = 0.8
    # Ookla, Dec 2023: US median fixed broadband 26.6 Mbps up; median mobile 9.7 Mbps up.
    wifi_up_mbps: float = 26.6
    cellular_up_mbps: float = 9.7

    def __post_init__(self) -> None:
        _fraction("connectivity.wifi_reach", self.wifi_reach)
        _positive("connectivity.wifi_up_mbps", self.wifi_up_mbps, allow_zero=True)
        _positive("connectivity.cellular_up_mbps", self.cellular_up_mbps, allow_zero=True)


@dataclass(frozen=True, kw_only=True)
class OwnerParams:
    """The owner's policy and what they are paid."""

    # No source found: a scenario knob, 0.5 (range 0.2-0.8).
    opt_in: float = 0.5
    # Musk, 2025 shareholder meeting: $100-200 a month floated -> 150.
    payout_usd_month: float = 150.0

    def __post_init__(self) -> None:
        _fraction("owner.opt_in", self.opt_in)
        _positive("owner.payout_usd_month", self.payout_usd_month, allow_zero=True)


@dataclass(frozen=True, kw_only=True)
class OperationParams:
    """How an available car is used: scheduler utilisation, thermal derate and the cost of staying awake."""

    # fleet-params back-of-envelope: scheduler utilisation 0.6 (est).
    utilisation: float = 0.6
    # fleet-params back-of-envelope: thermal 0.9 (est) = the day's mean share of board power a parked car can
    # sustain; ``thermal_swing`` (est) moves it down in the afternoon (worst at 15:00) and up at night.
    thermal_derate: float = 0.9
    thermal_swing: float = 0.05
    # Model 3 measured 263 W awake (electricvehiclewiki); TeslaMate #87 200-230 W -> 250 W (range 200-320).
    awake_w: float = 250.0

    def __post_init__(self) -> None:
        _fraction("operation.utilisation", self.utilisation)
        _fraction("operation.thermal_derate", self.thermal_derate)
        _fraction("operation.thermal_swing", self.thermal_swing)
        low, high = (
            self.thermal_derate - self.thermal_swing,
            self.thermal_derate + self.thermal_swing,
        )
        if not (low >= 0.0 and high <= 1.0):
            raise InvalidInput(
                f"operation.thermal_derate +/- thermal_swing = {self.thermal_derate} +/- {self.thermal_swing} "
                "leaves [0, 1]; accepted: derate - swing >= 0 and derate + swing <= 1"
            )
        _positive("operation.awake_w", self.awake_w, allow_zero=True)


@dataclass(frozen=True, kw_only=True)
class EconomicsParams:
    """Prices that turn energy and capacity into money."""

    # EIA: US residential 17.47 cents/kWh (May 2025); range 11 (ND) - 41 (HI).
    electricity_usd_kwh: float = 0.1747
    # Jensen Huang 2025: $50 B per GW of data center (range $29-55 B; Epoch AI $38 B).
    datacenter_usd_per_gw: float = 50e9
    # NVIDIA: H100 SXM 1,979 TOPS INT8 dense, used to count H100-equivalents of the delivered compute.
    h100_int8_tops: float = 1979.0

    def __post_init__(self) -> None:
        _positive("economics.electricity_usd_kwh", self.electricity_usd_kwh, allow_zero=True)
        _positive(
            "economics.datacenter_usd_per_gw",
            self.datacenter_usd_per_gw,
            allow_zero=True,
        )
        _positive("economics.h100_int8_tops", self.h100_int8_tops)


@dataclass(frozen=True, kw_only=True)
class FleetConfig:
    """Everything the fleet model needs. ``time_structure=False`` is the constant-rates mode: no driving, each
    home charger owner plugged in for ``charging.plugged_share`` of every day, no state-of-charge floor and a flat
    thermal derate -- the back-of-envelope's assumptions, kept as a check on the simulator."""

    hardware: HardwareParams = field(default_factory=HardwareParams)
    driving: DrivingParams = field(default_factory=DrivingParams)
    charging: ChargingParams = field(default_factory=ChargingParams)
    connectivity: ConnectivityParams = field(default_factory=ConnectivityParams)
    owner: OwnerParams = field(default_factory=OwnerParams)
    operation: OperationParams = field(default_factory=OperationParams)
    economics: EconomicsParams = field(default_factory=EconomicsParams)
    time_structure: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.time_structure, bool):
            raise InvalidInput(f"time_structure = {self.time_structure!r}; accepted: true or false")

    @classmethod
    def sections(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
