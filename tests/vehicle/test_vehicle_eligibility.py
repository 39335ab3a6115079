"""Eligibility, rule by rule: from a car that is eligible on every count, each rule alone must flip it."""

from __future__ import annotations

import dataclasses

import pytest

from fleetgrid.vehicle.eligibility import Eligibility, check_eligibility, is_eligible
from fleetgrid.vehicle.policy import OwnerPolicy
from fleetgrid.vehicle.state import DriveState, Network, VehicleState

DAY0 = 20_000 * 86_400  # a local midnight


def at_hour(hour: float) -> float:
    return DAY0 + hour * 3600


BASE_POLICY = OwnerPolicy()
BASE_STATE = VehicleState(drive=DriveState.PARKED, soc=0.8, network=Network.WIFI, plugged_in=False, at=at_hour(12))


def test_baseline_is_eligible() -> None:
    assert check_eligibility(BASE_POLICY, BASE_STATE) == Eligibility(eligible=True, reasons=())
    assert is_eligible(BASE_POLICY, BASE_STATE) is True


RULES = [
    pytest.param({"opt_in": False}, {}, "the owner has not opted in", id="opt-in"),
    pytest.param({}, {"drive": DriveState.DRIVING}, "driving", id="driving"),
    pytest.param({}, {"soc": 0.18}, "state of charge 0.18 below the owner's floor 0.20", id="soc-floor"),
    pytest.param(
        {"plugged_in_only": True},
        {},
        "not plugged in, and the owner allows work only while plugged in",
        id="plugged-in-only",
    ),
    pytest.param(
        {"allowed_hours": (22, 7)},
        {},
        "local time 12:00 outside the owner's allowed hours 22:00-07:00",
        id="allowed-hours",
    ),
    pytest.param({}, {"network": Network.OFFLINE}, "offline", id="offline"),
]


@pytest.mark.parametrize(("policy_changes", "state_changes", "reason"), RULES)
def test_each_rule_alone_flips_eligibility(policy_changes: dict, state_changes: dict, reason: str) -> None:
    policy = dataclasses.replace(BASE_POLICY, **policy_changes)
    state = dataclasses.replace(BASE_STATE, **state_changes)
    verdict = check_eligibility(policy, state)
    assert verdict == Eligibility(eligible=False, reasons=(reason,))
    assert is_eligible(policy, state) is False


def test_soc_exactly_at_floor_is_eligible() -> None:
    assert is_eligible(BASE_POLICY, dataclasses.replace(BASE_STATE, soc=0.2))
    assert not is_eligible(BASE_POLICY, dataclasses.replace(BASE_STATE, soc=0.1999))


def test_soc_reason_shows_enough_digits_to_tell_values_apart() -> None:
    verdict = check_eligibility(BASE_POLICY, dataclasses.replace(BASE_STATE, soc=0.1999))
    assert verdict.reasons == ("state of charge 0.1999 below the owner's floor 0.2000",)


@pytest.mark.parametrize("drive", [DriveState.CHARGING, DriveState.PARKED])
def test_soc_floor_is_waived_while_plugged_in(drive: DriveState) -> None:
    state = dataclasses.replace(BASE_STATE, drive=drive, plugged_in=True, soc=0.05)
    assert check_eligibility(BASE_POLICY, state) == Eligibility(eligible=True, reasons=())


def test_plugged_in_only_is_satisfied_by_a_plugged_in_car() -> None:
    policy = OwnerPolicy(plugged_in_only=True)
    assert is_eligible(policy, dataclasses.replace(BASE_STATE, drive=DriveState.CHARGING, plugged_in=True))
    assert is_eligible(policy, dataclasses.replace(BASE_STATE, plugged_in=True))


def test_cellular_is_eligible_even_when_cellular_transfers_are_not_allowed() -> None:
    state = dataclasses.replace(BASE_STATE, network=Network.CELLULAR)
    assert is_eligible(OwnerPolicy(allow_cellular=False), state)


def test_every_failing_rule_is_reported_in_rule_order() -> None:
    policy = OwnerPolicy(opt_in=False, plugged_in_only=True, allowed_hours=(1, 2))
    state = VehicleState(drive=DriveState.DRIVING, soc=0.1, network=Network.OFFLINE, plugged_in=False, at=at_hour(3.5))
    verdict = check_eligibility(policy, state)
    assert not verdict.eligible
    assert verdict.reasons == (
        "the owner has not opted in",
        "driving",
        "state of charge 0.10 below the owner's floor 0.20",
        "not plugged in, and the owner allows work only while plugged in",
        "local time 03:30 outside the owner's allowed hours 01:00-02:00",
        "offline",
    )


@pytest.mark.parametrize(
    ("hours", "hour", "allowed"),
    [
        ((22, 7), 21.99, False),
        ((22, 7), 22.0, True),
        ((22, 7), 23.99, True),
        ((22, 7), 0.0, True),
        ((22, 7), 6.99, True),
        ((22, 7), 7.0, False),
        ((22, 7), 12.0, False),
        ((8, 17), 7.99, False),
        ((8, 17), 8.0, True),
        ((8, 17), 16.99, True),
        ((8, 17), 17.0, False),
        ((22, 0), 21.5, False),
        ((22, 0), 23.5, True),
        ((22, 0), 0.0, False),
        ((0, 24), 0.0, True),
        ((0, 24), 23.99, True),
    ],
)
def test_allowed_hours_including_wrap_past_midnight(hours: tuple[int, int], hour: float, allowed: bool) -> None:
    policy = OwnerPolicy(allowed_hours=hours)
    # A later day, to show only the time of day counts.
    state = dataclasses.replace(BASE_STATE, at=at_hour(hour) + 3 * 86_400)
    assert policy.in_allowed_hours(hour) is allowed
    assert is_eligible(policy, state) is allowed
