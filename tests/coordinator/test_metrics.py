"""GET /metrics in process, on an injected clock: lease cycles counted by kind and outcome, latency by route
template, errors by code, the fleet's gauges; who may scrape; and the request id on every answer."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import threading
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from fleetgrid.clock import ManualClock
from fleetgrid.coordinator.app import Coordinator, create_app
from fleetgrid.coordinator.config import CoordinatorConfig
from fleetgrid.coordinator.logs import JsonFormatter
from fleetgrid.coordinator.metrics import BANDS, route_kind
from fleetgrid.coordinator.ratelimit import RateLimit
from fleetgrid.coordinator.reputation import TrustPolicy
from fleetgrid.coordinator.store import JobRecord
from fleetgrid.coordinator.verification import OUTCOMES
from harness import ENROLL, OPERATOR, TENANT, auth, npy, sha

from . import test_verification as verification

X = np.random.default_rng(3).normal(size=(40, 40)).astype(np.float32)
PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}
DRIVING = {"drive": "driving", "soc": 0.8, "network": "cellular", "plugged_in": False, "eligible": False,
           "reasons": ["driving"]}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by (name, sorted labels), as prometheus_client parses it."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def clock():
    return ManualClock(1_000.0)


@pytest.fixture
def coord(tmp_path, clock):
    config = CoordinatorConfig(data_dir=tmp_path, enroll_token=ENROLL, operator_token=OPERATOR,
                               tenant_tokens={"acme": TENANT}, lease_ttl_s=30.0, sweep_interval_s=3600.0)
    coordinator = Coordinator(config, clock=clock)
    yield coordinator
    coordinator.store.close()


def serve(coord: Coordinator, scenario) -> None:
    app = create_app(coordinator=coord)

    async def main() -> None:
        async with app.app.router.lifespan_context(app.app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://coordinator", timeout=30) as client:
                await scenario(client)

    asyncio.run(main())


async def enroll(client: httpx.AsyncClient, name: str) -> str:
    r = await client.post("/v1/vehicles/enroll", json={"enrollment_token": ENROLL, "name": name, "hardware": "ai4"})
    assert r.status_code == 201, r.text
    return r.json()["credential"]


async def lease(client: httpx.AsyncClient, car: str) -> dict:
    r = await client.post("/v1/leases", json={"state": PARKED}, headers=auth(car))
    assert r.status_code == 200, r.text
    return r.json()


def result(grant: dict, **usage: int) -> dict:
    data = npy(np.zeros((grant["items"], 10), np.float32))
    return {"result": sha(data), "inline": base64.b64encode(data).decode(), **usage}


async def scrape(client: httpx.AsyncClient) -> dict:
    r = await client.get("/metrics", headers=auth(OPERATOR))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


def test_lease_cycles_latency_errors_and_the_fleet_are_scraped(tmp_path, clock, store_url):
    """Five units, six cars: one lease completed, one failed, one handed back, one expired (and completed too
    late: a 409), one held, one car driving; every counter and gauge says so, on either store."""
    config = CoordinatorConfig(data_dir=tmp_path, database_url=store_url, enroll_token=ENROLL,
                               operator_token=OPERATOR, tenant_tokens={"acme": TENANT}, lease_ttl_s=30.0,
                               sweep_interval_s=3600.0)
    coord = Coordinator(config, clock=clock)

    async def scenario(client: httpx.AsyncClient) -> None:
        inputs = npy(X)
        await client.put(f"/v1/artifacts/{sha(inputs)}", content=inputs, headers=auth(TENANT))
        r = await client.post("/v1/jobs", headers=auth(TENANT), json={
            "model": "mnist1d-cnn", "inputs": sha(inputs), "input_format": "npy", "unit_items": 8})
        assert r.status_code == 201 and r.json()["units_total"] == 5, r.text
        done, failed, back, late, holder = [await enroll(client, n) for n in ("done", "failed", "back", "late", "h")]
        driving = await enroll(client, "driving")
        assert (await client.post("/v1/vehicles/heartbeat", json=DRIVING, headers=auth(driving))).status_code == 200

        grant = await lease(client, done)
        r = await client.post(f"/v1/leases/{grant['lease_id']}/complete", headers=auth(done),
                              json=result(grant, wifi_bytes=4_000, cellular_bytes=300))
        assert r.status_code == 200, r.text
        grant = await lease(client, failed)
        r = await client.post(f"/v1/leases/{grant['lease_id']}/fail", headers=auth(failed), json={"reason": "oom"})
        assert r.status_code == 200, r.text
        grant = await lease(client, back)
        r = await client.post(f"/v1/leases/{grant['lease_id']}/fail", headers=auth(back),
                              json={"reason": "driver is back", "handback": True})
        assert r.status_code == 200, r.text
        expired = await lease(client, late)
        clock.advance(31.0)
        await asyncio.to_thread(coord.sweep)
        r = await client.post(f"/v1/leases/{expired['lease_id']}/complete", headers=auth(late), json=result(expired))
        assert r.status_code == 409 and r.json()["error"] == "lease_expired", r.text
        await lease(client, holder)  # held: this car is working
        assert (await client.get("/metrics")).status_code == 401

        found = await scrape(client)
        assert value(found, "fleetgrid_leases_granted_total", kind="inference") == 5
        for outcome in ("completed", "failed", "handed_back", "expired"):
            assert value(found, "fleetgrid_leases_closed_total", kind="inference", outcome=outcome) == 1, outcome
        assert value(found, "fleetgrid_errors_total", code="lease_expired", status="409") == 1
        assert value(found, "fleetgrid_errors_total", code="unauthorized", status="401") == 1
        assert value(found, "fleetgrid_http_request_duration_seconds_count", method="POST", route="/v1/leases") == 5
        complete = "/v1/leases/{lease_id}/complete"
        assert value(found, "fleetgrid_http_request_duration_seconds_count", method="POST", route=complete) == 2
        routes = {dict(labels)["route"] for name, labels in found if name.startswith("fleetgrid_http_request")}
        assert not any(grant["lease_id"] in route for route in routes), routes  # templates, not raw paths
        assert value(found, "fleetgrid_units_pending") == 4 - 1  # five units, one done, one held
        assert value(found, "fleetgrid_leases_active") == 1
        assert value(found, "fleetgrid_jobs", state="running") == 1
        # The sweep ran after the lease requests: every car but the driving one has gone quiet for 31 s, which
        # is within the 60 s online window.
        assert value(found, "fleetgrid_vehicles", state="working") == 1
        assert value(found, "fleetgrid_vehicles", state="driving") == 1
        assert value(found, "fleetgrid_vehicles", state="eligible") == 4
        assert sum(v for (name, _), v in found.items() if name == "fleetgrid_vehicles") == 6
        assert value(found, "fleetgrid_ledger_bytes_total", link="wifi") == 4_000
        assert value(found, "fleetgrid_ledger_bytes_total", link="cellular") == 300

        clock.advance(61.0)  # nobody has spoken for longer than the online window
        assert value(await scrape(client), "fleetgrid_vehicles", state="offline") == 6

    try:
        serve(coord, scenario)
    finally:
        coord.store.close()


def test_metrics_need_the_operator_token_as_a_bearer(coord):
    async def scenario(client: httpx.AsyncClient) -> None:
        car = await enroll(client, "car")
        for headers in ({}, auth(TENANT), auth(car), auth("fgo_wrong"), {"authorization": OPERATOR}):
            r = await client.get("/metrics", headers=headers)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", (headers, r.text)
            assert "fleetgrid_" not in r.text
        assert (await client.get("/metrics", headers=auth(OPERATOR))).status_code == 200

    serve(coord, scenario)


def test_training_version_and_accuracy_come_from_the_job_this_replica_drives(coord):
    """The round loop's strategy is faked: the gauges read the version and the latest held-out accuracy."""
    job = JobRecord(job_id="j-train", tenant="acme", name="t", kind="train", model="mnist1d-mlp", spec={},
                    items=0, units_total=10, created_at=0.0, state="running")
    strategy = SimpleNamespace(lock=threading.Lock(), version=3, round=3, name="fedavg",
                               history=[{"version": 0, "accuracy": 0.1}, {"version": 3, "accuracy": 0.72}],
                               privacy_report=lambda: None, config=SimpleNamespace(secure_aggregation=False))
    coord.training.runs[job.job_id] = SimpleNamespace(job=job, strategy=strategy, bytes_up=0, bytes_down=0,
                                                      reports=0, rejected=0)
    found = samples(coord.metrics.render().decode())
    assert value(found, "fleetgrid_training_version", job="j-train") == 3
    assert value(found, "fleetgrid_training_accuracy", job="j-train") == pytest.approx(0.72)


