"""The coordinator app in process (httpx.ASGITransport, lifespan run by hand): failures a real process cannot be
made to have on demand, such as a full disk or a store that dies half-way through a submission."""

from __future__ import annotations

import asyncio
import base64
import errno
import threading
from collections.abc import Awaitable, Callable

import httpx
import numpy as np
import pytest

from fleetgrid.coordinator.app import Coordinator, create_app
from fleetgrid.coordinator.config import CoordinatorConfig
from fleetgrid.coordinator.store import LedgerRecord
from fleetgrid.protocol import JobSubmit
from fleetgrid.workloads.inputs import encode_items
from harness import ENROLL, OPERATOR, TENANT, auth, npy, sha

X = np.random.default_rng(2).normal(size=(50, 40)).astype(np.float32)


@pytest.fixture
def coord(tmp_path):
    config = CoordinatorConfig(data_dir=tmp_path, enroll_token=ENROLL, operator_token=OPERATOR,
                               tenant_tokens={"acme": TENANT}, sweep_interval_s=0.05)
    coordinator = Coordinator(config)
    yield coordinator
    coordinator.store.close()


def serve(coord: Coordinator, scenario: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    """Run ``scenario`` against the app, inside its lifespan, on a fresh event loop."""
    app = create_app(coordinator=coord)

    async def main() -> None:
        async with app.app.router.lifespan_context(app.app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://coordinator/v1", timeout=30) as client:
                await scenario(client)

    asyncio.run(main())


def no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_answers_507(coord, monkeypatch):
    inputs = npy(X)

    async def scenario(client: httpx.AsyncClient) -> None:
        r = await client.put(f"/artifacts/{sha(inputs)}", content=inputs, headers=auth(TENANT))
        assert r.status_code == 201, r.text
        monkeypatch.setattr(coord.artifacts, "_write", no_space)
        more = npy(X + 1.0)
        r = await client.put(f"/artifacts/{sha(more)}", content=more, headers=auth(TENANT))
        assert r.status_code == 507 and r.json()["error"] == "insufficient_storage", r.text
        assert "space" in r.json()["message"]
        r = await client.post("/jobs", headers=auth(TENANT),
                              json={"model": "mnist1d-cnn", "inputs": sha(inputs), "input_format": "npy",
                                    "unit_items": 20})
        assert r.status_code == 507, r.text
        assert (await client.get("/jobs", headers=auth(TENANT))).json() == []

    serve(coord, scenario)
    assert list((coord.config.artifacts_path / "tmp").iterdir()) == []  # no half-written temp files remain
    assert not coord.artifacts.exists(sha(npy(X + 1.0)))


def test_a_submission_that_fails_half_way_leaves_no_orphans(coord, monkeypatch):
    """Shards the submission created are removed again; one that existed before (content-addressed, shared) stays."""
    now = coord.clock.now()
    inputs = npy(X)
    coord.artifacts.put_bytes(inputs)
    coord.store.add_artifact(sha(inputs), len(inputs), "tenant:acme", now)
    first, _ = encode_items(X[:25])
    second, _ = encode_items(X[25:])
    coord.artifacts.put_bytes(first)
    coord.store.add_artifact(sha(first), len(first), "tenant:acme", now)

    def store_dies(*_args, **_kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(coord.store, "create_job", store_dies)
    with pytest.raises(RuntimeError, match="went away"):
        coord.scheduler.submit("acme", JobSubmit(model="mnist1d-cnn", inputs=sha(inputs), input_format="npy",
                                                 unit_items=25))
    assert coord.artifacts.exists(sha(first)) and coord.store.get_artifact(sha(first)) is not None
    assert not coord.artifacts.exists(sha(second))
    assert coord.store.get_artifact(sha(second)) is None
    assert coord.store.list_jobs() == []


def test_the_ledger_survives_absurd_old_rows(coord):
    """Rows written before counters were bounded (or by a buggy car) must not take the ledger down for good."""
    for i in range(3):
        coord.store.record_ledger(LedgerRecord(lease_id=f"old-{i}", vehicle_id="v-old", job_id="job-old", items=10,
                                               compute_s=1e308, cellular_bytes=2**62, wifi_bytes=2**62, at=1.0))

    async def scenario(client: httpx.AsyncClient) -> None:
        r = await client.get("/ledger", headers=auth(OPERATOR))
        assert r.status_code == 200, r.text
        (row,) = r.json()
        assert row["units"] == 3 and row["items"] == 30
        assert row["wifi_bytes"] >= 3 * 2**62 - 2**20 and row["compute_s"] >= 1e308

    serve(coord, scenario)


# --- the event loop is never blocked ---------------------------------------------------------------------------

PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}


class Gate:
    """Wraps one method so that its calls block, on whatever thread makes them, until the gate is opened. If one
    is made on the event loop, nothing else can run there (the test cannot open the gate): it gives up after a
    while, so that the test fails (``gave_up``) instead of hanging."""

    def __init__(self, obj: object, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered, self.opened, self.gave_up = threading.Event(), threading.Event(), threading.Event()
        real = getattr(obj, name)

        def gated(*args, **kwargs):
            self.entered.set()
            if not self.opened.wait(timeout=20):
                self.gave_up.set()
            return real(*args, **kwargs)

        monkeypatch.setattr(obj, name, gated)


async def _car(client: httpx.AsyncClient) -> str:
    r = await client.post("/vehicles/enroll", json={"enrollment_token": ENROLL, "name": "car", "hardware": "ai4"})
    assert r.status_code == 201, r.text
    return r.json()["credential"]


async def _job(client: httpx.AsyncClient) -> dict:
    inputs = npy(X)
    assert (await client.put(f"/artifacts/{sha(inputs)}", content=inputs, headers=auth(TENANT))).status_code == 201
    r = await client.post("/jobs", headers=auth(TENANT),
                          json={"model": "mnist1d-cnn", "inputs": sha(inputs), "input_format": "npy", "unit_items": 25})
    assert r.status_code == 201, r.text
    return r.json()


async def _grant(client: httpx.AsyncClient) -> tuple[str, dict]:
    await _job(client)
    car = await _car(client)
    r = await client.post("/leases", json={"state": PARKED}, headers=auth(car))
    assert r.status_code == 200, r.text
    return car, r.json()


async def _list_jobs(client):
    await _job(client)
    return lambda: client.get("/jobs", headers=auth(TENANT))


async def _submit(client):
    inputs = npy(X * 2.0)
    await client.put(f"/artifacts/{sha(inputs)}", content=inputs, headers=auth(TENANT))
    body = {"model": "mnist1d-cnn", "inputs": sha(inputs), "input_format": "npy"}
    return lambda: client.post("/jobs", json=body, headers=auth(TENANT))


async def _lease(client):
    await _job(client)
    car = await _car(client)
    return lambda: client.post("/leases", json={"state": PARKED, "wait_s": 1.0}, headers=auth(car))


async def _heartbeat(client):
    car = await _car(client)
    return lambda: client.post("/vehicles/heartbeat", json=PARKED, headers=auth(car))


async def _complete(client):
    car, grant = await _grant(client)
    data = npy(np.zeros((grant["items"], 10), np.float32))
    body = {"result": sha(data), "inline": base64.b64encode(data).decode(), "next": {"state": PARKED}}
    return lambda: client.post(f"/leases/{grant['lease_id']}/complete", json=body, headers=auth(car))


async def _progress(client):
    car, grant = await _grant(client)
    return lambda: client.post(f"/leases/{grant['lease_id']}/progress", json={"done_items": 1}, headers=auth(car))


async def _upload(client):
    data = npy(X * 3.0)
    return lambda: client.put(f"/artifacts/{sha(data)}", content=data, headers=auth(TENANT))


async def _download(client):
    data = npy(X * 4.0)
    await client.put(f"/artifacts/{sha(data)}", content=data, headers=auth(TENANT))
    return lambda: client.get(f"/artifacts/{sha(data)}", headers=auth(TENANT))


async def _ledger(client):
    return lambda: client.get("/ledger", headers=auth(OPERATOR))


async def _fleet(client):
    await _car(client)
    return lambda: client.get("/fleet", headers=auth(OPERATOR))


async def _sweep(client):
    return None  # the lease sweeper runs by itself every sweep_interval_s


@pytest.mark.parametrize(("target", "method", "prepare"), [
    ("store", "list_jobs", _list_jobs),
    ("store", "create_job", _submit),
    ("artifacts", "put_many", _submit),
    ("store", "acquire", _lease),
    ("store", "report_states", _heartbeat),  # written by the sweeper, in a thread
    ("store", "complete", _complete),
    ("store", "renew", _progress),
    ("store", "add_artifact", _upload),
    ("artifacts", "_write", _upload),
    ("store", "get_artifact", _download),
    ("store", "ledger_totals", _ledger),
    ("store", "counts", _fleet),
    ("store", "expired_leases", _sweep),
], ids=lambda v: v if isinstance(v, str) else v.__name__.strip("_"))
def test_a_slow_store_or_disk_never_blocks_the_event_loop(coord, monkeypatch, target, method, prepare):
    """While a route (or the sweeper) waits on a slow store call or a slow disk, the loop still answers others."""

    async def scenario(client: httpx.AsyncClient) -> None:
        send = await prepare(client)
        gate = Gate(getattr(coord, target), method, monkeypatch)
        request = asyncio.create_task(send()) if send is not None else None
        assert await asyncio.to_thread(gate.entered.wait, 10)
        health = await client.get("http://coordinator/healthz")
        gate.opened.set()
        if request is not None:
            r = await request
            assert r.status_code < 500, r.text
        assert health.status_code == 200
        assert not gate.gave_up.is_set(), f"{target}.{method} ran on the event loop: /healthz waited for it"

    serve(coord, scenario)


def test_concurrent_requests_never_share_a_unit_or_count_a_completion_twice(coord):
    """Routes run in threads now: ten cars asking at once get ten different units, and a completion sent six
    times at once is accepted once, metered once, and answered 200 every time."""

    async def scenario(client: httpx.AsyncClient) -> None:
        inputs = npy(X)
        await client.put(f"/artifacts/{sha(inputs)}", content=inputs, headers=auth(TENANT))
        r = await client.post("/jobs", headers=auth(TENANT),
                              json={"model": "mnist1d-cnn", "inputs": sha(inputs), "input_format": "npy",
                                    "unit_items": 5})
        assert r.status_code == 201, r.text
        cars = [await _car(client) for _ in range(12)]
        answers = await asyncio.gather(*(client.post("/leases", json={"state": PARKED}, headers=auth(car))
                                         for car in cars))
        assert sorted(a.status_code for a in answers) == [200] * 10 + [204] * 2
        grants = {car: a.json() for car, a in zip(cars, answers, strict=True) if a.status_code == 200}
        assert sorted(g["unit_index"] for g in grants.values()) == list(range(10))
        car, grant = next(iter(grants.items()))
        data = npy(np.zeros((grant["items"], 10), np.float32))
        body = {"result": sha(data), "inline": base64.b64encode(data).decode()}
        path = f"/leases/{grant['lease_id']}/complete"
        done = await asyncio.gather(*(client.post(path, json=body, headers=auth(car)) for _ in range(6)))
        assert [d.status_code for d in done] == [200] * 6, [d.text for d in done]
        (row,) = (await client.get("/ledger", headers=auth(OPERATOR))).json()
        assert (row["units"], row["items"]) == (1, 5)
        status = (await client.get(f"/jobs/{grant['job_id']}", headers=auth(TENANT))).json()
        assert status["units_done"] == 1 and status["units_in_flight"] == 9

    serve(coord, scenario)


def test_new_work_wakes_one_waiting_car_per_unit_not_all_of_them(tmp_path, monkeypatch):
    """No thundering herd: with 12 cars long-polling, a one-unit job makes a handful of store look-ups, not one per
    waiting car; the car woken first gets the unit. (The waiters' own re-check and the long-poll limit are set far
    beyond the test, so however slow the machine, only wakes make them look.)"""
    coord = Coordinator(CoordinatorConfig(data_dir=tmp_path, enroll_token=ENROLL, operator_token=OPERATOR,
                                          tenant_tokens={"acme": TENANT}, long_poll_recheck_s=3600.0,
                                          max_long_poll_s=3600.0, sweep_interval_s=3600.0))
    looks: list[str] = []
    acquire = coord.store.acquire

    def counted(vehicle_id, *args, **kwargs):
        looks.append(vehicle_id)
        return acquire(vehicle_id, *args, **kwargs)

    monkeypatch.setattr(coord.store, "acquire", counted)
    parked = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}

    async def scenario(client: httpx.AsyncClient) -> None:
        creds = []
        for i in range(12):
            r = await client.post("/vehicles/enroll", json={"enrollment_token": ENROLL, "name": f"c{i}",
                                                            "hardware": "ai4"})
            creds.append(r.json()["credential"])
        polls = [asyncio.create_task(client.post("/leases", json={"state": parked, "wait_s": 60},
                                                 headers=auth(cred))) for cred in creds]
        while len(coord.scheduler.polls) < len(creds) or len(looks) < len(creds):  # each looked once, and waits
            await asyncio.sleep(0.01)
        before = len(looks)
        inputs = npy(X[:5])
        await client.put(f"/artifacts/{sha(inputs)}", content=inputs, headers=auth(TENANT))
        r = await client.post("/jobs", headers=auth(TENANT), json={"model": "mnist1d-cnn", "inputs": sha(inputs),
                                                                  "input_format": "npy", "unit_items": 5})
        assert r.status_code == 201, r.text
        done, _ = await asyncio.wait(polls, return_when=asyncio.FIRST_COMPLETED)
        granted = [t.result() for t in done if t.result().status_code == 200]
        assert len(granted) == 1 and granted[0].json()["job_id"] == r.json()["job_id"]
        assert len(looks) - before <= 3, looks[before:]  # the woken car, not all twelve
        assert len(coord.scheduler.polls) == len(creds) - 1  # the others still wait, untouched
        for task in polls:
            task.cancel()
        await asyncio.gather(*polls, return_exceptions=True)

    try:
        serve(coord, scenario)
    finally:
        coord.store.close()


def test_lease_expiry_and_reissue_run_on_the_injected_clock(tmp_path):
    """No sleeping: the clock says when a lease is past its deadline, a sweep re-issues its unit to another car,
    and the first car's late result is refused without touching the unit."""
    from fleetgrid.clock import ManualClock

    clock = ManualClock(1_000.0)
    config = CoordinatorConfig(data_dir=tmp_path, enroll_token=ENROLL, operator_token=OPERATOR,
                               tenant_tokens={"acme": TENANT}, lease_ttl_s=30.0, sweep_interval_s=3600.0)
    coord = Coordinator(config, clock=clock)
    parked = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}

    async def scenario(client: httpx.AsyncClient) -> None:
        cars = []
        for name in ("slow", "fast"):
            r = await client.post("/vehicles/enroll", json={"enrollment_token": ENROLL, "name": name,
                                                            "hardware": "ai4"})
            cars.append(r.json()["credential"])
        inputs = npy(X[:4])
        await client.put(f"/artifacts/{sha(inputs)}", content=inputs, headers=auth(TENANT))
        job = (await client.post("/jobs", headers=auth(TENANT), json={
            "model": "mnist1d-cnn", "inputs": sha(inputs), "input_format": "npy", "unit_items": 4})).json()
        first = (await client.post("/leases", json={"state": parked}, headers=auth(cars[0]))).json()
        assert first["deadline"] == 1_030.0
        clock.advance(20.0)
        assert (await client.post(f"/leases/{first['lease_id']}/renew", headers=auth(cars[0]))).json()["deadline"] \
            == 1_050.0
        assert (await client.post("/leases", json={"state": parked}, headers=auth(cars[1]))).status_code == 204
        clock.advance(31.0)  # past the renewed deadline
        await asyncio.to_thread(coord.sweep)
        second = (await client.post("/leases", json={"state": parked}, headers=auth(cars[1]))).json()
        assert second["unit_index"] == first["unit_index"] and second["lease_id"] != first["lease_id"]
        from fleetgrid.models.registry import load_runner

        out = npy(np.asarray(load_runner("mnist1d-cnn", threads=1)(X[:4]), dtype=np.float32))
        late = await client.post(f"/leases/{first['lease_id']}/complete", headers=auth(cars[0]),
                                 json={"result": sha(out), "inline": base64.b64encode(out).decode()})
        assert late.status_code == 409 and "expired" in late.json()["message"]
        ok = await client.post(f"/leases/{second['lease_id']}/complete", headers=auth(cars[1]),
                               json={"result": sha(out), "inline": base64.b64encode(out).decode()})
        assert ok.status_code == 200, ok.text
        status = (await client.get(f"/jobs/{job['job_id']}", headers=auth(TENANT))).json()
        assert status["state"] == "done" and status["reissued_units"] == 1

    try:
        serve(coord, scenario)
    finally:
        coord.store.close()


def test_a_replica_takes_over_a_training_job_whose_driver_stopped_renewing(tmp_path, postgres_url):
    """Two coordinators on one PostgreSQL, on an injected clock: the one that took the submission drives the job;
    once its claim lapses (it stopped renewing, as a dead replica does) the other claims it and drives it."""
    from fleetgrid.clock import ManualClock

    clock = ManualClock(5_000.0)

    def replica(name: str) -> Coordinator:
        return Coordinator(CoordinatorConfig(data_dir=tmp_path / name, database_url=postgres_url, enroll_token=ENROLL,
                                             operator_token=OPERATOR, tenant_tokens={"acme": TENANT}),
                           clock=clock)

    a, b = replica("a"), replica("b")
    try:
        from fleetgrid.protocol import TrainSubmit

        job = a.training.submit("acme", TrainSubmit(model="mnist1d-cnn", data={"num_vehicles": 2,
                                                                                "num_samples": 400}, rounds=3))
        assert job.job_id in a.training.runs and b.training.take_over() == 0  # a's claim stands
        # The keeper's tick racing the submission cannot start a second round loop for the job in one process.
        assert a.training._resume(a.store.get_job(job.job_id)) is False and len(a.training.runs) == 1
        assert b.store.get_job(job.job_id).driver == a.training.replica
        a.training._halt.set()  # a stops renewing (its keeper never started here): as if it had died
        a.training.runs[job.job_id].stop.set()
        clock.advance(a.training.claim_ttl_s + 1)
        assert b.training.take_over() == 1 and job.job_id in b.training.runs
        assert b.store.get_job(job.job_id).driver == b.training.replica
        assert a.training.take_over() == 0 and job.job_id not in a.training.runs  # a learns it lost the job
    finally:
        for c in (a, b):
            c.training.shutdown()
            c.store.close()


def _lease_job(client: httpx.AsyncClient, names: tuple[str, ...], units: int):
    """Enroll cars and submit an mnist1d-cnn job of ``units`` one-item units; (credentials, job, result body)."""
    from fleetgrid.models.registry import load_runner

    async def run() -> tuple[list[str], dict, dict]:
        cars = []
        for name in names:
            r = await client.post("/vehicles/enroll", json={"enrollment_token": ENROLL, "name": name,
                                                            "hardware": "ai4"})
            cars.append(r.json()["credential"])
        inputs = npy(X[:units])
        await client.put(f"/artifacts/{sha(inputs)}", content=inputs, headers=auth(TENANT))
        job = (await client.post("/jobs", headers=auth(TENANT), json={
            "model": "mnist1d-cnn", "inputs": sha(inputs), "input_format": "npy", "unit_items": 1})).json()
        out = npy(np.asarray(load_runner("mnist1d-cnn", threads=1)(X[:1]), dtype=np.float32))
        return cars, job, {"result": sha(out), "inline": base64.b64encode(out).decode()}

    return run()


PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}


