"""``fleetgrid serve --log-format json`` as a real process: every line it writes is a JSON object, one per request
with the request's id, and no line holds a token."""

from __future__ import annotations

import json

import httpx

from fleetgrid.localfleet import CoordinatorProcess
from harness import ENROLL, OPERATOR, TENANT


def test_json_logs_one_line_per_request_with_its_id_and_never_a_token(tmp_path):
    args = ["--enroll-token", ENROLL, "--operator-token", OPERATOR, "--tenant", f"acme={TENANT}",
            "--log-format", "json"]
    proc = CoordinatorProcess(tmp_path, extra_args=args).start()
    try:
        with httpx.Client(base_url=proc.url, timeout=30) as http:
            r = http.get("/v1/jobs", headers={"authorization": f"Bearer {TENANT}", "x-request-id": "job-list-1"})
            assert r.status_code == 200 and r.headers["x-request-id"] == "job-list-1"
            r = http.get("/v1/fleet", headers={"authorization": f"Bearer {TENANT}"})
            assert r.status_code == 401
            refused_id = r.json()["request_id"]
            assert r.headers["x-request-id"] == refused_id
            r = http.post("/v1/vehicles/enroll", json={"enrollment_token": ENROLL, "name": "c", "hardware": "ai4"})
            car = r.json()["credential"]
            r = http.post("/v1/leases", json={"state": {"drive": "parked", "soc": 0.8, "network": "wifi",
                                                        "plugged_in": False, "eligible": True}},
                          headers={"authorization": f"Bearer {car}", "x-request-id": "lease-1"})
            assert r.status_code == 204
            assert http.get("/metrics", headers={"authorization": f"Bearer {OPERATOR}"}).status_code == 200
    finally:
        proc.stop()
    lines = [line for line in proc.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line, uvicorn's start-up and shutdown included
    requests = {r["request_id"]: r for r in records if r["logger"] == "fleetgrid.access" and r["route"] != "/healthz"}
    assert len(requests) == 5  # (start() polled /healthz until the coordinator answered)
    assert (requests["job-list-1"]["route"], requests["job-list-1"]["status"],
            requests["job-list-1"]["principal"]) == ("/v1/jobs", 200, "tenant")
    assert (requests[refused_id]["status"], requests[refused_id]["error"]) == (401, "unauthorized")
    assert (requests["lease-1"]["route"], requests["lease-1"]["status"],
            requests["lease-1"]["principal"]) == ("/v1/leases", 204, "vehicle")
    assert any(r["message"] == "listening" and r["url"] == proc.url for r in records)
    log = proc.log()
    for secret in (TENANT, OPERATOR, ENROLL, car):
        assert secret not in log
