"""The work model every workload shares: lease and unit states with their transitions, placement kinds, and the
usage row written when a lease closes."""

from fleetgrid.core.leases import (
    CLOSED_LEASE_STATES,
    LeaseState,
    Placement,
    UnitState,
    check_lease_transition,
    check_unit_transition,
)
from fleetgrid.core.usage import Usage, held_s

__all__ = [
    "CLOSED_LEASE_STATES",
    "LeaseState",
    "Placement",
    "UnitState",
    "Usage",
    "check_lease_transition",
    "check_unit_transition",
    "held_s",
]