def test_a_completion_is_judged_by_when_it_arrived_not_by_when_its_turn_came(tmp_path, monkeypatch):
    """A car that reports before its deadline is not refused because the coordinator's queue held the report
    past it."""
    from fleetgrid.clock import ManualClock

    clock = ManualClock(1_000.0)
    config = CoordinatorConfig(data_dir=tmp_path, enroll_token=ENROLL, operator_token=OPERATOR,
                               tenant_tokens={"acme": TENANT}, lease_ttl_s=30.0, sweep_interval_s=3600.0)
    coord = Coordinator(config, clock=clock)
    entered, release = threading.Event(), threading.Event()
    lease_context = coord.store.lease_context

    def queued(lease_id: str):  # the report waits in the queue while the clock passes the deadline
        entered.set()
        release.wait(60)
        return lease_context(lease_id)

    async def scenario(client: httpx.AsyncClient) -> None:
        (car,), job, body = await _lease_job(client, ("car",), 1)
        grant = (await client.post("/leases", json={"state": PARKED}, headers=auth(car))).json()
        assert grant["deadline"] == 1_030.0
        clock.advance(29.0)
        monkeypatch.setattr(coord.store, "lease_context", queued)
        report = asyncio.create_task(client.post(f"/leases/{grant['lease_id']}/complete", headers=auth(car),
                                                 json=body))
        assert await asyncio.to_thread(entered.wait, 60)
        clock.advance(10.0)  # its turn comes 9 s after the deadline
        release.set()
        r = await report
        assert r.status_code == 200, r.text
        assert (await client.get(f"/jobs/{job['job_id']}", headers=auth(TENANT))).json()["state"] == "done"

    try:
        serve(coord, scenario)
    finally:
        coord.store.close()


