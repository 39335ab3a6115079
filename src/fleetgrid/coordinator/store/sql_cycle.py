"""The lease cycle's statements (find a lease, complete it, take the next unit) as plain SQL on the driver's cursor.

A car's cycle is about a dozen short statements; run through SQLAlchemy's expression layer, building and caching
them cost more CPU than SQLite spends running them. Here each is written out once per dialect and executed on the
DBAPI cursor of the SQLAlchemy connection, so it joins that connection's transaction (and a group-commit batch).
The semantics are those of :class:`~fleetgrid.coordinator.store.sql.SQLStore`: every transition is an UPDATE
conditional on the state it leaves, and its row count says whether this call made it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy.engine import Connection

from ...core.leases import LeaseState, UnitState
from ...errors import AuthError, Conflict, LeaseExpired, NotFound
from ...protocol import JobState
from .base import JobRecord, LeaseRecord, LedgerRecord, UnitRecord

__all__ = ["CycleRows", "CycleSQL"]

_UNIT = [f.name for f in fields(UnitRecord)]
_LEASE = [f.name for f in fields(LeaseRecord)]
_JOB = [f.name for f in fields(JobRecord)]
_LEDGER = [f.name for f in fields(LedgerRecord)]
_ACQUIRE_TRIES = 8


def _cols(prefix: str, names: Sequence[str]) -> str:
    return ", ".join(f"{prefix}{n}" for n in names)


def _json(value: Any) -> Any:
    """A JSON column's value: SQLite hands back the text, psycopg the decoded value."""
    return json.loads(value) if isinstance(value, str) else value


def _unit(row: Sequence[Any], at: int = 0) -> UnitRecord:
    unit = UnitRecord(*row[at:at + len(_UNIT)])
    unit.payload = _json(unit.payload)
    return unit


def _lease(row: Sequence[Any], at: int = 0) -> LeaseRecord:
    return LeaseRecord(*row[at:at + len(_LEASE)])


def _job(row: Sequence[Any], at: int = 0) -> JobRecord:
    job = JobRecord(*row[at:at + len(_JOB)])
    job.spec = _json(job.spec)
    return job


