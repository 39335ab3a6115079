"""Group commit: many cars' lease cycles in one transaction, each undone alone if refused, acknowledged only once
committed, and durable: a coordinator SIGKILLed right after acknowledging completions has every one of them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import threading

import httpx
import numpy as np
import pytest
from harness import ENROLL, OPERATOR, TENANT, start_coordinator

from fleetgrid.coordinator.store import JobRecord, LedgerRecord, UnitRecord, VehicleRecord
from fleetgrid.coordinator.store.sql import SQLStore
from fleetgrid.errors import Conflict


def _store(tmp_path) -> SQLStore:
    store = SQLStore(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.add_tenant("acme", "h", 0.0)
    store.add_vehicle(VehicleRecord(vehicle_id="v1", name="car", hardware="ai4", credential_hash="x",
                                    enrolled_at=0.0))
    job = JobRecord(job_id="j1", tenant="acme", name="j", kind="inference", model="m", spec={}, items=4,
                    units_total=4, created_at=0.0, state="running")
    store.create_job(job, [UnitRecord(unit_id=f"j1:{i}:0", job_id="j1", idx=i, replica=0, start_item=i,
                                      end_item=i + 1, input_digest="d" * 64, input_format="npy") for i in range(4)])
    return store


def _lease_and_complete(store: SQLStore, lease_id: str, *, refuse: bool = False) -> str:
    got = store.acquire("v1", 1.0, 100.0, lease_id)
    assert got is not None
    lease, unit = got
    entry = LedgerRecord(lease_id=lease_id, vehicle_id="v1", job_id="j1", items=1, compute_s=0.1,
                         cellular_bytes=0, wifi_bytes=0, at=2.0)
    digest = hashlib.sha256(lease_id.encode()).hexdigest()
    store.complete(lease, unit, digest, entry, 2.0, accept=True, blob=lease_id.encode())
    if refuse:
        raise Conflict("refused after writing: everything this operation wrote must be undone")
    return unit.unit_id


def test_a_refused_operation_is_undone_alone_and_the_rest_of_its_batch_commits(tmp_path):
    store = _store(tmp_path)
    try:
        futures = [store.batched(lambda i=i: _lease_and_complete(store, f"lease-{i}", refuse=i == 1))
                   for i in range(3)]
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result(timeout=60))
            except Conflict:
                outcomes.append("refused")
        assert outcomes[1] == "refused" and outcomes[0] != outcomes[2]
        assert store.get_lease("lease-1") is None  # its lease, unit, blob and ledger row were rolled back
        assert store.result_blob(hashlib.sha256(b"lease-1").hexdigest()) is None
        assert store.result_blob(hashlib.sha256(b"lease-0").hexdigest()) == b"lease-0"
        job = store.get_job("j1")
        assert job is not None and job.units_done == 2
        assert store.count_units("j1", "pending") == 2
    finally:
        store.close()


def test_follow_ups_run_after_the_commit_and_not_for_a_refused_operation(tmp_path):
    store = _store(tmp_path)
    seen: list[tuple[str, bool]] = []

    def op(name: str, refuse: bool) -> None:
        def after() -> None:  # by now the batch is committed: another connection sees the lease
            seen.append((name, SQLStore.get_lease(store, name) is not None))

        store.after_commit(after)
        _lease_and_complete(store, name, refuse=refuse)

    try:
        futures = [store.batched(lambda: op("lease-a", False)), store.batched(lambda: op("lease-b", True))]
        futures[0].result(timeout=60)
        with pytest.raises(Conflict):
            futures[1].result(timeout=60)
        assert seen == [("lease-a", True)]
    finally:
        store.close()


def test_other_writers_take_turns_with_batches_and_are_not_starved(tmp_path):
    """A writer outside the batching thread (a submission, the sweeper) gets the SQLite write lock between two
    batches even while cars keep the batching thread busy."""
    store = _store(tmp_path)
    stop = threading.Event()

    def busy_car() -> None:
        while not stop.is_set():
            store.batched(lambda: store.get_job("j1")).result(timeout=60)

    cars = [threading.Thread(target=busy_car) for _ in range(4)]
    try:
        for car in cars:
            car.start()
        for i in range(20):  # each waits its turn; none times out on the lock
            store.set_secret(f"s{i}", "hash")
        assert all(store.get_secret(f"s{i}") == "hash" for i in range(20))
    finally:
        stop.set()
        for car in cars:
            car.join(60)
        store.close()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def test_a_sigkill_right_after_acknowledged_completions_loses_none_of_them(tmp_path):
    """Twenty cars complete units concurrently (their completions share transactions); the coordinator is killed
    the moment the last acknowledgement arrives. After a restart every acknowledged lease is completed, metered
    and its result kept: once a last car finishes the rest, the job's result holds every one of them."""
    coordinator = start_coordinator(tmp_path / "coord", lease_ttl_s=600.0)
    parked = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": True, "eligible": True}
    tenant = {"authorization": f"Bearer {TENANT}"}
    results: dict[int, np.ndarray] = {}

    async def car(api: httpx.AsyncClient, name: str, units: int) -> None:
        r = await api.post("/vehicles/enroll", json={"enrollment_token": ENROLL, "name": name, "hardware": "ai4"})
        cred = {"authorization": f"Bearer {r.json()['credential']}"}
        for _ in range(units):
            r = await api.post("/leases", json={"state": parked, "wait_s": 30}, headers=cred)
            assert r.status_code == 200, r.text
            grant = r.json()
            out = np.full((1, 10), float(grant["unit_index"]), np.float32)
            data = _npy(out)
            body = {"result": hashlib.sha256(data).hexdigest(), "inline": base64.b64encode(data).decode()}
            done = await api.post(f"/leases/{grant['lease_id']}/complete", json=body, headers=cred)
            assert done.status_code == 200, done.text
            results[grant["unit_index"]] = out

    async def cars(names: list[str], units: int) -> None:
        async with httpx.AsyncClient(base_url=coordinator.url + "/v1", timeout=60) as api:
            await asyncio.gather(*(car(api, name, units) for name in names))

    try:
        inputs = _npy(np.zeros((24, 40), np.float32))
        digest = hashlib.sha256(inputs).hexdigest()
        with httpx.Client(base_url=coordinator.url + "/v1", timeout=60) as api:
            assert api.put(f"/artifacts/{digest}", content=inputs, headers=tenant).status_code in (200, 201)
            r = api.post("/jobs", headers=tenant, json={"model": "mnist1d-cnn", "inputs": digest,
                                                        "input_format": "npy", "unit_items": 1})
            assert r.status_code == 201, r.text
            job_id = r.json()["job_id"]
        asyncio.run(cars([f"c{i}" for i in range(20)], 1))
        coordinator.kill()
        coordinator.start()
        with httpx.Client(base_url=coordinator.url + "/v1", timeout=60) as api:
            job = api.get(f"/jobs/{job_id}", headers=tenant).json()
            assert job["units_done"] == 20 and job["state"] == "running", job
            ledger = api.get("/ledger", headers={"authorization": f"Bearer {OPERATOR}"}).json()
            assert sum(e["items"] for e in ledger) == 20, ledger
        asyncio.run(cars(["last"], 4))
        with httpx.Client(base_url=coordinator.url + "/v1", timeout=60) as api:
            job = api.get(f"/jobs/{job_id}", headers=tenant).json()
            assert job["state"] == "done", job
            result = np.load(io.BytesIO(api.get(f"/jobs/{job_id}/result", headers=tenant).content))
        np.testing.assert_array_equal(result, np.concatenate([results[i] for i in range(24)]))
    finally:
        coordinator.stop()


def test_an_operation_whose_caller_gave_up_is_skipped_and_the_thread_lives_on(tmp_path):
    """A caller that cancels its future (an asyncio task cancelled while it waits, as a long-poll whose car hung
    up) does not kill the batching thread: its operation is not run, the others are."""
    store = _store(tmp_path)
    hold, held = threading.Event(), threading.Event()

    def blocker() -> None:
        held.set()
        hold.wait(60)

    try:
        first = store.batched(blocker)
        assert held.wait(60)  # the thread is busy: the next operations queue behind it
        ran: list[str] = []
        gave_up = store.batched(lambda: ran.append("cancelled"))
        kept = store.batched(lambda: ran.append("kept"))
        assert gave_up.cancel()
        hold.set()
        first.result(timeout=60)
        kept.result(timeout=60)
        assert ran == ["kept"]
        assert store.batched(lambda: "alive").result(timeout=60) == "alive"
    finally:
        hold.set()
        store.close()
