"""The SQL store: SQLite by default (embedded, zero set-up), PostgreSQL when given a ``postgresql://`` URL.

Every state transition is an UPDATE conditional on the state it leaves, and its row count says whether this call
made it: two coordinators on one PostgreSQL database (or two sweeps) never apply one transition twice. Write
transactions on SQLite start with BEGIN IMMEDIATE, so what they read is still true when they write.
"""

from __future__ import annotations

import functools
import math
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Numeric,
    and_,
    bindparam,
    cast,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.dml import Insert

from ...errors import Conflict, InvalidInput, NotFound
from . import migrate, notify
from .base import JobRecord, LeaseRecord, LedgerRecord, OnWork, Store, TenantRecord, UnitRecord, VehicleRecord
from .group_commit import GroupCommit
from .schema import (
    LIVE_JOB_STATES,
    accepted,
    artifact_owners,
    artifacts,
    jobs,
    leases,
    ledger,
    secrets,
    tenants,
    units,
    vehicles,
)
from .sql_artifacts import ArtifactRows
from .sql_billing import BillingRows
from .sql_cycle import CycleRows, CycleSQL
from .sql_gangs import GangRows
from .sql_history import HistoryRows
from .sql_identity import IdentityRows
from .sql_offers import OfferRows
from .sql_reputation import ReputationRows
from .sql_secagg import SecAggRows
from .sqlite_lock import SQLiteFileLock

__all__ = ["POOL_SIZE", "SQLStore", "engine_url"]

T = TypeVar("T")

POOL_SIZE = 48
"""PostgreSQL connections kept open: as many as threads that run store calls at once (the event loop's executor
and the route thread pool), so none waits for a connection while another waits for it."""

_ANALYZE_AFTER = 1000
"""A job adding at least this many units refreshes the planner's statistics (PostgreSQL)."""
_INT_CAP = 2**63 - 1
"""What a ledger sum too large for a float64 reads as (it cannot happen with rows the wire models bound)."""


