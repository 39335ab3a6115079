"""Work one store makes leasable reaches the listeners of other stores on the same PostgreSQL database, only once
its transaction commits, and never its own; SQLite has nothing to listen for."""

from __future__ import annotations

import queue
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from fleetgrid.coordinator.store import JobRecord, UnitRecord, VehicleRecord, engine_url, open_store

D1 = "a" * 64
WAIT_S = 60.0  # generous: a notification normally arrives within milliseconds

LISTENERS = ("SELECT pid FROM pg_stat_activity WHERE application_name = 'fleetgrid-listener' "
             "AND datname = current_database() AND query LIKE 'LISTEN%'")


def _job(store, job_id: str, n_units: int) -> None:
    if store.tenant_by_token_hash("hash-acme") is None:
        store.add_tenant("acme", "hash-acme", 0.0)
    store.create_job(
        JobRecord(job_id=job_id, tenant="acme", name=job_id, kind="inference", model="mnist1d-cnn", spec={},
                  items=10 * n_units, units_total=n_units, created_at=1.0),
        [UnitRecord(unit_id=f"{job_id}:{i}:0", job_id=job_id, idx=i, replica=0, start_item=10 * i,
                    end_item=10 * i + 10, input_digest=D1, input_format="npy") for i in range(n_units)],
    )


def _offer(job_id: str, idx: int, vehicle_id: str) -> UnitRecord:
    return UnitRecord(unit_id=f"{job_id}:t{idx}", job_id=job_id, idx=idx, replica=0, start_item=0, end_item=1,
                      input_digest=D1, input_format="train", target_vehicle=vehicle_id, offer_expires=1e12)


class Heard:
    """What one store's listener passes on, in order."""

    def __init__(self) -> None:
        self.items: queue.Queue[tuple[int | None, tuple[str, ...]]] = queue.Queue()

    def __call__(self, units: int | None, vehicles: tuple[str, ...]) -> None:
        self.items.put((units, vehicles))

    def next(self) -> tuple[int | None, tuple[str, ...]]:
        return self.items.get(timeout=WAIT_S)

    def until(self, wanted: tuple[int | None, tuple[str, ...]]) -> list[tuple[int | None, tuple[str, ...]]]:
        """Everything heard up to and including ``wanted``."""
        heard = [self.next()]
        while heard[-1] != wanted:
            heard.append(self.next())
        return heard


def _wait_for(predicate, what: str):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {WAIT_S} s waiting for {what}")


@pytest.mark.postgres
def test_work_made_by_one_store_wakes_the_listeners_of_another(postgres_url):
    listening, writing = open_store(postgres_url), open_store(postgres_url)
    heard = Heard()
    stop = listening.listen_for_work(heard)
    engine = create_engine(engine_url(postgres_url))
    try:
        _wait_for(lambda: _rows(engine, LISTENERS), "the listener to LISTEN")

        _job(writing, "job-1", 3)
        assert heard.next() == (3, ())  # new units: how many

        writing.offer_units([_offer("job-1", 10, "v-2"), _offer("job-1", 11, "v-1")])
        assert heard.next() == (0, ("v-1", "v-2"))  # offers: to whom, not how many

        writing.add_vehicle(VehicleRecord(vehicle_id="v-9", name="v-9", hardware="ai4", credential_hash="h",
                                          enrolled_at=1.0))
        lease, _ = writing.acquire("v-9", 10.0, 100.0, "lease-1")
        writing.release(lease.lease_id, "handed_back", 11.0, preempted=True)
        assert heard.next() == (1, ())  # a unit back to pending
        lease, _ = writing.acquire("v-9", 12.0, 100.0, "lease-2")
        writing.release(lease.lease_id, "failed", 13.0, preempted=False, requeue=False)  # cancelled: no new work

        with pytest.raises(IntegrityError):  # a transaction that rolls back announces nothing
            _job(writing, "job-1", 5)
        _job(listening, "job-own", 4)  # the listener's own store: its coordinator woke its cars itself
        _job(writing, "job-2", 2)
        assert heard.next() == (2, ())  # nothing came between the release and this
    finally:
        stop()
        engine.dispose()
        listening.close()
        writing.close()


@pytest.mark.postgres
def test_the_listener_reconnects_when_its_connection_is_dropped(postgres_url):
    listening, writing = open_store(postgres_url), open_store(postgres_url)
    heard = Heard()
    stop = listening.listen_for_work(heard)
    engine = create_engine(engine_url(postgres_url))
    try:
        (first,) = _wait_for(lambda: _rows(engine, LISTENERS), "the listener to LISTEN")
        with engine.connect() as c:
            assert c.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar()
        _wait_for(lambda: [pid for pid in _rows(engine, LISTENERS) if pid != first], "the listener to reconnect")
        assert heard.next() == (None, ())  # what was sent while it was away is lost: every waiting car looks once
        _job(writing, "job-1", 2)
        assert heard.next() == (2, ())
    finally:
        stop()
        engine.dispose()
        listening.close()
        writing.close()


def test_a_sqlite_store_has_nothing_to_listen_for(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        heard = Heard()
        stop = store.listen_for_work(heard)
        _job(store, "job-1", 2)
        stop()
        assert heard.items.empty()
    finally:
        store.close()


def _rows(engine, query: str) -> list:
    with engine.connect() as c:
        return list(c.execute(text(query)).scalars())