def test_every_answer_carries_a_request_id_and_errors_quote_it(coord):
    async def scenario(client: httpx.AsyncClient) -> None:
        r = await client.get("/v1/jobs", headers={"x-request-id": "proxy-42.a:b"} | auth(TENANT))
        assert r.status_code == 200 and r.headers["x-request-id"] == "proxy-42.a:b"
        r = await client.get("/v1/jobs/nope", headers={"x-request-id": "trace-7"} | auth(TENANT))
        assert r.status_code == 404 and r.headers["x-request-id"] == "trace-7" == r.json()["request_id"]
        ids = set()
        for bad in (b"has space", b"x" * 129, "new\u00e9line".encode(), b"a\x01b", b""):
            r = await client.get("/v1/jobs", headers={"x-request-id": bad})  # and no credential: a 401
            assert r.status_code == 401
            given = r.headers["x-request-id"]
            assert given.encode() != bad and given == r.json()["request_id"]
            assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", given), given
            ids.add(r.headers["x-request-id"])
        assert len(ids) == 5  # a fresh one each time
        r = await client.get("/no/such/path")
        assert r.status_code == 404 and r.json()["request_id"] == r.headers["x-request-id"]
        too_big = b"{" + b" " * (coord.config.max_json_bytes + 1) + b"}"
        r = await client.post("/v1/jobs", content=too_big, headers={"x-request-id": "big-1", **auth(TENANT)})
        assert r.status_code == 413 and r.json()["request_id"] == "big-1" == r.headers["x-request-id"]
        found = await scrape(client)
        assert value(found, "fleetgrid_errors_total", code="payload_too_large", status="413") == 1
        assert value(found, "fleetgrid_http_request_duration_seconds_count", method="GET", route="unmatched") == 1

    serve(coord, scenario)


