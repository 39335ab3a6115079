"""Accounting of a lease's time: what a resident lease is worth, and what a lease taken away had cost its car."""

from __future__ import annotations

import pytest

from fleetgrid.core import held_s


@pytest.mark.parametrize(("now", "expected"), [
    (100.0, 0.0),  # closed as it was issued
    (130.0, 30.0),  # within its deadline: up to now
    (160.0, 60.0),  # at its deadline
    (500.0, 20.0),  # long past it: up to its last renewal (deadline 160, each renewal granting 40 s)
])
def test_a_lease_is_held_until_it_closes_or_until_its_car_last_renewed_it(now, expected):
    assert held_s(issued_at=100.0, deadline=160.0, now=now, renewal_s=40.0) == expected


def test_a_lease_never_renewed_and_long_expired_was_held_no_time():
    assert held_s(issued_at=100.0, deadline=130.0, now=900.0, renewal_s=60.0) == 0.0
