"""The policy form's fields to an OwnerPolicy and back, and a message naming each bad field."""

from __future__ import annotations

import pytest

from fleetgrid.vehicle.policy import OwnerPolicy
from fleetgrid.web.policy_form import PolicyForm

GOOD = {"opt_in": "on", "min_soc_percent": "35", "hours_start": "22", "hours_end": "7", "cellular_cap_mib": "512",
        "allow_cellular": "on"}


def test_a_policy_round_trips_through_the_form():
    policy = OwnerPolicy(min_soc=0.35, plugged_in_only=True, allowed_hours=(22, 7),
                         monthly_cellular_cap_bytes=512 * 1024 * 1024)
    form = PolicyForm.of(policy)
    fields = {"min_soc_percent": form.min_soc_percent, "hours_start": form.hours_start, "hours_end": form.hours_end,
              "cellular_cap_mib": form.cellular_cap_mib, "opt_in": "on", "plugged_in_only": "on",
              "allow_cellular": "on"}
    back = PolicyForm.from_fields(fields)
    assert back.errors == {} and back.policy() == policy


def test_unchecked_boxes_are_false():
    form = PolicyForm.from_fields({k: v for k, v in GOOD.items() if k not in ("opt_in", "allow_cellular")})
    assert form.errors == {}
    assert not form.policy().opt_in and not form.policy().allow_cellular


@pytest.mark.parametrize(("field", "value", "message"), [
    ("min_soc_percent", "101", "minimum charge (%) 101 is out of range; accepted: a whole number from 0 to 100"),
    ("min_soc_percent", "half", "minimum charge (%) 'half' is not a number"),
    ("hours_start", "24", "start hour 24 is out of range; accepted: a whole number from 0 to 23"),
    ("hours_end", "22", "start and end hour must differ"),
    ("cellular_cap_mib", "-1", "monthly cellular data cap (MiB) -1 is out of range; accepted: a whole number >= 0"),
    ("cellular_cap_mib", "", "monthly cellular data cap (MiB) '' is not a number"),
])
def test_each_bad_field_is_named_with_what_it_accepts(field, value, message):
    form = PolicyForm.from_fields(GOOD | {"hours_start": "22", "hours_end": "7"} | {field: value})
    assert message in form.errors[field]
    assert getattr(form, field) == value  # the page shows what was typed, to correct it