class CycleSQL:
    """The statements, written for one dialect (``:name`` placeholders; psycopg's ``%(name)s`` on PostgreSQL)."""

    def __init__(self, dialect: str) -> None:
        pg = dialect == "postgresql"
        # The states' names written into the statements come from the lifecycle's enums (quoted for SQL).
        PENDING, LEASED, DONE, CANCELLED = (f"'{s}'" for s in (UnitState.PENDING, UnitState.LEASED, UnitState.DONE,
                                                               UnitState.CANCELLED))
        ACTIVE, COMPLETED = f"'{LeaseState.ACTIVE}'", f"'{LeaseState.COMPLETED}'"
        RUNNING, QUEUED = f"'{JobState.RUNNING}'", f"'{JobState.QUEUED}'"
        skip_locked = " FOR UPDATE OF units SKIP LOCKED" if pg else ""
        ignore, on_conflict = ("", " ON CONFLICT DO NOTHING") if pg else (" OR IGNORE", "")
        may_lease = ("EXISTS (SELECT 1 FROM vehicles WHERE vehicles.vehicle_id = :vid AND NOT vehicles.revoked "
                     "AND NOT vehicles.suspended)")
        mine = ("EXISTS (SELECT 1 FROM leases JOIN units AS other ON other.unit_id = leases.unit_id "
                "WHERE other.job_id = units.job_id AND other.idx = units.idx AND leases.vehicle_id = :vid "
                f"AND leases.state IN ({ACTIVE}, {COMPLETED}))")
        # 'pending' is written into the statements, never bound: psycopg prepares what it runs repeatedly, and a
        # generic plan for ``state = $1`` would sort every pending unit instead of walking (state, seq).
        statements = {
            "lease_context": f"SELECT {_cols('l.', _LEASE)}, {_cols('u.', _UNIT)}, {_cols('j.', _JOB)} "
                             "FROM leases AS l JOIN units AS u ON u.unit_id = l.unit_id "
                             "JOIN jobs AS j ON j.job_id = l.job_id WHERE l.lease_id = :lid",
            # Work offered to this car (a training round's share) goes first while its offer stands; any will do
            # (no ORDER BY, which would tempt PostgreSQL off the (target_vehicle, state) index).
            "offered": f"SELECT {_cols('', _UNIT)} FROM units WHERE target_vehicle = :vid AND state = {PENDING} "
                       f"AND offer_expires >= :now AND {may_lease} LIMIT 1{skip_locked}",
            # Units of a gang are leased only all at once (store/sql_gangs.py).
            "candidate": f"SELECT {_cols('', _UNIT)} FROM units WHERE state = {PENDING} AND target_vehicle IS NULL "
                         f"AND gang IS NULL AND {may_lease} AND (replicas = 1 OR NOT {mine}) "
                         f"ORDER BY seq LIMIT 1{skip_locked}",
            # FOR SHARE on PostgreSQL: a revocation committing meanwhile waits for this lease to commit.
            "revoked": "SELECT revoked, suspended FROM vehicles WHERE vehicle_id = :vid" + (" FOR SHARE" if pg else ""),
            "take_unit": f"UPDATE units SET state = {LEASED}, attempts = attempts + 1, vehicle_id = :vid "
                         f"WHERE unit_id = :uid AND state = {PENDING}",
            "insert_lease": f"INSERT INTO leases ({_cols('', _LEASE)}) VALUES ({_cols(':', _LEASE)})",
            "job_running": f"UPDATE jobs SET state = {RUNNING} WHERE job_id = :jid AND state = {QUEUED}",
            "close_completed": f"UPDATE leases SET state = {COMPLETED}, result_digest = :rd, closed_at = :now "
                               f"WHERE lease_id = :lid AND state = {ACTIVE}",
            "lease_state": "SELECT state, result_digest FROM leases WHERE lease_id = :lid",
            "unit_done": f"UPDATE units SET state = {DONE}, result_digest = :rd WHERE unit_id = :uid "
                         f"AND state = {LEASED}",
            "add_blob": f"INSERT{ignore} INTO result_blobs (digest, data, created_at) VALUES (:rd, :data, :now)"
                        f"{on_conflict}",
            "ledger": f"INSERT INTO ledger ({_cols('', _LEDGER)}) VALUES ({_cols(':', _LEDGER)})",
            "accept": f"INSERT{ignore} INTO accepted_units (job_id, idx, result_digest) VALUES (:jid, :idx, :rd)"
                      f"{on_conflict} RETURNING idx",
            "count_done": "UPDATE jobs SET units_done = units_done + 1 WHERE job_id = :jid "
                          f"RETURNING {_cols('', _JOB)}",
            "job": f"SELECT {_cols('', _JOB)} FROM jobs WHERE job_id = :jid",
            "replicas": "SELECT unit_id, state FROM units WHERE job_id = :jid AND idx = :idx",
            "cancel_unit": f"UPDATE units SET state = {CANCELLED} WHERE unit_id = :uid AND state = {PENDING}",
        }
        if pg:
            # A round trip to the server costs more than a short statement: the writes that follow one decision
            # travel as one statement (data-modifying CTEs). Take a unit and open its lease:
            for name, where in (("take_offered", statements["offered"]), ("take_candidate", statements["candidate"])):
                pick = where.replace(f"SELECT {_cols('', _UNIT)} FROM", "SELECT unit_id FROM", 1)
                statements[name] = (
                    f"WITH pick AS ({pick}), "
                    f"taken AS (UPDATE units SET state = {LEASED}, attempts = attempts + 1, vehicle_id = :vid "
                    f"FROM pick WHERE units.unit_id = pick.unit_id RETURNING {_cols('units.', _UNIT)}), "
                    f"opened AS (INSERT INTO leases ({_cols('', _LEASE)}) SELECT :lid, unit_id, job_id, :vid, :now, "
                    f":deadline, {ACTIVE}, NULL, NULL, CASE WHEN checkpoint_digest IS NULL THEN 0 "
                    "ELSE checkpoint_items END FROM taken) "
                    f"SELECT {_cols('', _UNIT)} FROM taken"
                )
            # ... and, once its lease is closed as completed, the rest of a completion:
            statements["finish"] = (
                f"WITH done AS (UPDATE units SET state = {DONE}, result_digest = :rd WHERE unit_id = :uid "
                f"AND state = {LEASED} RETURNING unit_id), "
                "blob AS (INSERT INTO result_blobs (digest, data, created_at) SELECT :rd, :data, :now "
                "WHERE CAST(:data AS bytea) IS NOT NULL ON CONFLICT DO NOTHING), "
                f"metered AS (INSERT INTO ledger ({_cols('', _LEDGER)}) VALUES ({_cols(':', _LEDGER)})), "
                "took AS (INSERT INTO accepted_units (job_id, idx, result_digest) SELECT :jid, :idx, :rd "
                "WHERE CAST(:accept AS boolean) AND EXISTS (SELECT 1 FROM done) ON CONFLICT DO NOTHING "
                "RETURNING idx), "
                "counted AS (UPDATE jobs SET units_done = units_done + 1 WHERE job_id = :jid "
                f"AND EXISTS (SELECT 1 FROM took) RETURNING {_cols('jobs.', _JOB)}) "
                "SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM took), counted.* "
                "FROM (SELECT 1) AS one LEFT JOIN counted ON true"
            )
            statements = {k: re.sub(r"(?<!:):(\w+)", r"%(\1)s", v) for k, v in statements.items()}
        self.sql = statements
        self.pg = pg


