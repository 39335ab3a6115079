"""Federated evaluation, the workload that proves the contract: a real coordinator process, real agents with real
worker processes, and hostile cars speaking the raw API."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time

import httpx
import pytest
from harness import ENROLL, OPERATOR, OTHER_TENANT, TENANT, start_coordinator

from fleetgrid.agent.config import AgentConfig
from fleetgrid.agent.runtime import Agent
from fleetgrid.agent.worker import WorkerProcess
from fleetgrid.clock import WallClock
from fleetgrid.vehicle.bus import ManualVehicleBus

pytestmark = pytest.mark.timeout(240)

PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}
SPEC = {"dataset": "mnist1d", "num_vehicles": 3, "num_samples": 600, "seed": 1, "alpha": 1.0}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = start_coordinator(tmp_path_factory.mktemp("coord"), lease_ttl_s=60.0)
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url + "/v1", timeout=60) as client:
        yield client


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def submit(http: httpx.Client, **body) -> httpx.Response:
    return http.post("/jobs", json={"kind": "evaluate", "model": "mnist1d-cnn", "data": SPEC, **body},
                     headers=auth(TENANT))


def enroll(http: httpx.Client, name: str) -> str:
    r = http.post("/vehicles/enroll", json={"enrollment_token": ENROLL, "name": name, "hardware": "ai4"})
    assert r.status_code == 201, r.text
    return r.json()["credential"]


def lease_for(http: httpx.Client, cred: str, job_id: str) -> dict:
    """Lease until this car gets a unit of ``job_id`` (other tests' jobs share the server); others are handed back."""
    for _ in range(50):
        r = http.post("/leases", json={"state": PARKED}, headers=auth(cred))
        assert r.status_code == 200, r.text
        grant = r.json()
        if grant["job_id"] == job_id:
            return grant
        http.post(f"/leases/{grant['lease_id']}/fail", json={"reason": "not mine", "handback": True},
                  headers=auth(cred))
    raise AssertionError(f"no unit of {job_id} was leased")


def complete(http: httpx.Client, cred: str, lease_id: str, report: bytes) -> httpx.Response:
    body = {"result": hashlib.sha256(report).hexdigest(), "inline": base64.b64encode(report).decode()}
    return http.post(f"/leases/{lease_id}/complete", json=body, headers=auth(cred))


def local_metrics(shard: int, max_examples: int) -> dict:
    from fleetgrid.models.mnist1d_cnn import load_pretrained
    from fleetgrid.workloads.evaluation.task import evaluate_shard
    from fleetgrid.workloads.training import DataSpec, build_local_dataset

    return evaluate_shard(load_pretrained(), build_local_dataset(DataSpec(**SPEC), shard), max_examples)


def test_cars_score_their_own_shards_and_the_job_matches_a_local_evaluation(server, http, tmp_path):
    r = submit(http, max_examples=150, name="eval")
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    assert r.json()["kind"] == "evaluate" and r.json()["units_total"] == 3

    stop = threading.Event()
    agents, threads = [], []
    for i in range(2):
        clock = WallClock()
        config = AgentConfig(coordinator=server.url, state_dir=tmp_path / f"car{i}", enrollment_token=ENROLL,
                             name=f"eval-car-{i}", heartbeat_interval_s=0.5, poll_interval_s=0.05, lease_wait_s=1.0)
        agent = Agent(config, ManualVehicleBus(clock=clock), clock, worker=WorkerProcess(threads=1))
        agents.append(agent)
        threads.append(threading.Thread(target=agent.run, args=(stop,), daemon=True))
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 180
        while (status := http.get(f"/jobs/{job_id}", headers=auth(TENANT)).json())["state"] not in ("done", "failed"):
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert status["state"] == "done", status
    assert status["units_done"] == 3 and status["progress"]["reported"] == 3

    r = http.get(f"/jobs/{job_id}/result", headers=auth(TENANT))
    assert r.status_code == 200 and r.headers["content-disposition"].endswith('.json"')
    result = r.json()
    expected = [local_metrics(shard, 150) for shard in range(3)]
    assert [row["shard"] for row in result["per_car"]] == [0, 1, 2]
    for row, want in zip(result["per_car"], expected, strict=True):
        assert (row["examples"], row["targets"]) == (want["examples"], want["targets"])
        assert row["loss"] == pytest.approx(want["loss"], rel=1e-4)
        assert row["accuracy"] == pytest.approx(want["accuracy"], abs=1e-9)
        assert row["vehicle_id"] in {a.vehicle_id for a in agents}
    targets = sum(w["targets"] for w in expected)
    assert result["aggregate"]["accuracy"] == pytest.approx(
        sum(w["accuracy"] * w["targets"] for w in expected) / targets, abs=1e-9)
    assert 0.5 < result["aggregate"]["accuracy"] <= 1.0  # the shipped weights are trained
    assert sum(a.stats.leases_done for a in agents) == 3

    # Every closed lease is metered with the examples the car scored, in the ledger's own column.
    ledger = http.get("/ledger", headers=auth(OPERATOR)).json()
    mine = {row["vehicle_id"]: row for row in ledger if row["vehicle_id"] in {a.vehicle_id for a in agents}}
    assert sum(row["examples"] for row in mine.values()) == sum(w["examples"] for w in expected)


@pytest.mark.parametrize(
    ("report", "needle"),
    [
        ({"examples": 10, "targets": 10, "loss": 0.5, "accuracy": 1.5}, "accuracy"),
        ({"examples": 10, "targets": 10, "loss": -1.0, "accuracy": 0.5}, "loss"),
        ({"examples": 10**9, "targets": 10**9, "loss": 0.5, "accuracy": 0.5}, "at most 100"),
        ({"examples": 10, "targets": 11, "loss": 0.5, "accuracy": 0.5}, "targets"),
        ({"examples": 10, "targets": 10, "loss": 0.5, "accuracy": 0.5, "samples": [[0.1] * 40]}, "samples"),
        ("not json at all", "EvalReport"),
        ("x" * 5000, "at most 4096"),
    ],
)
def test_hostile_reports_are_refused_and_change_nothing(http, report, needle):
    job_id = submit(http, shards=1, max_examples=100).json()["job_id"]
    cred = enroll(http, "liar")
    grant = lease_for(http, cred, job_id)
    assert grant["kind"] == "evaluate" and grant["spec"]["shard"] == 0 and grant["spec"]["max_examples"] == 100

    raw = report.encode() if isinstance(report, str) else json.dumps(report).encode()
    r = complete(http, cred, grant["lease_id"], raw)
    assert r.status_code == 400, r.text
    assert needle in r.json()["message"]
    status = http.get(f"/jobs/{job_id}", headers=auth(TENANT)).json()
    assert (status["state"], status["units_done"], status["units_in_flight"]) == ("running", 0, 1)

    # The lease is still the car's: an honest report is accepted and the job completes.
    good = json.dumps({"examples": 100, "targets": 100, "loss": 0.25, "accuracy": 0.9}).encode()
    assert complete(http, cred, grant["lease_id"], good).status_code == 200
    status = http.get(f"/jobs/{job_id}", headers=auth(TENANT)).json()
    assert status["state"] == "done" and status["progress"]["aggregate"]["accuracy"] == pytest.approx(0.9)


def test_a_report_for_another_cars_lease_is_refused(http):
    job_id = submit(http, shards=1, max_examples=100).json()["job_id"]
    owner, thief = enroll(http, "owner"), enroll(http, "thief")
    grant = lease_for(http, owner, job_id)
    good = json.dumps({"examples": 100, "targets": 100, "loss": 0.25, "accuracy": 0.9}).encode()
    assert complete(http, thief, grant["lease_id"], good).status_code == 403
    assert http.get(f"/jobs/{job_id}", headers=auth(TENANT)).json()["units_done"] == 0


def test_bad_evaluation_jobs_are_refused_by_name(http):
    cases = [
        ({"model": "nope"}, "unknown model 'nope'"),
        ({"shards": 4}, "exceeds the data spec's num_vehicles 3"),
        ({"data": {**SPEC, "colour": "red"}}, "unknown data setting"),
        ({"data": {**SPEC, "alpha": -1}}, "alpha"),
        ({"weights": "0" * 64}, "is not yours"),
        ({"max_examples": 0}, "max_examples"),
    ]
    for body, needle in cases:
        r = submit(http, **body)
        assert r.status_code in (400, 422), (body, r.text)
        assert needle in r.json()["message"], (body, r.text)
    # Weights uploaded by another tenant are not this tenant's to evaluate.
    from fleetgrid.workloads.evaluation.driver import _shipped_weights

    data = _shipped_weights("charlm")
    digest = hashlib.sha256(data).hexdigest()
    assert http.put(f"/artifacts/{digest}", content=data, headers=auth(OTHER_TENANT)).status_code in (200, 201)
    r = submit(http, weights=digest)
    assert r.status_code == 400 and "is not yours" in r.json()["message"]
    # Weights of another model are refused at submission, not on every car.
    assert http.put(f"/artifacts/{digest}", content=data, headers=auth(TENANT)).status_code in (200, 201)
    r = submit(http, weights=digest)
    assert r.status_code == 400 and "not a safetensors state dict of 'mnist1d-cnn'" in r.json()["message"]


def test_every_registered_workload_loads_its_pieces():
    from fleetgrid.coordinator.drivers import UnitDriver
    from fleetgrid.workloads.base import CarHandler, car_handler, workloads

    kinds = {w.kind for w in workloads()}
    assert {"inference", "train", "evaluate"} <= kinds
    for workload in workloads():
        assert issubclass(car_handler(workload.kind), CarHandler)
        assert isinstance(workload.load("driver"), type)
    by_kind = {w.kind: w for w in workloads()}
    assert issubclass(by_kind["evaluate"].load("driver"), UnitDriver)
    assert issubclass(by_kind["inference"].load("driver"), UnitDriver)
