"""Audit a coordinator's leases table after a benchmark: was any unit leased to two cars at once?

A unit (one replica of one work unit, ``units.unit_id``) counts as leased twice when two of its leases both
completed, or when two of its leases were open at the same time. A lease is open from ``issued_at`` until it was
closed (``closed_at``); an expired one until its deadline at the latest (the car lost it then, even if the sweep
closed it later); one still marked active until its deadline. A unit re-issued after its lease expired, failed or
was handed back is not leased twice: its leases follow one another.
"""

from __future__ import annotations

from collections import defaultdict

__all__ = ["audit_leases"]


def _open_until(state: str, deadline: float, closed_at: float | None) -> float:
    if state == "active" or closed_at is None:
        return deadline
    if state == "expired":
        return min(deadline, closed_at)
    return closed_at


def leased_twice(rows: list[tuple[str, str, float, float, float | None]]) -> dict:
    """``rows``: (unit_id, state, issued_at, deadline, closed_at) of every lease. Pure, so it is easy to check."""
    by_unit: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for unit_id, state, issued_at, deadline, closed_at in rows:
        by_unit[unit_id].append((issued_at, _open_until(state, deadline, closed_at), state))
    completed_twice, overlapping = set(), set()
    for unit_id, leases in by_unit.items():
        if sum(state == "completed" for *_, state in leases) > 1:
            completed_twice.add(unit_id)
        open_until = float("-inf")
        for issued_at, until, _ in sorted(leases):
            if issued_at < open_until:
                overlapping.add(unit_id)
            open_until = max(open_until, until)
    return {
        "units_leased_twice": len(completed_twice | overlapping),
        "units_completed_twice": len(completed_twice),
        "units_with_overlapping_leases": len(overlapping),
        "units_leased": len(by_unit),
        "units_reissued": sum(len(leases) > 1 for leases in by_unit.values()),
        "leases": len(rows),
    }


def audit_leases(db_url: str) -> dict:
    """:func:`leased_twice` over the leases table of the database at ``db_url`` (sqlite:/// or postgresql://)."""
    from sqlalchemy import create_engine, select

    from fleetgrid.coordinator.store.schema import leases
    from fleetgrid.coordinator.store.sql import engine_url

    engine = create_engine(engine_url(db_url))
    try:
        with engine.connect() as c:
            rows = c.execute(select(leases.c.unit_id, leases.c.state, leases.c.issued_at, leases.c.deadline,
                                    leases.c.closed_at)).all()
    finally:
        engine.dispose()
    return leased_twice([tuple(r) for r in rows])
