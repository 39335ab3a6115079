"""Several processes, each with its own store on one database, leasing from one job at once: every unit is leased
exactly once. And a second store (a second coordinator) on one SQLite file is refused."""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter

import pytest

from fleetgrid.coordinator.store import JobRecord, SQLStore, UnitRecord, VehicleRecord, open_store
from fleetgrid.errors import DatabaseInUse

UNITS = 300
PROCESSES = 4


def _lease_until_empty(url: str, vehicle_id: str, start, results) -> None:
    """A child process: open a store of its own, wait for the others, then lease until no work is left."""
    store = SQLStore(url, create=False, exclusive=False)
    try:
        taken = []
        start.wait()
        while (got := store.acquire(vehicle_id, 1.0, 100.0, f"{vehicle_id}-{len(taken)}")) is not None:
            taken.append(got[1].unit_id)
        results.put((vehicle_id, taken))
    finally:
        store.close()


def _seed(store: SQLStore, vehicles: list[str]) -> list[str]:
    store.add_tenant("acme", "hash-acme", 0.0)
    for vid in vehicles:
        store.add_vehicle(VehicleRecord(vehicle_id=vid, name=vid, hardware="ai4", credential_hash="h", enrolled_at=0.0))
    store.create_job(
        JobRecord(job_id="job-1", tenant="acme", name="j", kind="inference", model="mnist1d-cnn", spec={},
                  items=UNITS, units_total=UNITS, created_at=0.0),
        [UnitRecord(unit_id=f"job-1:{i}:0", job_id="job-1", idx=i, replica=0, start_item=i, end_item=i + 1,
                    input_digest="a" * 64, input_format="npy") for i in range(UNITS)],
    )
    return [f"job-1:{i}:0" for i in range(UNITS)]


def test_processes_leasing_concurrently_never_share_a_unit(store_url):
    vehicles = [f"v-{i}" for i in range(PROCESSES)]
    seed = SQLStore(store_url, exclusive=False)
    try:
        all_units = _seed(seed, vehicles)
    finally:
        seed.close()
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(PROCESSES), ctx.Queue()
    children = [ctx.Process(target=_lease_until_empty, args=(store_url, vid, start, results)) for vid in vehicles]
    for child in children:
        child.start()
    taken = dict(results.get(timeout=120) for _ in children)
    for child in children:
        child.join(30)
        assert child.exitcode == 0

    leased = Counter(unit for units in taken.values() for unit in units)
    twice = sorted(unit for unit, n in leased.items() if n > 1)
    assert twice == [], f"{len(twice)} of {UNITS} units were leased more than once"
    assert sorted(leased) == sorted(all_units)
    check = SQLStore(store_url, exclusive=False)
    try:
        units = check.units_of("job-1")
        assert {(u.state, u.attempts) for u in units} == {("leased", 1)}
        assert check.counts()["leases_in_flight"] == UNITS
        assert {u.unit_id: u.vehicle_id for u in units} == {u: v for v, us in taken.items() for u in us}
    finally:
        check.close()


def test_a_second_store_on_one_sqlite_file_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'coordinator.db'}"
    first = open_store(url)
    with pytest.raises(DatabaseInUse) as refused:
        open_store(url)
    message = refused.value.message
    assert f"database {tmp_path / 'coordinator.db'} is in use by another coordinator (pid {os.getpid()})" in message
    assert "use PostgreSQL" in message
    first.close()
    open_store(url).close()  # the lock goes with the store that held it


def test_a_missing_sqlite_directory_is_named(tmp_path):
    from fleetgrid.errors import InvalidInput

    with pytest.raises(InvalidInput, match=f"directory {tmp_path / 'nope'} does not exist"):
        open_store(f"sqlite:///{tmp_path / 'nope' / 'coordinator.db'}")
