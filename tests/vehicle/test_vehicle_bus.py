"""The vehicle buses: a hand-set one, and a trace replayed on a ManualClock checked minute by minute."""

from __future__ import annotations

import itertools
import math
import threading

import pytest

from fleetgrid.clock import ManualClock
from fleetgrid.errors import InvalidInput
from fleetgrid.vehicle.bus import ManualVehicleBus, SimulatedVehicleBus, VehicleBus, load_bus
from fleetgrid.vehicle.schedule import DaySchedule, VehicleTrace, save_traces
from fleetgrid.vehicle.soc import DRIVING_KWH_PER_MINUTE, DayProfile, Mode
from fleetgrid.vehicle.state import DriveState, Network, VehicleState
from fleetgrid.vehicle.synthetic import synthetic_trace

DAY0 = 20_000 * 86_400  # a local midnight
CHARGE_PER_MIN = 7.7 * 0.88 / 60 / 75.0
DRAIN_PER_MIN = DRIVING_KWH_PER_MINUTE / 75.0

# Drive 08:00-08:30 to work, 17:00-17:30 home; plugged in at 18:00; home Wi-Fi until 07:50 and from 17:40.
DAY = DaySchedule(
    trips=((480, 510), (1020, 1050)), plugged=((1080, 1440),), wifi=((0, 470), (1060, 1440)), soc_start=0.8
)
QUIET_DAY = DaySchedule(soc_start=0.4)


def minute(m: float, day: int = 0) -> float:
    return DAY0 + day * 86_400 + m * 60


def replay(*days: DaySchedule, **kwargs: object) -> tuple[SimulatedVehicleBus, ManualClock]:
    clock = ManualClock(DAY0)
    return SimulatedVehicleBus(VehicleTrace("v-1", days or (DAY,)), clock, **kwargs), clock


def read_at(bus: SimulatedVehicleBus, clock: ManualClock, t: float) -> VehicleState:
    clock.set(t)
    return bus.read_state()


SOC_AT_18 = 0.8 - 60 * DRAIN_PER_MIN
FULL_AT = minute(1080) + math.ceil((1 - SOC_AT_18) / (CHARGE_PER_MIN / 60))


@pytest.mark.parametrize(
    ("m", "drive", "network", "plugged", "soc"),
    [
        (0, DriveState.PARKED, Network.WIFI, False, 0.8),
        (475, DriveState.PARKED, Network.CELLULAR, False, 0.8),
        (480, DriveState.DRIVING, Network.CELLULAR, False, 0.8),
        (490, DriveState.DRIVING, Network.CELLULAR, False, 0.8 - 10 * DRAIN_PER_MIN),
        (510, DriveState.PARKED, Network.CELLULAR, False, 0.8 - 30 * DRAIN_PER_MIN),
        (720, DriveState.PARKED, Network.CELLULAR, False, 0.8 - 30 * DRAIN_PER_MIN),
        (1049, DriveState.DRIVING, Network.CELLULAR, False, 0.8 - 59 * DRAIN_PER_MIN),
        (1070, DriveState.PARKED, Network.WIFI, False, SOC_AT_18),
        (1100, DriveState.CHARGING, Network.WIFI, True, SOC_AT_18 + 20 * CHARGE_PER_MIN),
        (1439, DriveState.PARKED, Network.WIFI, True, 1.0),
    ],
)
def test_replay_at_chosen_minutes(m: float, drive: DriveState, network: Network, plugged: bool, soc: float) -> None:
    bus, clock = replay()
    state = read_at(bus, clock, minute(m))
    assert (state.drive, state.network, state.plugged_in) == (drive, network, plugged)
    assert state.soc == pytest.approx(soc, abs=1e-9)
    assert state.at == minute(m)
    assert state.local_hour == pytest.approx(m / 60)


def test_soc_is_monotone_while_charging_and_stops_at_full() -> None:
    bus, clock = replay()
    socs = [read_at(bus, clock, minute(m)).soc for m in range(1080, 1440)]
    assert all(b >= a for a, b in itertools.pairwise(socs))
    assert socs[0] < 0.75 and socs[-1] == 1.0
    assert read_at(bus, clock, FULL_AT - 1).drive is DriveState.CHARGING
    full = read_at(bus, clock, FULL_AT)
    assert (full.drive, full.plugged_in, full.soc) == (DriveState.PARKED, True, 1.0)


