"""The SQL store's rows for work offered to one car (training shares), units added to or retired from a running
job (serving replicas), and which replica drives a job: a mixin of :class:`fleetgrid.coordinator.store.sql.SQLStore`,
kept apart from the lease cycle."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.engine import Connection, Engine

from .base import LeaseRecord, LedgerRecord, UnitRecord
from .schema import LIVE_JOB_STATES, accepted, jobs, leases, units, vehicles
from .sql_gangs import _lease

__all__ = ["OfferRows"]



class OfferRows:
    engine: Engine
    _write: Callable[[], AbstractContextManager[Connection]]
    _read: Callable[[], AbstractContextManager[Connection]]
    add_units: Callable[[list[UnitRecord]], None]
    _insert_ledger: Callable[[Connection, list[LedgerRecord]], None]

    def offer_units(self, unit_list: list[UnitRecord]) -> None:
        self.add_units(unit_list)

    def live_offers(self, job_id: str, now: float) -> list[str]:
        query = select(units.c.target_vehicle).where(
            units.c.job_id == job_id, units.c.target_vehicle.is_not(None),
            or_(units.c.state == "leased", and_(units.c.state == "pending", units.c.offer_expires >= now)),
        )
        with self._read() as c:
            return [v for v in c.execute(query).scalars() if v is not None]

    def cancel_open_units(self, job_id: str, now: float) -> int:
        with self._write() as c:
            c.execute(
                update(leases).where(leases.c.job_id == job_id, leases.c.state == "active")
                .values(state="cancelled", closed_at=now)
            )
            return c.execute(
                update(units).where(units.c.job_id == job_id, units.c.state.in_(("pending", "leased")))
                .values(state="cancelled")
            ).rowcount

    def retire_unit(self, unit_id: str, now: float, meter: Callable[[LeaseRecord], LedgerRecord]) -> bool:
        with self._write() as c:
            retired = c.execute(update(units).where(units.c.unit_id == unit_id,
                                                    units.c.state.in_(("pending", "leased")))
                                .values(state="cancelled")).rowcount
            if not retired:
                return False
            closed = c.execute(update(leases).where(leases.c.unit_id == unit_id, leases.c.state == "active")
                               .values(state="cancelled", closed_at=now).returning(*leases.c))
            self._insert_ledger(c, [meter(_lease(row)) for row in closed])
            return True

    def cancel_expired_offers(self, now: float) -> int:
        with self._write() as c:
            return c.execute(
                update(units).where(units.c.state == "pending", units.c.target_vehicle.is_not(None),
                                    units.c.offer_expires < now)
                .values(state="cancelled")
            ).rowcount

    def unconsumed_results(self, job_id: str) -> list[UnitRecord]:
        taken = exists(select(accepted.c.idx).where(accepted.c.job_id == units.c.job_id, accepted.c.idx == units.c.idx))
        query = (select(units).where(units.c.job_id == job_id, units.c.state == "done", ~taken)
                 .order_by(units.c.seq))
        with self._read() as c:
            return [UnitRecord(**{k: r._mapping[k] for k in UnitRecord.__slots__}) for r in c.execute(query)]

    def claim_job(self, job_id: str, replica: str, now: float, until: float) -> bool:
        with self._write() as c:
            return c.execute(
                update(jobs).where(
                    jobs.c.job_id == job_id, jobs.c.state.in_(LIVE_JOB_STATES),
                    or_(jobs.c.driver.is_(None), jobs.c.driver == replica, jobs.c.driver_until < now),
                ).values(driver=replica, driver_until=until)
            ).rowcount == 1

    def drop_claim(self, job_id: str, replica: str) -> None:
        with self._write() as c:
            c.execute(update(jobs).where(jobs.c.job_id == job_id, jobs.c.driver == replica)
                      .values(driver=None, driver_until=None))

    def recently_eligible(self, since: float) -> list[str]:
        query = select(vehicles.c.vehicle_id).where(vehicles.c.eligible, ~vehicles.c.revoked,
                                                     vehicles.c.last_seen >= since)
        with self._read() as c:
            return list(c.execute(query).scalars())

    def next_unit_idx(self, job_id: str) -> int:
        with self._read() as c:
            top = c.execute(select(func.max(units.c.idx)).where(units.c.job_id == job_id)).scalar()
        return 0 if top is None else int(top) + 1
