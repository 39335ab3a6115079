"""Schema migrations: whatever schema a database has, a store opens it at the current one (schema.py), data intact."""

from __future__ import annotations

import threading

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, select

from fleetgrid.coordinator.store import LedgerRecord, SQLStore, engine_url
from fleetgrid.coordinator.store.migrate import BASELINE, alembic_config, head
from fleetgrid.coordinator.store.schema import ledger, metadata

D1, D2, D3 = "a" * 64, "b" * 64, "c" * 64


def _inspect(url: str) -> tuple[str | None, list]:
    """The database's revision, and how its schema differs from schema.py (nothing, if migrations are right)."""
    engine = create_engine(engine_url(url))
    try:
        with engine.connect() as c:
            context = MigrationContext.configure(c)
            return context.get_current_revision(), compare_metadata(context, metadata)
    finally:
        engine.dispose()


def _baseline_database(url: str, *, versioned: bool) -> None:
    """A database at the baseline schema with a running job (units done, leased and pending, one lease active),
    a training job and their ledger rows. Unversioned, it is what fleetgrid made before it had migrations."""
    engine = create_engine(engine_url(url))
    with engine.begin() as c:
        command.upgrade(alembic_config(c), BASELINE)
        if not versioned:
            c.exec_driver_sql("DROP TABLE alembic_version")
        old = MetaData()
        old.reflect(c)
        t = old.tables
        c.execute(t["tenants"].insert(), {"name": "acme", "token_hash": "hash-acme", "created_at": 0.0})
        c.execute(t["vehicles"].insert(), {"vehicle_id": "v-1", "name": "car", "hardware": "ai4",
                                           "credential_hash": "h", "enrolled_at": 0.0, "revoked": False,
                                           "eligible": True})
        job = {"tenant": "acme", "model": "mnist1d-cnn", "spec": {"redundancy": {"replicas": 1, "quorum": 1}},
               "created_at": 1.0, "reissued_units": 0, "preemptions": 0}
        c.execute(t["jobs"].insert(), [
            {**job, "job_id": "job-1", "name": "infer", "kind": "inference", "items": 30, "units_total": 3,
             "state": "running", "units_done": 1},
            {**job, "job_id": "job-t", "name": "train", "kind": "train", "items": 0, "units_total": 0,
             "state": "running", "units_done": 4},
        ])
        c.execute(t["units"].insert(), [
            {"unit_id": f"job-1:{i}:0", "job_id": "job-1", "idx": i, "replica": 0, "replicas": 1,
             "start_item": 10 * i, "end_item": 10 * i + 10, "input_digest": D1, "input_format": "npy",
             "state": state, "attempts": int(state != "pending"), "vehicle_id": None if state == "pending" else "v-1",
             "checkpoint_items": 0, "result_digest": D2 if state == "done" else None}
            for i, state in enumerate(("done", "leased", "pending"))
        ])
        c.execute(t["accepted_units"].insert(), {"job_id": "job-1", "idx": 0, "result_digest": D2})
        c.execute(t["leases"].insert(), [
            {"lease_id": "l0", "unit_id": "job-1:0:0", "job_id": "job-1", "vehicle_id": "v-1", "issued_at": 1.0,
             "deadline": 100.0, "state": "completed", "result_digest": D2, "closed_at": 2.0},
            {"lease_id": "l1", "unit_id": "job-1:1:0", "job_id": "job-1", "vehicle_id": "v-1", "issued_at": 2.0,
             "deadline": 100.0, "state": "active", "result_digest": None, "closed_at": None},
        ])
        row = {"vehicle_id": "v-1", "compute_s": 1.5, "cellular_bytes": 100, "wifi_bytes": 1000, "at": 2.0,
               "accepted": True}
        c.execute(t["ledger"].insert(), [{**row, "lease_id": "l0", "job_id": "job-1", "items": 10},
                                         {**row, "lease_id": "tl-1", "job_id": "job-t", "items": 64}])
    engine.dispose()


@pytest.mark.parametrize("versioned", [True, False], ids=["at-baseline", "before-alembic"])
def test_an_old_database_is_upgraded_with_its_data(store_url, versioned):
    _baseline_database(store_url, versioned=versioned)
    assert _inspect(store_url)[0] == (BASELINE if versioned else None)

    store = SQLStore(store_url)
    try:
        assert _inspect(store_url) == (head(), [])
        job = store.get_job("job-1")
        assert (job.state, job.units_done, job.units_total, job.spec["redundancy"]["quorum"]) == ("running", 1, 3, 1)
        assert [u.state for u in store.units_of("job-1")] == ["done", "leased", "pending"]
        assert store.accepted_results("job-1") == [(0, D2)]
        with store.engine.connect() as c:
            rows = c.execute(select(ledger.c.lease_id, ledger.c.workload, ledger.c.examples, ledger.c.steps))
            usage = {r.lease_id: (r.workload, r.examples, r.steps) for r in rows}
        assert usage == {"l0": ("inference", 0, 0), "tl-1": ("train", 64, 0)}  # back-filled from the jobs

        # Still usable: the pending unit is leased, the active lease completes, training rows are metered.
        lease, unit = store.acquire("v-1", 3.0, 100.0, "l2")
        assert (unit.idx, unit.attempts) == (2, 1)
        l1, u1, _ = store.lease_context("l1")
        entry = LedgerRecord(lease_id="l1", vehicle_id="v-1", job_id="job-1", items=10, compute_s=1.0,
                             cellular_bytes=0, wifi_bytes=10, at=4.0, workload="inference")
        assert store.complete(l1, u1, D3, entry, 4.0, accept=True).units_done == 2
        store.record_ledger(LedgerRecord(lease_id="tl-2", vehicle_id="v-1", job_id="job-t", items=3_000_000_000,
                                         compute_s=1.0, cellular_bytes=0, wifi_bytes=0, at=5.0, workload="train",
                                         examples=3_000_000_000, steps=40))
        (totals,) = store.ledger_totals()
        assert (totals["units"], totals["items"], totals["wifi_bytes"]) == (4, 3_000_000_084, 2010)
    finally:
        store.close()


def test_a_new_database_has_the_schema_of_schema_py_and_migrates_both_ways(store_url):
    SQLStore(store_url).close()
    assert _inspect(store_url) == (head(), [])
    engine = create_engine(engine_url(store_url))
    with engine.begin() as c:
        command.downgrade(alembic_config(c), BASELINE)
    with engine.begin() as c:
        command.upgrade(alembic_config(c), "head")
    engine.dispose()
    assert _inspect(store_url) == (head(), [])


def test_reopening_a_current_database_changes_nothing(store_url):
    first = SQLStore(store_url)
    first.add_tenant("acme", "h", 0.0)
    first.close()
    second = SQLStore(store_url)
    try:
        assert second.tenant_by_token_hash("h") == "acme"
        assert _inspect(store_url) == (head(), [])
    finally:
        second.close()


@pytest.mark.postgres
def test_replicas_starting_together_on_a_new_database_both_open_it(postgres_url):
    start, opened, failed = threading.Barrier(3), [], []

    def open_store() -> None:
        start.wait()
        try:
            opened.append(SQLStore(postgres_url))
        except Exception as exc:  # noqa: BLE001 - reported below
            failed.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for store in opened:
        store.close()
    assert failed == []
    assert _inspect(postgres_url) == (head(), [])