def test_next_change_walks_every_change_of_the_day_then_the_next() -> None:
    bus, clock = replay()
    seen = []
    while clock.now() < minute(0, day=2):
        t = bus.next_change()
        assert t is not None and t > clock.now()
        before = bus.state_at(t - 1e-3)
        clock.set(t)
        after = bus.read_state()
        assert (before.drive, before.network, before.plugged_in) != (after.drive, after.network, after.plugged_in)
        seen.append(t)
    day = [minute(m) for m in (470, 480, 510, 1020, 1050, 1060, 1080)] + [FULL_AT]
    # Day 1 opens with a change at midnight: the trace unplugs it (its plug session is 18:00-24:00).
    assert seen == day + [minute(0, day=1)] + [t + 86_400 for t in day] + [minute(0, day=2)]


def test_next_change_between_changes_and_none_when_nothing_ever_changes() -> None:
    bus, clock = replay()
    clock.set(minute(600))
    assert bus.next_change() == minute(1020)
    still, _ = replay(QUIET_DAY)
    assert still.next_change() is None
    assert still.read_state().soc == 0.4


def test_days_replay_in_turn_and_wrap_around() -> None:
    bus, clock = replay(DAY, QUIET_DAY)
    assert read_at(bus, clock, minute(490, day=0)).drive is DriveState.DRIVING
    assert read_at(bus, clock, minute(490, day=1)).drive is DriveState.PARKED
    assert read_at(bus, clock, minute(490, day=1)).soc == 0.4  # each day starts at its own soc_start
    assert read_at(bus, clock, minute(490, day=2)).drive is DriveState.DRIVING
    assert read_at(bus, clock, minute(490, day=-1)).drive is DriveState.PARKED
    clock.set(minute(1439, day=1))
    assert bus.next_change() == minute(0, day=2)  # the quiet day has no Wi-Fi; DAY opens on home Wi-Fi
    clock.set(minute(0, day=2))
    assert bus.next_change() == minute(470, day=2)


def test_day0_snaps_to_its_local_midnight_and_defaults_to_now() -> None:
    clock = ManualClock(minute(1000, day=3))
    trace = VehicleTrace("v", (DAY, QUIET_DAY))
    default = SimulatedVehicleBus(trace, clock)
    explicit = SimulatedVehicleBus(trace, clock, day0=minute(5, day=3))
    assert default.day0 == explicit.day0 == minute(0, day=3)
    clock.set(minute(490, day=3))
    assert default.read_state().drive is DriveState.DRIVING


def test_offline_off_wifi_and_bigger_charger() -> None:
    bus, clock = replay(off_wifi_network=Network.OFFLINE, charger_kw=11.5)
    assert read_at(bus, clock, minute(600)).network is Network.OFFLINE
    assert read_at(bus, clock, minute(1100)).soc == pytest.approx(SOC_AT_18 + 20 * 11.5 * 0.88 / 60 / 75, abs=1e-9)


def test_driving_drain_stops_at_empty() -> None:
    bus, clock = replay(DaySchedule(trips=((0, 1440),), soc_start=0.1))
    assert read_at(bus, clock, minute(1439)).soc == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"battery_kwh": 0}, r"battery_kwh must be a number > 0, got 0"),
        ({"charger_kw": -1}, r"charger_kw must be a number >= 0, got -1"),
        ({"kwh_per_driving_minute": float("nan")}, r"kwh_per_driving_minute must be a number >= 0, got nan"),
        ({"charging_efficiency": 1.5}, r"charging_efficiency is a fraction in \(0, 1\], got 1.5"),
        ({"off_wifi_network": Network.WIFI}, r"off_wifi_network must be 'cellular' or 'offline'"),
    ],
)
def test_bad_bus_settings_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        replay(**kwargs)


def reference_soc(day: DaySchedule, drain_per_min: float, charge_per_min: float) -> list[float]:
    """The slow way: step minute by minute."""
    soc, out = day.soc_start, []
    for m in range(1440):
        out.append(soc)
        if day.driving(m):
            soc = max(0.0, soc - drain_per_min)
        elif day.plugged_in(m):
            soc = min(1.0, soc + charge_per_min)
    return out


@pytest.mark.parametrize("seed", range(10))
def test_closed_form_soc_matches_a_minute_by_minute_reference(seed: int) -> None:
    for day in synthetic_trace("v", seed, days=2).days:
        profile = DayProfile.build(day, DRAIN_PER_MIN / 60, CHARGE_PER_MIN / 60)
        expected = reference_soc(day, DRAIN_PER_MIN, CHARGE_PER_MIN)
        got = [profile.soc_at(m * 60) for m in range(1440)]
        assert got == pytest.approx(expected, abs=1e-9)
        assert profile.segments[0].start == 0 and profile.segments[-1].end == 86_400
        assert all(a.end == b.start for a, b in itertools.pairwise(profile.segments))
        assert all(s.mode is not Mode.PLUGGED or day.plugged_in((s.start + s.end) / 120) for s in profile.segments)


