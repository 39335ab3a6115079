"""The SQL store's gangs: units leased to k different cars all at once, or to none (a mixin of
:class:`fleetgrid.coordinator.store.sql.SQLStore`, kept apart from the lease cycle, which never sees a gang unit).

How a gang forms: a car that finds no other work takes a free *seat* of the oldest forming gang (its pending
member is held for the car: ``vehicle_id``, ``held_until``), and its long-poll waits. The car that takes the last
free seat leases every member at once, each to the car holding it, in one transaction; the others pick their lease
up when they next ask (their long-poll is woken). A seat is kept while its car keeps asking and lapses
``hold_until`` after it last asked; a car that takes other work or turns ineligible gives it up. No lease of a
member exists until its gang is full, so no car starts before all k are held.

When any member's lease ends other than by completion, :meth:`GangRows._restart_gang` (called by ``release``
inside its transaction) cancels the other members' leases and puts every member not done back to pending.

Atomicity: on SQLite every write transaction holds the database's one write lock. On PostgreSQL each transaction
that forms or restarts a gang first takes a transaction-scoped advisory lock on the gang, so two replicas never
both fill one gang or hand one member twice. Inside a group-commit batch (which holds other cars' row locks) the
lock is only tried, never waited for, so batches on two replicas cannot deadlock on it: a car that finds its gang
busy tries the next one or asks again later.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import insert, or_, select, text, update
from sqlalchemy.engine import Connection, Row

from ...errors import Conflict
from .base import GangSeat, LeaseRecord, LedgerRecord, UnitRecord
from .group_commit import GroupCommit
from .schema import leases, units, vehicles

__all__ = ["GangRows"]

_LOCK_CLASS = 0x67616E67  # 'gang': the advisory locks' first key, apart from any other advisory lock
_JOIN_TRIES = 4
_OPEN = ("pending", "leased")


def _unit(row: Row) -> UnitRecord:
    m = row._mapping
    return UnitRecord(**{k: m[k] for k in UnitRecord.__slots__})


def _lease(row: Row) -> LeaseRecord:
    m = row._mapping
    return LeaseRecord(**{k: m[k] for k in LeaseRecord.__slots__})


class GangRows:
    _sqlite: bool
    _group: GroupCommit | None
    _write: Callable[[], AbstractContextManager[Connection]]
    _read: Callable[[], AbstractContextManager[Connection]]
    _insert_ledger: Callable[..., None]
    _announce: Callable[..., None]

    def gangs_live(self) -> bool:
        query = select(units.c.unit_id).where(units.c.gang.is_not(None), units.c.state.in_(_OPEN)).limit(1)
        with self._read() as c:
            return c.execute(query).first() is not None

    def gang_seat(self, vehicle_id: str, now: float) -> GangSeat | None:
        held = (select(units).where(units.c.vehicle_id == vehicle_id, units.c.held_until.is_not(None),
                                    units.c.state.in_(_OPEN)).order_by(units.c.seq))
        with self._read() as c:
            rows = c.execute(held).all()
        seat = None
        for row in rows:
            if row.state == "pending":
                if row.held_until >= now:
                    seat = GangSeat(_unit(row))
                continue
            granted = self._pick_up(_unit(row), vehicle_id)
            if granted is not None:
                return granted
        return seat

    def _pick_up(self, unit: UnitRecord, vehicle_id: str) -> GangSeat | None:
        """The car's lease of a member of a gang that filled, handed over once (the update says who did)."""
        with self._write() as c:
            row = c.execute(select(leases).where(leases.c.unit_id == unit.unit_id, leases.c.vehicle_id == vehicle_id,
                                                 leases.c.state == "active")).first()
            if row is None or c.execute(
                update(units).where(units.c.unit_id == unit.unit_id, units.c.state == "leased",
                                    units.c.held_until.is_not(None)).values(held_until=None)
            ).rowcount != 1:
                return None
        return GangSeat(unit, lease=_lease(row))

    def join_gang(self, vehicle_id: str, now: float, hold_until: float, deadline: float,
                  new_lease_id: Callable[[], str]) -> GangSeat | None:
        with self._write() as c:
            mine = c.execute(select(units).where(
                units.c.vehicle_id == vehicle_id, units.c.held_until >= now, units.c.state == "pending",
                units.c.gang.is_not(None)).limit(1)).first()
            if mine is not None:  # the car is still here: it keeps its seat
                c.execute(update(units).where(units.c.unit_id == mine.unit_id, units.c.state == "pending")
                          .values(held_until=hold_until))
                return GangSeat(_unit(mine))
            revoked = c.execute(select(vehicles.c.revoked).where(vehicles.c.vehicle_id == vehicle_id)).scalar()
            if revoked is None or revoked:
                return None
            tried: list[str] = []
            for _ in range(_JOIN_TRIES):
                forming = select(units.c.gang).where(
                    units.c.state == "pending", units.c.gang.is_not(None),
                    or_(units.c.held_until.is_(None), units.c.held_until < now))
                if tried:
                    forming = forming.where(units.c.gang.not_in(tried))
                gang = c.execute(forming.order_by(units.c.seq).limit(1)).scalar()
                if gang is None:
                    return None
                tried.append(gang)
                if not self._lock_gang(c, gang):
                    continue
                seat = self._take_seat(c, gang, vehicle_id, now, hold_until, deadline, new_lease_id)
                if seat is not None:
                    return seat
        return None

    def _take_seat(self, c: Connection, gang: str, vehicle_id: str, now: float, hold_until: float,
                   deadline: float, new_lease_id: Callable[[], str]) -> GangSeat | None:
        """A free seat of ``gang`` (locked) for the car; all of the gang's leases if it was the last one."""
        members = [(_unit(r), r.held_until) for r in
                   c.execute(select(units).where(units.c.gang == gang).order_by(units.c.idx))]
        live = [(u, until) for u, until in members if u.state in _OPEN]
        if not live or any(u.state == "leased" for u, _ in live):
            return None  # finished, or already full and running
        holders = {u.unit_id: u.vehicle_id or "" for u, until in live if until is not None and until >= now}
        free = [u for u, _ in live if u.unit_id not in holders]
        if vehicle_id in holders.values() or not free:
            return None
        seat = free[0]
        if len(free) > 1:
            c.execute(update(units).where(units.c.unit_id == seat.unit_id, units.c.state == "pending")
                      .values(vehicle_id=vehicle_id, held_until=hold_until))
            seat.vehicle_id = vehicle_id
            return GangSeat(seat)
        mine: tuple[LeaseRecord, UnitRecord] | None = None
        others: list[str] = []
        for unit, _ in live:
            car = holders.get(unit.unit_id, vehicle_id)
            # Until its car picks it up, a leased member keeps a mark in held_until (see gang_seat).
            if c.execute(update(units).where(units.c.unit_id == unit.unit_id, units.c.state == "pending").values(
                    state="leased", attempts=units.c.attempts + 1, vehicle_id=car,
                    held_until=None if car == vehicle_id else now)).rowcount != 1:
                raise Conflict(f"member {unit.unit_id} of gang {gang} changed while the gang was locked; "
                               "nothing was leased")
            lease = LeaseRecord(lease_id=new_lease_id(), unit_id=unit.unit_id, job_id=unit.job_id, vehicle_id=car,
                                issued_at=now, deadline=deadline,
                                resumed_items=unit.checkpoint_items if unit.checkpoint_digest else 0)
            c.execute(insert(leases).values(**{k: getattr(lease, k) for k in LeaseRecord.__slots__}))
            unit.state, unit.attempts, unit.vehicle_id = "leased", unit.attempts + 1, car
            if car == vehicle_id:
                mine = (lease, unit)
            else:
                others.append(car)
        assert mine is not None
        self._announce(c, 0, others)  # cars holding seats may be waiting on another replica
        return GangSeat(mine[1], lease=mine[0], others=others)

    def drop_holds(self, vehicle_id: str) -> None:
        with self._write() as c:
            c.execute(update(units).where(units.c.vehicle_id == vehicle_id, units.c.held_until.is_not(None),
                                          units.c.state == "pending").values(held_until=None))

    # --- used inside SQLStore.release -------------------------------------------------------------------------
    def _gang_of(self, c: Connection, unit_id: str) -> str | None:
        return c.execute(select(units.c.gang).where(units.c.unit_id == unit_id)).scalar()

    def _lock_gang(self, c: Connection, gang: str) -> bool:
        """Take the gang's advisory lock for this transaction (PostgreSQL): waiting for it outside a batch, only
        trying inside one. True if held (always, on SQLite, whose write lock this transaction already holds)."""
        if self._sqlite:
            return True
        params: dict[str, Any] = {"cls": _LOCK_CLASS, "gang": gang}
        if self._group is not None and self._group.bound is c:
            return bool(c.execute(text("SELECT pg_try_advisory_xact_lock(:cls, hashtext(:gang))"), params).scalar())
        c.execute(text("SELECT pg_advisory_xact_lock(:cls, hashtext(:gang))"), params)
        return True

    def _restart_gang(self, c: Connection, gang: str, now: float,
                      usage: Callable[[LeaseRecord], LedgerRecord]) -> int:
        """Cancel the gang's active leases (metered by ``usage``) and put its members not done back to pending;
        returns how many members are pending now."""
        members = select(units.c.unit_id).where(units.c.gang == gang)
        cancelled = [_lease(r) for r in c.execute(
            update(leases).where(leases.c.unit_id.in_(members), leases.c.state == "active")
            .values(state="cancelled", closed_at=now).returning(*leases.c))]
        self._insert_ledger(c, [usage(lease) for lease in cancelled])
        return c.execute(update(units).where(units.c.gang == gang, units.c.state.in_(_OPEN))
                         .values(state="pending", held_until=None)).rowcount