def test_json_request_log_has_one_line_per_request_and_no_token(tmp_path, caplog):
    config = CoordinatorConfig(data_dir=tmp_path, enroll_token=ENROLL, operator_token=OPERATOR,
                               tenant_tokens={"acme": TENANT}, log_format="json")
    coord = Coordinator(config)

    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await client.get("/v1/jobs", headers={"x-request-id": "r-1"} | auth(TENANT))).status_code == 200
        assert (await client.get("/v1/fleet", headers={"x-request-id": "r-2"} | auth(TENANT))).status_code == 401

    try:
        with caplog.at_level(logging.INFO, logger="fleetgrid.access"):
            serve(coord, scenario)
    finally:
        coord.store.close()
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "fleetgrid.access"]
    assert [line["request_id"] for line in lines] == ["r-1", "r-2"]
    first, second = lines
    assert (first["method"], first["route"], first["status"], first["principal"]) == ("GET", "/v1/jobs", 200,
                                                                                       "tenant")
    assert (second["route"], second["status"], second["principal"], second["error"]) == ("/v1/fleet", 401, None,
                                                                                         "unauthorized")
    assert first["duration_ms"] >= 0 and first["level"] == "info" and first["logger"] == "fleetgrid.access"
    assert TENANT not in caplog.text


def test_text_logs_leave_no_request_log(coord, caplog):
    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await client.get("/v1/jobs", headers=auth(TENANT))).status_code == 200

    with caplog.at_level(logging.INFO, logger="fleetgrid.access"):
        serve(coord, scenario)
    assert not [r for r in caplog.records if r.name == "fleetgrid.access"]


def test_a_bad_log_format_is_refused(tmp_path):
    from fleetgrid.errors import InvalidInput

    with pytest.raises(InvalidInput, match="log format 'yaml'"):
        CoordinatorConfig(data_dir=tmp_path, log_format="yaml")