# ManualVehicleBus


def test_manual_bus_defaults_to_a_parked_car_on_wifi_stamped_by_the_clock() -> None:
    clock = ManualClock(minute(600))
    bus = ManualVehicleBus(clock=clock)
    assert isinstance(bus, VehicleBus)
    state = bus.read_state()
    assert (state.drive, state.network, state.plugged_in, state.soc) == (DriveState.PARKED, Network.WIFI, False, 0.8)
    clock.advance(3600)
    assert bus.read_state().at == minute(660)
    assert bus.read_state().local_hour == 11.0
    assert bus.next_change() is None


def test_manual_bus_set_changes_and_returns_the_state() -> None:
    bus = ManualVehicleBus(VehicleState(DriveState.PARKED, 0.5, Network.CELLULAR, False, at=42.0))
    new = bus.set(soc=0.3, network="wifi")
    assert new == bus.read_state()
    assert (new.soc, new.network, new.at) == (0.3, Network.WIFI, 42.0)


def test_manual_bus_keeps_state_physically_consistent() -> None:
    bus = ManualVehicleBus()
    assert bus.set(drive=DriveState.CHARGING).plugged_in is True
    driving = bus.set(drive=DriveState.DRIVING)
    assert (driving.drive, driving.plugged_in) == (DriveState.DRIVING, False)
    bus.set(drive=DriveState.CHARGING)
    unplugged = bus.set(plugged_in=False)
    assert (unplugged.drive, unplugged.plugged_in) == (DriveState.PARKED, False)
    assert bus.set(plugged_in=True).drive is DriveState.PARKED  # plugged in but not charging is allowed


def test_manual_bus_rejects_bad_changes_and_keeps_the_old_state() -> None:
    bus = ManualVehicleBus()
    before = bus.read_state()
    with pytest.raises(InvalidInput, match=r"unknown vehicle state fields \['speed'\]; accepted: drive, soc"):
        bus.set(speed=3)
    with pytest.raises(InvalidInput, match=r"soc must be a fraction"):
        bus.set(soc=2.0)
    with pytest.raises(InvalidInput, match=r"drive 'flying' is not one of"):
        bus.set(drive="flying")
    with pytest.raises(InvalidInput, match=r"'driving' needs plugged_in=False"):
        bus.set(drive=DriveState.DRIVING, plugged_in=True)
    assert bus.read_state() == before


def test_manual_bus_is_thread_safe() -> None:
    bus = ManualVehicleBus()
    errors: list[Exception] = []

    def flip(drive: DriveState) -> None:
        try:
            for _ in range(300):
                bus.set(drive=drive)
                bus.read_state()
        except Exception as exc:  # any error here is the failure under test
            errors.append(exc)

    threads = [threading.Thread(target=flip, args=(d,)) for d in (DriveState.DRIVING, DriveState.CHARGING)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# load_bus


def test_load_bus_specs(tmp_path) -> None:
    clock = ManualClock(DAY0)
    synthetic = load_bus("synthetic:7", clock)
    assert isinstance(synthetic, SimulatedVehicleBus)
    assert synthetic.trace == synthetic_trace("synthetic-7", 7, days=7)
    assert isinstance(load_bus("manual", clock), ManualVehicleBus)

    path = tmp_path / "t.jsonl"
    save_traces(path, [VehicleTrace("a", (DAY,)), VehicleTrace("b", (QUIET_DAY,))])
    bus = load_bus(f"trace:{path}#b", clock)
    assert isinstance(bus, SimulatedVehicleBus) and bus.trace.vehicle_id == "b"
    one = tmp_path / "one.jsonl"
    save_traces(one, [VehicleTrace("solo", (DAY,))])
    assert load_bus(f"trace:{one}", clock).trace.vehicle_id == "solo"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bogus", r"'bogus' is not understood; accepted: 'trace:FILE#VEHICLE_ID'"),
        ("synthetic:x", r"SEED must be an integer"),
        ("trace:{path}#c", r"holds no vehicle 'c'; vehicles there: a, b"),
        ("trace:{path}", r"holds 2 vehicles, name one with #VEHICLE_ID; vehicles there: a, b"),
        ("trace:{missing}#a", r"cannot read traces from"),
    ],
)
def test_load_bus_rejects_bad_specs(tmp_path, spec: str, message: str) -> None:
    path = tmp_path / "t.jsonl"
    save_traces(path, [VehicleTrace("a", (DAY,)), VehicleTrace("b", (QUIET_DAY,))])
    with pytest.raises(InvalidInput, match=message):
        load_bus(spec.format(path=path, missing=tmp_path / "nope.jsonl"), ManualClock(DAY0))
