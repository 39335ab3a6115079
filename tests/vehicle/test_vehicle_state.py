from __future__ import annotations

import pytest

from fleetgrid.errors import InvalidInput
from fleetgrid.vehicle.state import DriveState, Network, VehicleState


def make(**changes: object) -> VehicleState:
    fields = {"drive": DriveState.PARKED, "soc": 0.5, "network": Network.WIFI, "plugged_in": False, "at": 0.0}
    fields.update(changes)
    return VehicleState(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("at", "hour"), [(0.0, 0.0), (3600 * 7.5, 7.5), (86_400 * 3 + 3600 * 23, 23.0), (-3600, 23.0)])
def test_local_hour_is_time_of_day_of_at(at: float, hour: float) -> None:
    assert make(at=at).local_hour == pytest.approx(hour)


def test_strings_are_coerced_to_enums() -> None:
    state = make(drive="charging", network="cellular", plugged_in=True)
    assert state.drive is DriveState.CHARGING
    assert state.network is Network.CELLULAR


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"drive": "flying"}, r"drive 'flying' is not one of: driving, parked, charging"),
        ({"network": "5g"}, r"network '5g' is not one of: wifi, cellular, offline"),
        ({"soc": 1.01}, r"soc must be a fraction in \[0, 1\], got 1.01"),
        ({"soc": -0.01}, r"soc must be a fraction in \[0, 1\], got -0.01"),
        ({"plugged_in": "no"}, r"plugged_in must be true or false, got 'no'"),
        ({"at": float("inf")}, r"at must be finite clock seconds, got inf"),
        ({"drive": DriveState.CHARGING, "plugged_in": False}, r"'charging' needs plugged_in=True"),
        ({"drive": DriveState.DRIVING, "plugged_in": True}, r"'driving' needs plugged_in=False"),
    ],
)
def test_invalid_states_are_rejected(changes: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        make(**changes)


def test_json_round_trip() -> None:
    state = make(drive=DriveState.CHARGING, plugged_in=True, soc=0.33, at=1234.5)
    data = state.to_json()
    assert data == {"drive": "charging", "soc": 0.33, "network": "wifi", "plugged_in": True, "at": 1234.5}
    assert VehicleState.from_json(data) == state


def test_from_json_needs_exactly_the_fields() -> None:
    data = make().to_json() | {"speed": 3}
    with pytest.raises(InvalidInput, match=r"needs exactly the keys drive, soc, network, plugged_in, at"):
        VehicleState.from_json(data)
