"""The lease and unit lifecycle: the only transitions, and refusals that name both states."""

from __future__ import annotations

import pytest

from fleetgrid.core import CLOSED_LEASE_STATES, LeaseState, UnitState, check_lease_transition, check_unit_transition
from fleetgrid.errors import Conflict


def test_an_active_lease_may_close_every_way_and_a_closed_one_never_moves():
    for closed in CLOSED_LEASE_STATES:
        assert check_lease_transition("l1", LeaseState.ACTIVE, closed) is closed
        for target in LeaseState:
            with pytest.raises(Conflict, match=f"lease l1 is {closed}, and a {closed} lease cannot become {target}"):
                check_lease_transition("l1", closed, target)
    with pytest.raises(Conflict):
        check_lease_transition("l1", LeaseState.ACTIVE, LeaseState.ACTIVE)


@pytest.mark.parametrize(("current", "target", "allowed"), [
    (UnitState.PENDING, UnitState.LEASED, True),
    (UnitState.LEASED, UnitState.PENDING, True),  # handed back, failed or expired: re-issued
    (UnitState.LEASED, UnitState.DONE, True),
    (UnitState.PENDING, UnitState.CANCELLED, True),
    (UnitState.PENDING, UnitState.DONE, False),  # a result needs a lease
    (UnitState.DONE, UnitState.PENDING, False),
    (UnitState.CANCELLED, UnitState.LEASED, False),
])
def test_unit_transitions(current, target, allowed):
    if allowed:
        assert check_unit_transition("u1", current, target) is target
    else:
        with pytest.raises(Conflict, match=f"unit u1 is {current} and cannot become {target}"):
            check_unit_transition("u1", current, target)


def test_an_unknown_state_is_refused_by_name():
    with pytest.raises(ValueError, match="'lost'"):
        check_lease_transition("l1", "lost", LeaseState.ACTIVE)