def test_new_leases_wait_while_the_coordinator_is_behind_and_completions_are_still_taken(tmp_path):
    """Admission: while the coordinator is further behind than it may be, no new lease is handed out (a long-poll
    ends without one, a completion's next lease is not taken), reports are still accepted, and the sweeper gives
    leases that much grace; once it has caught up, leasing resumes."""
    from fleetgrid.clock import ManualClock

    clock = ManualClock(1_000.0)
    config = CoordinatorConfig(data_dir=tmp_path, enroll_token=ENROLL, operator_token=OPERATOR,
                               tenant_tokens={"acme": TENANT}, lease_ttl_s=40.0, sweep_interval_s=3600.0,
                               admission_interval_s=3600.0)  # lags are set by hand below, never measured
    coord = Coordinator(config, clock=clock)
    assert coord.admission.max_delay_s == 10.0  # a quarter of the lease time

    async def scenario(client: httpx.AsyncClient) -> None:
        (car, other), job, body = await _lease_job(client, ("car", "other"), 3)
        grant = (await client.post("/leases", json={"state": PARKED}, headers=auth(car))).json()
        coord.admission.note(loop_lag_s=0.0, store_lag_s=60.0)  # 18 s behind after smoothing
        assert not coord.admission.open()
        r = await client.post("/leases", json={"state": PARKED, "wait_s": 0.2}, headers=auth(other))
        assert r.status_code == 204  # two units are pending, but not handed out now
        done = await client.post(f"/leases/{grant['lease_id']}/complete", headers=auth(car),
                                 json=body | {"next": {"state": PARKED, "wait_s": 0.2}})
        assert done.status_code == 200, done.text
        assert done.json()["state"] == "completed" and done.json()["next_lease"] is None
        for _ in range(20):
            coord.admission.note(loop_lag_s=0.0, store_lag_s=0.0)
        assert coord.admission.open()
        second = (await client.post("/leases", json={"state": PARKED, "wait_s": 0.2}, headers=auth(other))).json()
        coord.admission.note(loop_lag_s=0.0, store_lag_s=60.0)
        clock.advance(45.0)  # 5 s past its deadline: within the coordinator's own delay, so not yet expired
        await asyncio.to_thread(coord.sweep)
        assert coord.store.get_lease(second["lease_id"]).state == "active"
        for _ in range(20):
            coord.admission.note(loop_lag_s=0.0, store_lag_s=0.0)
        await asyncio.to_thread(coord.sweep)
        assert coord.store.get_lease(second["lease_id"]).state == "expired"
        status = (await client.get(f"/jobs/{job['job_id']}", headers=auth(TENANT))).json()
        assert status["units_done"] == 1 and status["reissued_units"] == 1

    try:
        serve(coord, scenario)
    finally:
        coord.store.close()