class CycleRows:
    """The lease cycle of :class:`~fleetgrid.coordinator.store.sql.SQLStore` (mixed into it)."""

    _cycle: CycleSQL
    _read: Callable[..., Any]
    _write: Callable[..., Any]

    def _run(self, c: Connection, name: str, params: dict[str, Any]) -> Any:
        """Execute one of :class:`CycleSQL`'s statements on ``c``'s DBAPI cursor (inside ``c``'s transaction)."""
        cursor = c.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(self._cycle.sql[name], params)
        return cursor

    def lease_context(self, lease_id: str) -> tuple[LeaseRecord, UnitRecord, JobRecord] | None:
        with self._read() as c:
            row = self._run(c, "lease_context", {"lid": lease_id}).fetchone()
        if row is None:
            return None
        return _lease(row), _unit(row, len(_LEASE)), _job(row, len(_LEASE) + len(_UNIT))

    def acquire(self, vehicle_id: str, now: float, deadline: float, lease_id: str, *,
                offers: bool = True) -> tuple[LeaseRecord, UnitRecord] | None:
        with self._write() as c:
            if self._cycle_pg:
                # Locks the car's row: a revocation committing meanwhile waits for this lease to commit, so the
                # revoking coordinator's release of the car's leases sees it.
                self._check_may_lease(c, vehicle_id)
            params = {"vid": vehicle_id, "now": now}
            if self._cycle.pg:
                taken = self._take(c, params | {"lid": lease_id, "deadline": deadline}, offers)
                if taken is None:
                    return None
                unit = taken
                lease = LeaseRecord(lease_id=lease_id, unit_id=unit.unit_id, job_id=unit.job_id,
                                    vehicle_id=vehicle_id, issued_at=now, deadline=deadline,
                                    resumed_items=unit.checkpoint_items if unit.checkpoint_digest else 0)
                return lease, unit
            for _ in range(_ACQUIRE_TRIES):
                row = self._run(c, "offered", params).fetchone() if offers else None
                if row is None:
                    row = self._run(c, "candidate", params).fetchone()
                if row is None:
                    self._check_may_lease(c, vehicle_id)  # no work, or none for this car: say which
                    return None
                unit = _unit(row)
                # Conditional: should the candidate have been taken since it was read, take the next one.
                if self._run(c, "take_unit", {"uid": unit.unit_id, "vid": vehicle_id}).rowcount == 1:
                    break
            else:
                return None
            lease = LeaseRecord(lease_id=lease_id, unit_id=unit.unit_id, job_id=unit.job_id, vehicle_id=vehicle_id,
                                issued_at=now, deadline=deadline,
                                resumed_items=unit.checkpoint_items if unit.checkpoint_digest else 0)
            self._run(c, "insert_lease", {k: getattr(lease, k) for k in _LEASE})
        unit.state, unit.attempts, unit.vehicle_id = "leased", unit.attempts + 1, vehicle_id
        return lease, unit

    def _take(self, c: Connection, params: dict[str, Any], offers: bool) -> UnitRecord | None:
        """PostgreSQL: take a unit (one offered to the car first) and open its lease in one statement; the unit as
        taken. SKIP LOCKED: a unit another transaction is taking is passed over, never taken twice."""
        row = self._run(c, "take_offered", params).fetchone() if offers else None
        if row is None:
            row = self._run(c, "take_candidate", params).fetchone()
        return _unit(row) if row is not None else None

    def _check_may_lease(self, c: Connection, vehicle_id: str) -> None:
        row = self._run(c, "revoked", {"vid": vehicle_id}).fetchone()
        if row is None:
            raise NotFound(f"vehicle {vehicle_id!r} is not enrolled; enroll it before leasing work")
        if row[0]:
            raise AuthError(f"vehicle {vehicle_id}'s credential was revoked; enroll again to get a new one")
        if row[1]:
            raise AuthError(f"vehicle {vehicle_id}'s credential is suspended (its results were caught wrong); "
                            "ask the fleet operator to review it")

    def start_job(self, job_id: str) -> None:
        with self._write() as c:
            self._run(c, "job_running", {"jid": job_id})

    @property
    def _cycle_pg(self) -> bool:
        return self._cycle.pg

    def complete(self, lease: LeaseRecord, unit: UnitRecord, result_digest: str, entry: LedgerRecord, now: float,
                 *, accept: bool = False, artifact: tuple[int, str] | None = None,
                 blob: bytes | None = None) -> JobRecord:
        with self._write() as c:
            ids = {"lid": lease.lease_id, "rd": result_digest, "now": now}
            if self._run(c, "close_completed", ids).rowcount != 1:
                now_state, now_result = self._run(c, "lease_state", {"lid": lease.lease_id}).fetchone()
                if now_state == "completed" and now_result == result_digest:  # a racing retry: it counted once
                    lease.state, lease.result_digest = now_state, now_result
                    unit.state, unit.result_digest = "done", now_result
                    return _job(self._run(c, "job", {"jid": unit.job_id}).fetchone())
                error = LeaseExpired if now_state == "expired" else Conflict
                raise error(f"lease {lease.lease_id} is {now_state}, not active, so its result is not accepted; "
                            "lease new work with POST /v1/leases")
            if artifact is not None:
                self._add_artifacts(c, [(result_digest, artifact[0])], artifact[1], now)
            if self._cycle.pg:
                job = self._finish(c, lease, unit, entry, ids, accept=accept, blob=blob)
            else:
                job = self._finish_apart(c, lease, unit, entry, ids, accept=accept, blob=blob)
        lease.state, lease.result_digest, lease.closed_at = "completed", result_digest, now
        unit.state, unit.result_digest = "done", result_digest
        return job

    def _finish_apart(self, c: Connection, lease: LeaseRecord, unit: UnitRecord, entry: LedgerRecord,
                      ids: dict[str, Any], *, accept: bool, blob: bytes | None) -> JobRecord:
        """SQLite: the rest of :meth:`complete`, statement by statement (no round trips to save)."""
        if self._run(c, "unit_done", {"uid": unit.unit_id, "rd": ids["rd"]}).rowcount != 1:
            # Its lease was active, so the unit is leased; anything else is a bug worth stopping for.
            raise Conflict(f"unit {unit.unit_id} of active lease {lease.lease_id} is not leased; nothing recorded")
        if blob is not None:
            self._run(c, "add_blob", ids | {"data": blob})
        self._run(c, "ledger", {k: getattr(entry, k) for k in _LEDGER})
        job = self._accept(c, unit.job_id, unit.idx, ids["rd"], replicated=unit.replicas > 1) if accept else None
        return job if job is not None else _job(self._run(c, "job", {"jid": unit.job_id}).fetchone())

    def _finish(self, c: Connection, lease: LeaseRecord, unit: UnitRecord, entry: LedgerRecord,
                ids: dict[str, Any], *, accept: bool, blob: bytes | None) -> JobRecord:
        """PostgreSQL: the rest of :meth:`complete` in one statement (unit done, blob, ledger row, acceptance)."""
        params = ids | {k: getattr(entry, k) for k in _LEDGER} | {
            "uid": unit.unit_id, "jid": unit.job_id, "idx": unit.idx, "data": blob, "accept": accept}
        row = self._run(c, "finish", params).fetchone()
        done, took = row[0], row[1]
        if done != 1:
            # Its lease was active, so the unit is leased; anything else is a bug worth stopping for.
            raise Conflict(f"unit {unit.unit_id} of active lease {lease.lease_id} is not leased; nothing recorded")
        if not took:  # no quorum decided here, or accepted before
            return _job(self._run(c, "job", {"jid": unit.job_id}).fetchone())
        if unit.replicas > 1:
            for unit_id, state in self._run(c, "replicas", params).fetchall():
                if state == "pending":
                    self._run(c, "cancel_unit", {"uid": unit_id})
        return _job(row, 2)

    def _accept(self, c: Connection, job_id: str, idx: int, result_digest: str, *,
                replicated: bool) -> JobRecord | None:
        """Accept a unit's result; the job after it, or None if the unit was accepted before."""
        params = {"jid": job_id, "idx": idx, "rd": result_digest}
        if self._run(c, "accept", params).fetchone() is None:  # accepted before: the insert was ignored
            return None
        job = _job(self._run(c, "count_done", params).fetchone())
        if replicated:
            # Replicas of an accepted unit that nobody has started are no longer needed. Select them by (job, idx)
            # first: given the state too, SQLite would walk the (state, seq) index over every pending unit.
            for unit_id, state in self._run(c, "replicas", params).fetchall():
                if state == "pending":
                    self._run(c, "cancel_unit", {"uid": unit_id})
        return job

    _add_artifacts: Callable[..., None]
