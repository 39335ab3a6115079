from __future__ import annotations

import pytest

from fleetgrid.errors import InvalidInput
from fleetgrid.vehicle.policy import OwnerPolicy


def test_defaults_are_the_sourced_figures() -> None:
    policy = OwnerPolicy()
    assert policy.opt_in is True
    assert policy.min_soc == 0.2
    assert policy.plugged_in_only is False
    assert policy.allowed_hours == (0, 24)
    assert policy.monthly_cellular_cap_bytes == 2 * 1024**3
    assert policy.allow_cellular is True


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"opt_in": "yes"}, r"opt_in must be true or false, got 'yes'"),
        ({"plugged_in_only": 1}, r"plugged_in_only must be true or false, got 1"),
        ({"allow_cellular": None}, r"allow_cellular must be true or false, got None"),
        ({"min_soc": 1.2}, r"min_soc must be a fraction in \[0, 1\] such as 0.2, got 1.2"),
        ({"min_soc": -0.1}, r"min_soc .* got -0.1"),
        ({"min_soc": float("nan")}, r"min_soc .* got nan"),
        ({"min_soc": True}, r"min_soc .* got True"),
        ({"min_soc": "0.2"}, r"min_soc .* got '0.2'"),
        ({"allowed_hours": (5, 5)}, r"allowed_hours must be .*start != end.*got \(5, 5\)"),
        ({"allowed_hours": (0, 25)}, r"allowed_hours .*0 <= end <= 24.*got \(0, 25\)"),
        ({"allowed_hours": (24, 3)}, r"allowed_hours .*0 <= start <= 23.*got \(24, 3\)"),
        ({"allowed_hours": (-1, 3)}, r"allowed_hours .*got \(-1, 3\)"),
        ({"allowed_hours": (8.5, 17)}, r"allowed_hours .*whole hours.*got \(8.5, 17\)"),
        ({"allowed_hours": (8,)}, r"allowed_hours must be a pair"),
        ({"allowed_hours": "8-17"}, r"allowed_hours must be a pair .*got '8-17'"),
        ({"monthly_cellular_cap_bytes": -1}, r"monthly_cellular_cap_bytes must be an integer >= 0, got -1"),
        ({"monthly_cellular_cap_bytes": 1.5e9}, r"monthly_cellular_cap_bytes .* got 1500000000.0"),
    ],
)
def test_bad_settings_are_rejected_naming_value_and_what_is_accepted(changes: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        OwnerPolicy(**changes)


def test_min_soc_given_as_int_is_stored_as_float() -> None:
    policy = OwnerPolicy(min_soc=0)
    assert policy.min_soc == 0.0
    assert isinstance(policy.min_soc, float)


def test_json_round_trip() -> None:
    policy = OwnerPolicy(
        opt_in=False,
        min_soc=0.35,
        plugged_in_only=True,
        allowed_hours=(22, 7),
        monthly_cellular_cap_bytes=123,
        allow_cellular=False,
    )
    data = policy.to_json()
    assert data["allowed_hours"] == [22, 7]
    assert OwnerPolicy.from_json(data) == policy


def test_from_json_fills_defaults_and_accepts_a_list_for_hours() -> None:
    policy = OwnerPolicy.from_json({"allowed_hours": [1, 5]})
    assert policy == OwnerPolicy(allowed_hours=(1, 5))
    assert policy.allowed_hours == (1, 5)


def test_from_json_rejects_unknown_keys_naming_the_accepted_ones() -> None:
    with pytest.raises(InvalidInput, match=r"unknown owner policy keys \['min_charge'\]; accepted: opt_in, min_soc"):
        OwnerPolicy.from_json({"min_charge": 0.3})


def test_from_json_rejects_a_non_object() -> None:
    with pytest.raises(InvalidInput, match="must be a JSON object, got list"):
        OwnerPolicy.from_json([0.2])  # type: ignore[arg-type]