def test_trust_outcomes_implausible_reports_suspensions_and_reputation_bands_move(tmp_path, store_url):
    """Cars checked against each other and against known answers, two cheating, one over-reporting its bytes: each
    verdict, suspension and implausible claim is counted, and the cars fall into their reputation bands."""
    clock = ManualClock(1_000_000.0)
    config = CoordinatorConfig(data_dir=tmp_path, database_url=store_url, enroll_token=verification.ENROLL,
                               operator_token=OPERATOR, tenant_tokens={"acme": verification.TENANT},
                               verify_results=True, trust=TrustPolicy(trust_after=2, floor_rate=0.05))
    coord = Coordinator(config, clock)

    def scraped(fleet: verification.Fleet) -> dict:
        r = fleet.api.get("/metrics", headers=auth(OPERATOR))
        assert r.status_code == 200, r.text
        return samples(r.text)

    try:
        with TestClient(create_app(coordinator=coord)) as api:
            fleet = verification.Fleet(api, coord, clock)
            a, b = fleet.enroll("a"), fleet.enroll("b")
            fleet.enroll("idle")
            before = scraped(fleet)
            job_id = fleet.submit(verification.X)  # 12 units
            for _ in range(3):  # units confirmed by both cars: answers the coordinator knows
                fleet.work(a)
                fleet.work(b)
            newcomer = fleet.enroll("newcomer")
            assert fleet.work(newcomer) == 200  # a known answer, answered right
            assert fleet.work(fleet.enroll("cheat"), cheat=True) == 200  # a known answer, answered wrong
            assert fleet.work(fleet.enroll("liar"), cheat=True, wifi_bytes=1 << 30) == 200  # and 1 GiB for 48 B
            assert fleet.work(newcomer, cheat=True) == 200  # checked (not yet trusted) by a replica
            for _ in range(40):
                if fleet.job(job_id)["state"] != "running":
                    break
                fleet.work(a)
                fleet.work(b)
            after = scraped(fleet)
    finally:
        coord.store.close()

    for outcome in OUTCOMES:
        assert value(before, "fleetgrid_verification_outcomes_total", outcome=outcome) == 0, outcome
    for reason in ("compute_s", "bytes", "throughput"):
        assert value(before, "fleetgrid_implausible_reports_total", reason=reason) == 0, reason
    assert value(before, "fleetgrid_automatic_suspensions_total") == 0
    assert value(before, "fleetgrid_vehicles_by_reputation", band="unjudged") == 3

    assert value(after, "fleetgrid_verification_outcomes_total", outcome="agreed") >= 2
    assert value(after, "fleetgrid_verification_outcomes_total", outcome="disagreed") == 1
    assert value(after, "fleetgrid_verification_outcomes_total", outcome="known_answer_passed") == 1
    assert value(after, "fleetgrid_verification_outcomes_total", outcome="known_answer_failed") == 2
    assert value(after, "fleetgrid_automatic_suspensions_total") == 2
    assert value(after, "fleetgrid_implausible_reports_total", reason="bytes") == 1
    assert value(after, "fleetgrid_implausible_reports_total", reason="throughput") == 0
    bands = {band: value(after, "fleetgrid_vehicles_by_reputation", band=band) for band in BANDS}
    assert bands == {"unjudged": 1, "untrusted": 1, "trusted": 2, "suspended": 2}, bands


def test_rate_limited_requests_are_counted_by_route_kind(tmp_path, clock):
    """Two wrong credentials empty the address's bucket: every request from it then gets 429, counted by what it
    was after (a car's lease, an enrollment), and nothing else is."""
    config = CoordinatorConfig(data_dir=tmp_path, enroll_token=ENROLL, operator_token=OPERATOR,
                               tenant_tokens={"acme": TENANT}, auth_failure_limit=RateLimit(burst=2, per_s=0.001))
    coord = Coordinator(config, clock=clock)
    answers: list[int] = []

    async def scenario(client: httpx.AsyncClient) -> None:
        baseline = samples((await client.get("/metrics", headers=auth(OPERATOR))).text)
        assert value(baseline, "fleetgrid_rate_limited_requests_total", route_kind="car") == 0
        for _ in range(3):
            answers.append((await client.post("/v1/leases", json={"state": PARKED},
                                              headers=auth("fgv_nobody.nobody.x"))).status_code)
        answers.append((await client.post("/v1/vehicles/enroll", json={
            "enrollment_token": ENROLL, "name": "late", "hardware": "ai4"})).status_code)
        clock.advance(2000.0)  # the bucket refills: the operator may scrape again
        found = samples((await client.get("/metrics", headers=auth(OPERATOR))).text)
        assert value(found, "fleetgrid_rate_limited_requests_total", route_kind="car") == 1
        assert value(found, "fleetgrid_rate_limited_requests_total", route_kind="enroll") == 1
        assert value(found, "fleetgrid_rate_limited_requests_total", route_kind="serving") == 0

    try:
        serve(coord, scenario)
    finally:
        coord.store.close()
    assert answers == [401, 401, 429, 429]
    assert [route_kind(p) for p in ("/v1/leases/l-1/renew", "/v1/embeddings", "/login", "/v1/jobs", "/x")] == [
        "car", "serving", "login", "other", "other"]
