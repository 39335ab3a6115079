"""The SQL store's rows for trust in cars: reputation counters, automatic suspension, and the re-opening of a caught
car's unconfirmed results (a mixin of :class:`fleetgrid.coordinator.store.sql.SQLStore`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import aliased

from ..reputation import Reputation, Verdict
from .base import UnitRecord
from .schema import accepted, jobs, leases, reputations, units

__all__ = ["ReputationRows"]

_URGENT_LOCK = 0x66_6C_65_65_74_01
"""PostgreSQL advisory lock taken while a transaction numbers units ahead of the queue, so two coordinators never
pick the same number."""


def _reputation(row: Any) -> Reputation:
    m = row._mapping
    return Reputation(m["vehicle_id"], m["agreed"], m["streak"], m["faults"], m["implausible"], m["updated_at"])


class ReputationRows:
    _write: Callable[[], AbstractContextManager[Connection]]
    _read: Callable[[], AbstractContextManager[Connection]]
    _announce_units: Callable[[Connection, Sequence[UnitRecord]], None]
    _unit_values: Callable[[UnitRecord], dict[str, Any]]

    def get_reputation(self, vehicle_id: str) -> Reputation:
        with self._read() as c:
            row = c.execute(select(reputations).where(reputations.c.vehicle_id == vehicle_id)).first()
        return _reputation(row) if row is not None else Reputation(vehicle_id)

    def list_reputations(self) -> list[Reputation]:
        with self._read() as c:
            return [_reputation(r) for r in c.execute(select(reputations).order_by(reputations.c.vehicle_id))]

    def record_verdicts(self, verdicts: Sequence[tuple[str, Verdict]], now: float) -> None:
        if not verdicts:
            return
        with self._write() as c:
            for vehicle_id, verdict in verdicts:
                # Created at zero first, then changed by increments: the change is one statement on the row, so
                # two coordinators recording verdicts for one car at once both count.
                known = select(reputations.c.vehicle_id).where(reputations.c.vehicle_id == vehicle_id)
                if c.execute(known).first() is None:
                    row = {"vehicle_id": vehicle_id, "agreed": 0, "streak": 0, "faults": 0, "implausible": 0,
                           "updated_at": now}
                    # Another coordinator may create the row meanwhile: then its row stands, and the increment
                    # below applies to it.
                    if c.dialect.name == "postgresql":
                        c.execute(pg_insert(reputations).values(**row).on_conflict_do_nothing())
                    else:
                        c.execute(insert(reputations).prefix_with("OR IGNORE").values(**row))
                c.execute(update(reputations).where(reputations.c.vehicle_id == vehicle_id)
                          .values(updated_at=now, **_increments(verdict)))

    def unverified_results(self, vehicle_id: str, kinds: Sequence[str]) -> list[UnitRecord]:
        other = aliased(units)
        confirmations = (select(func.count()).select_from(other)
                         .where(other.c.job_id == units.c.job_id, other.c.idx == units.c.idx, other.c.state == "done")
                         .scalar_subquery())
        query = (
            select(units)
            .join(jobs, jobs.c.job_id == units.c.job_id)
            .join(accepted, and_(accepted.c.job_id == units.c.job_id, accepted.c.idx == units.c.idx,
                                 accepted.c.result_digest == units.c.result_digest))
            .where(units.c.vehicle_id == vehicle_id, units.c.state == "done", jobs.c.state == "running",
                   jobs.c.kind.in_(list(kinds)), confirmations == 1)
            .order_by(units.c.seq)
        )
        with self._read() as c:
            return [UnitRecord(**{k: r._mapping[k] for k in UnitRecord.__slots__}) for r in c.execute(query)]

    def known_answer(self, vehicle_id: str, kinds: Sequence[str]) -> UnitRecord | None:
        other, mine = aliased(units), aliased(units)
        confirmations = (select(func.count()).select_from(other)
                         .where(other.c.job_id == units.c.job_id, other.c.idx == units.c.idx, other.c.state == "done")
                         .scalar_subquery())
        seen = (select(leases.c.lease_id).join(mine, mine.c.unit_id == leases.c.unit_id)
                .where(mine.c.job_id == units.c.job_id, mine.c.idx == units.c.idx, leases.c.vehicle_id == vehicle_id)
                .exists())
        query = (
            select(units)
            .join(jobs, jobs.c.job_id == units.c.job_id)
            .join(accepted, and_(accepted.c.job_id == units.c.job_id, accepted.c.idx == units.c.idx,
                                 accepted.c.result_digest == units.c.result_digest))
            .where(units.c.state == "done", jobs.c.state == "running", jobs.c.kind.in_(list(kinds)),
                   confirmations >= 2, ~seen)
            .order_by(units.c.seq.desc()).limit(1)
        )
        with self._read() as c:
            row = c.execute(query).first()
        return UnitRecord(**{k: row._mapping[k] for k in UnitRecord.__slots__}) if row is not None else None

    def add_urgent_units(self, unit_list: list[UnitRecord]) -> None:
        with self._write() as c:
            self._insert_first(c, unit_list)

    def reopen_unit(self, job_id: str, idx: int, replica: UnitRecord) -> bool:
        with self._write() as c:
            taken = c.execute(delete(accepted).where(
                accepted.c.job_id == job_id, accepted.c.idx == idx,
                select(jobs.c.job_id).where(jobs.c.job_id == job_id, jobs.c.state == "running").exists(),
            )).rowcount
            if not taken:
                return False
            c.execute(update(jobs).where(jobs.c.job_id == job_id).values(units_done=jobs.c.units_done - 1))
            self._insert_first(c, [replica])
        return True

    def _insert_first(self, c: Connection, unit_list: list[UnitRecord]) -> None:
        """Insert units numbered below every unit there is, so the queue (which leases by number) hands them out
        before any other."""
        if c.dialect.name == "postgresql":
            c.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _URGENT_LOCK})
        lowest = min(0, int(c.execute(select(func.min(units.c.seq))).scalar() or 0))
        c.execute(insert(units), [self._unit_values(u) | {"seq": lowest - 1 - i} for i, u in enumerate(unit_list)])
        self._announce_units(c, unit_list)


def _increments(verdict: Verdict) -> dict[str, Any]:
    r = reputations.c
    if verdict is Verdict.AGREED:
        return {"agreed": r.agreed + 1, "streak": r.streak + 1}
    if verdict is Verdict.FAULT:
        return {"faults": r.faults + 1, "streak": 0}
    return {"implausible": r.implausible + 1, "streak": r.streak // 2}