def engine_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and route them to the psycopg 3 driver."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith(("sqlite://", "postgresql+")):
        return url
    raise InvalidInput(
        f"database URL {url.split('://')[0]!r}:// is not supported; use sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # The driver must not open transactions on its own (it would BEGIN DEFERRED, lazily, before the first write
    # only): SQLStore._write does, so a transaction's reads and writes see one state.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    # WAL lets readers proceed during a write; NORMAL sync is durable across process crashes (not power loss).
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def _sum_without_overflow(dialect: str, col: Any) -> Any:
    """SUM that cannot raise: SQLite's total() is a float (its sum() of integers raises past 2**63), and on
    PostgreSQL a sum of numeric is exact (its sum() of floats raises past 1.8e308)."""
    if dialect == "sqlite":
        return func.total(col)
    return func.coalesce(func.sum(cast(col, Numeric)), 0)


def _job(row: Row) -> JobRecord:
    m = row._mapping
    return JobRecord(
        job_id=m["job_id"], tenant=m["tenant"], name=m["name"], kind=m["kind"], model=m["model"], spec=m["spec"],
        items=m["items"], units_total=m["units_total"], created_at=m["created_at"], state=m["state"],
        units_done=m["units_done"], reissued_units=m["reissued_units"], preemptions=m["preemptions"],
        finished_at=m["finished_at"], result_digest=m["result_digest"], error=m["error"],
        checkpoint_digest=m["checkpoint_digest"], driver=m.get("driver"),
    )


def _unit(row: Row) -> UnitRecord:
    m = row._mapping
    return UnitRecord(**{k: m[k] for k in UnitRecord.__slots__ if k in m})


def _lease(row: Row) -> LeaseRecord:
    m = row._mapping
    return LeaseRecord(**{k: m[k] for k in LeaseRecord.__slots__})


def _vehicle(row: Row) -> VehicleRecord:
    m = row._mapping
    return VehicleRecord(**{k: m[k] for k in VehicleRecord.__slots__})


class SQLStore(CycleRows, ArtifactRows, OfferRows, GangRows, BillingRows, IdentityRows, ReputationRows, HistoryRows,
               SecAggRows, Store):
    """SQLAlchemy Core over SQLite or PostgreSQL. Each public method runs in its own transaction."""

    def __init__(self, url: str, *, create: bool = True, exclusive: bool = True) -> None:
        """``create``: create the schema, or migrate it to the current one. ``exclusive`` (SQLite files): refuse to
        open a file another store holds (:class:`DatabaseInUse`); only tests of cross-process safety turn it off."""
        self.url = engine_url(url)
        # One connection for each thread that may hold one: the app's thread pools (see CoordinatorConfig.threads).
        # (SQLite's default of 5 + 10 overflow made the store's threads queue for a connection, and closed and
        # reopened the overflow ones after every call.)
        pooled: dict[str, Any] = {"pool_size": POOL_SIZE, "max_overflow": POOL_SIZE}
        if self.url.startswith("postgresql"):
            pooled["pool_pre_ping"] = True
        elif ":memory:" in self.url or self.url in ("sqlite://", "sqlite:///"):
            pooled = {}  # one in-memory database per connection: SQLAlchemy's own pool for it
        self.engine: Engine = create_engine(self.url, future=True, **pooled)
        self._lock: SQLiteFileLock | None = None
        self._group: GroupCommit | None = None
        self._group_lock = threading.Lock()
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._announces = self.engine.dialect.name == "postgresql"
        """Whether transactions that make work leasable NOTIFY the other coordinators (:mod:`.notify`)."""
        self.origin = uuid.uuid4().hex[:12]
        """This store in those notifications: its own listener ignores them."""
        if self._sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            database = self.engine.url.database
            if exclusive and database and database != ":memory:":
                self._lock = SQLiteFileLock(Path(database).resolve())
                self._lock.acquire()
                self.single_process = True
        try:
            if create:
                with self._write() as c:
                    migrate.upgrade(c)
            self._prepare_hot_statements()
        except BaseException:
            self.close()
            raise

    def _prepare_hot_statements(self) -> None:
        """Build the statements used often once; building SQLAlchemy expressions per call costs more than running
        them on SQLite. Those of the lease cycle itself are plain SQL (:mod:`.sql_cycle`)."""
        self._cycle = CycleSQL(self.engine.dialect.name)
        self._q_report_state = (
            update(vehicles).where(vehicles.c.vehicle_id == bindparam("vid"))
            .values(state=bindparam("state"), eligible=bindparam("eligible"), last_seen=bindparam("seen"))
        )
        self._q_job = select(jobs).where(jobs.c.job_id == bindparam("jid"))
        self._q_lease = select(leases).where(leases.c.lease_id == bindparam("lid"))
        self._q_unit = select(units).where(units.c.unit_id == bindparam("uid"))
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            self._q_add_artifact: Insert = pg_insert(artifacts).on_conflict_do_nothing()
            self._q_add_owner: Insert = pg_insert(artifact_owners).on_conflict_do_nothing()
            self._q_consume: Insert = pg_insert(accepted).on_conflict_do_nothing()
        else:
            self._q_add_artifact = insert(artifacts).prefix_with("OR IGNORE")
            self._q_add_owner = insert(artifact_owners).prefix_with("OR IGNORE")
            self._q_consume = insert(accepted).prefix_with("OR IGNORE")
        self._q_owned_by = select(artifact_owners.c.owner).where(
            artifact_owners.c.digest == bindparam("digest"), artifact_owners.c.owner == bindparam("owner")
        )
        self._q_notify = select(func.pg_notify(notify.CHANNEL, bindparam("payload")))

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A write transaction. On SQLite it takes the write lock before its first read: a deferred one would read,
        then find another process had written since (two coordinators leasing one unit), or fail to upgrade its
        lock. (Issued here rather than from a "begin" event: any engine event listener costs every statement.)"""
        with self.engine.begin() as c:
            if self._sqlite:
                c.exec_driver_sql("BEGIN IMMEDIATE")
            yield c

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """The store's write transaction: the running batch's, on the batching thread (see :meth:`batched`); else
        a transaction of its own, which on SQLite takes its turn between batches."""
        group = self._group
        if group is not None:
            bound = group.bound
            if bound is not None:
                yield bound
                return
            if self._sqlite:
                with group.turn(), self._begin() as c:
                    yield c
                return
        with self._begin() as c:
            yield c

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection to read on: inside a batch, the batch's own (it sees what the batch wrote so far)."""
        bound = self._group.bound if self._group is not None else None
        if bound is not None:
            yield bound
            return
        with self.engine.connect() as c:
            yield c

    @staticmethod
    @contextmanager
    def _savepoint(c: Connection) -> Iterator[None]:
        """One operation of a batch: its statements are undone alone if it raises. (On the DBAPI cursor: these
        two statements per lease cycle through SQLAlchemy's nested transactions cost more than the cycle's SQL.)"""
        cursor = c.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("SAVEPOINT cycle")
        try:
            yield
        except BaseException:
            cursor.execute("ROLLBACK TO SAVEPOINT cycle")
            cursor.execute("RELEASE SAVEPOINT cycle")
            raise
        cursor.execute("RELEASE SAVEPOINT cycle")

    def batched(self, fn: Callable[[], T]) -> Future[T]:
        with self._group_lock:
            if self._group is None:
                self._group = GroupCommit(self._begin, self._savepoint, name="store-group-commit")
        return self._group.submit(fn)

    def after_commit(self, fn: Callable[[], None]) -> None:
        if self._group is None or not self._group.after_commit(fn):
            fn()

    def _announce(self, c: Connection, units: int, vehicles: Iterable[str] = ()) -> None:
        """Tell the other coordinators on this database, when ``c``'s transaction commits, that ``units`` units
        anyone may take and work offered to ``vehicles`` became leasable."""
        named = sorted(set(vehicles))
        if self._announces and (units > 0 or named):
            for payload in notify.encode(self.origin, units, named):
                c.execute(self._q_notify, {"payload": payload})

    def _announce_units(self, c: Connection, unit_list: Sequence[UnitRecord]) -> None:
        targets = [u.target_vehicle for u in unit_list if u.target_vehicle is not None]
        self._announce(c, len(unit_list) - len(targets), targets)

    def listen_for_work(self, on_work: OnWork) -> Callable[[], None]:
        if not self._announces:
            return super().listen_for_work(on_work)
        from .listener import WorkListener  # needs psycopg, which only PostgreSQL installs need

        args, params = self.engine.dialect.create_connect_args(self.engine.url)
        params.pop("context", None)  # SQLAlchemy's type adapters: this connection reads strings only
        return WorkListener(dict(params, conninfo=" ".join(args)), self.origin, on_work).start().stop

    def close(self) -> None:
        if self._group is not None:
            self._group.close()
            self._group = None
        self.engine.dispose()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # --- secrets and tenants ------------------------------------------------------------------------------------
    def get_secret(self, name: str) -> str | None:
        with self._read() as c:
            return c.execute(select(secrets.c.value_hash).where(secrets.c.name == name)).scalar()

    def set_secret(self, name: str, value_hash: str) -> None:
        with self._write() as c:
            if c.execute(update(secrets).where(secrets.c.name == name).values(value_hash=value_hash)).rowcount == 0:
                c.execute(insert(secrets).values(name=name, value_hash=value_hash))

    def add_tenant(self, name: str, token_hash: str, now: float, *, replace: bool = False) -> None:
        try:
            with self._write() as c:
                if replace and c.execute(
                    update(tenants).where(tenants.c.name == name).values(token_hash=token_hash)
                ).rowcount:
                    return
                c.execute(insert(tenants).values(name=name, token_hash=token_hash, created_at=now))
        except IntegrityError as exc:
            raise Conflict(f"tenant {name!r} already exists; choose another name") from exc

    def tenant_by_token_hash(self, token_hash: str) -> str | None:
        with self._read() as c:
            return c.execute(select(tenants.c.name).where(tenants.c.token_hash == token_hash)).scalar()

    # --- vehicles -----------------------------------------------------------------------------------------------
    def add_vehicle(self, vehicle: VehicleRecord) -> None:
        with self._write() as c:
            c.execute(insert(vehicles).values(**{k: getattr(vehicle, k) for k in VehicleRecord.__slots__}))

    def get_vehicle(self, vehicle_id: str) -> VehicleRecord | None:
        with self._read() as c:
            row = c.execute(select(vehicles).where(vehicles.c.vehicle_id == vehicle_id)).first()
        return _vehicle(row) if row else None

    def list_vehicles(self) -> list[VehicleRecord]:
        with self._read() as c:
            return [_vehicle(r) for r in c.execute(select(vehicles).order_by(vehicles.c.enrolled_at))]

    def revoke_vehicle(self, vehicle_id: str) -> bool:
        with self._write() as c:
            revoke = update(vehicles).where(vehicles.c.vehicle_id == vehicle_id).values(revoked=True)
            return c.execute(revoke).rowcount > 0

    def report_state(self, vehicle_id: str, state: dict[str, Any], eligible: bool, now: float) -> None:
        with self._write() as c:
            c.execute(
                update(vehicles).where(vehicles.c.vehicle_id == vehicle_id)
                .values(state=state, eligible=eligible, last_seen=now)
            )

    def report_states(self, rows: Sequence[tuple[str, dict[str, Any], bool, float]]) -> None:
        if not rows:
            return
        with self._write() as c:
            c.execute(self._q_report_state, [{"vid": v, "state": s, "eligible": e, "seen": at} for v, s, e, at in rows])

    # --- jobs and units -----------------------------------------------------------------------------------------
    def create_job(self, job: JobRecord, unit_list: list[UnitRecord],
                   artifacts: Sequence[tuple[str, int]] = ()) -> None:
        values = {k: getattr(job, k) for k in JobRecord.__slots__}
        values["model_file"] = job.spec.get("model_file")
        with self._write() as c:
            if artifacts:
                self._add_artifacts(c, artifacts, f"tenant:{job.tenant}", job.created_at)
            c.execute(insert(jobs).values(**values))
            if unit_list:
                c.execute(insert(units), [self._unit_values(u) for u in unit_list])
                self._announce_units(c, unit_list)
        if not self._sqlite and len(unit_list) >= _ANALYZE_AFTER:
            self._analyze_units()

    def _analyze_units(self) -> None:
        """Refresh PostgreSQL's statistics of the units table after a job added many. Until autovacuum does (a
        minute or more later), the planner believes the few pending units it last counted and, to lease a unit,
        sorts every pending one instead of walking the (state, seq) index to the first: measured 45-90 ms instead
        of 0.05 ms per lease with 20,000 pending units."""
        with self.engine.connect() as c:
            c.exec_driver_sql("ANALYZE units")
            c.commit()

    @staticmethod
    def _unit_values(u: UnitRecord) -> dict[str, Any]:
        return {k: getattr(u, k) for k in UnitRecord.__slots__}

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._read() as c:
            row = c.execute(self._q_job, {"jid": job_id}).first()
        return _job(row) if row else None

    def list_jobs(self, tenant: str | None = None) -> list[JobRecord]:
        query = select(jobs).order_by(jobs.c.created_at)
        if tenant is not None:
            query = query.where(jobs.c.tenant == tenant)
        with self._read() as c:
            return [_job(r) for r in c.execute(query)]

    def units_of(self, job_id: str, idx: int | None = None) -> list[UnitRecord]:
        query = select(units).where(units.c.job_id == job_id).order_by(units.c.idx, units.c.replica)
        if idx is not None:
            query = query.where(units.c.idx == idx)
        with self._read() as c:
            return [_unit(r) for r in c.execute(query)]

    def count_units(self, job_id: str, state: str) -> int:
        query = select(func.count()).select_from(units).where(units.c.job_id == job_id, units.c.state == state)
        with self._read() as c:
            return int(c.execute(query).scalar() or 0)

    def get_unit(self, unit_id: str) -> UnitRecord | None:
        with self._read() as c:
            row = c.execute(self._q_unit, {"uid": unit_id}).first()
        return _unit(row) if row else None

    def add_units(self, unit_list: list[UnitRecord]) -> None:
        with self._write() as c:
            c.execute(insert(units), [self._unit_values(u) for u in unit_list])
            self._announce_units(c, unit_list)

    def accept_unit(self, job_id: str, idx: int, result_digest: str) -> bool:
        with self._write() as c:
            return self._accept(c, job_id, idx, result_digest, replicated=True) is not None

    def accepted_results(self, job_id: str) -> list[tuple[int, str]]:
        query = select(accepted.c.idx, accepted.c.result_digest).where(accepted.c.job_id == job_id)
        with self._read() as c:
            return [(r.idx, r.result_digest) for r in c.execute(query.order_by(accepted.c.idx))]

    def finish_job(self, job_id: str, state: str, now: float, result_digest: str | None = None,
                   error: str | None = None, *, meter: Callable[[LeaseRecord], LedgerRecord] | None = None) -> bool:
        with self._write() as c:
            closed = c.execute(
                update(jobs).where(jobs.c.job_id == job_id, jobs.c.state.in_(LIVE_JOB_STATES))
                .values(state=state, finished_at=now, result_digest=result_digest, error=error)
            ).rowcount
            if not closed:  # finished before (by another process, or a racing request): its outcome stands
                return False
            self._end_secagg_rounds(c, job_id)
            c.execute(
                update(units)
                .where(units.c.job_id == job_id, units.c.state.in_(("pending", "leased")))
                .values(state="cancelled", held_until=None)
            )
            cancel = (update(leases).where(leases.c.job_id == job_id, leases.c.state == "active")
                      .values(state="cancelled", closed_at=now))
            if meter is None:
                c.execute(cancel)
            else:  # the rows this statement closed, so a lease closed meanwhile by another is not metered twice
                cancelled = [_lease(r) for r in c.execute(cancel.returning(*leases.c))]
                self._insert_ledger(c, [meter(lease) for lease in cancelled])
        return True

    @staticmethod
    def _insert_ledger(c: Connection, entries: Sequence[LedgerRecord]) -> None:
        if entries:
            c.execute(insert(ledger), [{k: getattr(e, k) for k in LedgerRecord.__slots__} for e in entries])

    def save_checkpoint(self, job_id: str, version: int, digest: str,
                        consumed: Sequence[tuple[int, str]] = (), driver: str | None = None) -> bool:
        cond = [jobs.c.job_id == job_id]
        if driver is not None:
            cond += [jobs.c.driver == driver, jobs.c.units_done < version]
        with self._write() as c:
            if not c.execute(update(jobs).where(*cond).values(units_done=version, checkpoint_digest=digest)).rowcount:
                return False
            if consumed:
                c.execute(self._q_consume, [{"job_id": job_id, "idx": idx, "result_digest": d} for idx, d in consumed])
        return True


    # --- leases -------------------------------------------------------------------------------------------------
    def get_lease(self, lease_id: str) -> LeaseRecord | None:
        with self._read() as c:
            row = c.execute(self._q_lease, {"lid": lease_id}).first()
        return _lease(row) if row else None

    def active_leases(self, vehicle_id: str | None = None) -> list[LeaseRecord]:
        query = select(leases).where(leases.c.state == "active")
        if vehicle_id is not None:
            query = query.where(leases.c.vehicle_id == vehicle_id)
        with self._read() as c:
            return [_lease(r) for r in c.execute(query)]

    def renew(self, lease_id: str, deadline: float) -> None:
        with self._write() as c:
            c.execute(
                update(leases).where(leases.c.lease_id == lease_id, leases.c.state == "active")
                .values(deadline=deadline)
            )

    def record_progress(self, lease_id: str, done_items: int, checkpoint_digest: str | None) -> None:
        if checkpoint_digest is None:
            return
        with self._write() as c:
            # Only while the lease is active: its unit may since have been re-issued to another car.
            unit_id = (select(leases.c.unit_id).where(leases.c.lease_id == lease_id, leases.c.state == "active")
                       .scalar_subquery())
            c.execute(
                update(units)
                .where(units.c.unit_id == unit_id, units.c.checkpoint_items < done_items)
                .values(checkpoint_items=done_items, checkpoint_digest=checkpoint_digest)
            )

    def release(self, lease_id: str, state: str, now: float, *, preempted: bool,
                checkpoint: tuple[int, str] | None = None, ledger_entry: LedgerRecord | None = None,
                requeue: bool = True, gang_usage: Callable[[LeaseRecord], LedgerRecord] | None = None) -> bool:
        with self._write() as c:
            row = c.execute(self._q_lease, {"lid": lease_id}).first()
            if row is None:
                raise NotFound(f"lease {lease_id!r} does not exist")
            lease = _lease(row)
            gang = self._gang_of(c, lease.unit_id) if gang_usage is not None else None
            if gang is not None and not self._lock_gang(c, gang):
                return False  # a batch must not wait for the gang: whoever holds it, or the sweeper, closes it
            if not c.execute(
                update(leases).where(leases.c.lease_id == lease_id, leases.c.state == "active")
                .values(state=state, closed_at=now)
            ).rowcount:
                return False  # closed meanwhile (a completion, another sweep): its unit is not ours to re-queue
            values: dict[str, Any] = {"state": "pending"}
            if checkpoint is not None:
                values.update(checkpoint_items=checkpoint[0], checkpoint_digest=checkpoint[1])
            unit_cond = and_(units.c.unit_id == lease.unit_id, units.c.state == "leased")
            if checkpoint is not None:
                c.execute(update(units).where(unit_cond, units.c.checkpoint_items <= checkpoint[0]).values(**values))
            c.execute(update(units).where(unit_cond).values(state="pending" if requeue else "cancelled"))
            requeued = int(requeue)
            if gang is not None:
                assert gang_usage is not None
                requeued = self._restart_gang(c, gang, now, gang_usage)
            if requeued:  # the lease was active, so its unit (and a gang's others) are pending now
                self._announce(c, requeued)  # (a unit offered to one car is never re-queued: requeue=False)
            c.execute(
                update(jobs).where(jobs.c.job_id == lease.job_id)
                .values(reissued_units=jobs.c.reissued_units + requeued,
                        preemptions=jobs.c.preemptions + int(preempted))
            )
            if ledger_entry is not None:
                c.execute(insert(ledger).values(**{k: getattr(ledger_entry, k) for k in LedgerRecord.__slots__}))
        return True

    def expired_leases(self, now: float) -> list[LeaseRecord]:
        query = select(leases).where(leases.c.state == "active", leases.c.deadline < now)
        with self._read() as c:
            return [_lease(r) for r in c.execute(query)]

    # --- metering and overview ----------------------------------------------------------------------------------
    def record_ledger(self, entry: LedgerRecord) -> None:
        with self._write() as c:
            if c.execute(select(ledger.c.lease_id).where(ledger.c.lease_id == entry.lease_id)).first() is None:
                c.execute(insert(ledger).values(**{k: getattr(entry, k) for k in LedgerRecord.__slots__}))

    def ledger_totals(self, start: float | None = None, end: float | None = None) -> list[dict[str, Any]]:
        total = functools.partial(_sum_without_overflow, self.engine.dialect.name)
        query = (
            select(
                ledger.c.vehicle_id,
                func.count().label("units"),
                total(ledger.c["items"]).label("items"),
                total(ledger.c.examples).label("examples"),
                total(ledger.c.steps).label("steps"),
                total(ledger.c.compute_s).label("compute_s"),
                total(ledger.c.cellular_bytes).label("cellular_bytes"),
                total(ledger.c.wifi_bytes).label("wifi_bytes"),
            )
            .group_by(ledger.c.vehicle_id)
            .order_by(ledger.c.vehicle_id)
        )
        if start is not None:
            query = query.where(ledger.c.at >= start)
        if end is not None:
            query = query.where(ledger.c.at < end)
        with self._read() as c:
            rows = [dict(r._mapping) for r in c.execute(query)]
        for row in rows:
            for key in ("items", "examples", "steps", "cellular_bytes", "wifi_bytes"):
                row[key] = int(row[key]) if math.isfinite(row[key]) else _INT_CAP
            row["compute_s"] = min(float(row["compute_s"]), sys.float_info.max)
        return rows

    def counts(self) -> dict[str, Any]:
        with self._read() as c:
            by_state: dict[str, int] = dict(c.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all())
            pending = c.execute(select(func.count()).select_from(units).where(units.c.state == "pending")).scalar()
            active = c.execute(select(func.count()).select_from(leases).where(leases.c.state == "active")).scalar()
        return {"jobs": by_state, "units_pending": int(pending or 0), "leases_in_flight": int(active or 0)}

    # --- tenant administration --------------------------------------------------------------------------------
    # A revoked tenant keeps its row (its jobs refer to it) with a token hash no sha256 can equal.
    def list_tenants(self) -> list[TenantRecord]:
        query = select(tenants.c.name, tenants.c.created_at, tenants.c.token_hash).order_by(tenants.c.name)
        with self._read() as c:
            return [TenantRecord(name=r.name, created_at=r.created_at, revoked=r.token_hash.startswith(_REVOKED))
                    for r in c.execute(query)]

    def revoke_tenant(self, name: str) -> str | None:
        with self.engine.begin() as c:
            token_hash = c.execute(select(tenants.c.token_hash).where(tenants.c.name == name)).scalar()
            if token_hash is not None and not token_hash.startswith(_REVOKED):
                marker = _REVOKED + uuid.uuid4().hex  # unique, as the column must be
                c.execute(update(tenants).where(tenants.c.name == name).values(token_hash=marker))
            return token_hash


_REVOKED = "revoked:"
