"""The operator's usage by month and serving latency per model, in a real browser against a real coordinator
process: the figures are the ones the cars' work made, every view is screenshotted into tests/artifacts/web/, and
neither page shows an owner or a tenant anything (403, nothing of anyone's on it; no session: the login form)."""

from __future__ import annotations

import base64
import calendar
import threading
import time
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from test_dashboard import Visitor, browser  # noqa: F401 - browser is a fixture used here

from fleetgrid.coordinator.store import LedgerRecord, SQLStore
from harness import ENROLL, OPERATOR, TENANT, auth, npy, sha, start_coordinator

PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}
DIM = 384
SERVED = 3
"""Embedding requests a scripted replica answers."""


def _last_month() -> tuple[str, float]:
    year, month = time.gmtime()[:2]
    year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return f"{year:04d}-{month:02d}", float(calendar.timegm((year, month, 2, 12, 0, 0)))


def _answer_embeddings(api: httpx.Client, car: str, lease_id: str) -> None:
    """What a serving car does, scripted: take each request and answer it with unit-length vectors."""
    def ask(into: dict) -> None:
        until = time.monotonic() + 120
        while True:  # a 429 until the replica's first exchange connects it: retry when told, as a client would
            r = api.post("/v1/embeddings", headers=auth(TENANT), json={"model": "emb", "input": ["hi"]})
            if r.status_code != 429 or time.monotonic() > until:
                break
            time.sleep(float(r.headers.get("Retry-After", "0.1")))
        into["r"] = r

    for _ in range(SERVED):
        call: dict = {}
        asking = threading.Thread(target=ask, args=(call,))
        asking.start()
        requests: list = []
        until = time.monotonic() + 120  # a long poll may come back empty (the request not sent yet on a busy machine)
        while not requests:
            assert time.monotonic() < until, "the tenant's request never reached the serving car"
            r = api.post(f"/v1/serve/leases/{lease_id}/exchange", headers=auth(car),
                         json={"answers": [], "wait_s": 20})
            assert r.status_code == 200, r.text
            requests = r.json()["requests"]
        [request] = requests
        vector = np.zeros((1, DIM), "<f4")
        vector[0, 0] = 1.0
        r = api.post(f"/v1/serve/leases/{lease_id}/exchange", headers=auth(car), json={
            "answers": [{"request_id": request["request_id"], "vectors": base64.b64encode(vector.tobytes()).decode(),
                         "rows": 1, "dim": DIM}], "wait_s": 0})
        assert r.status_code == 200, r.text
        asking.join(timeout=30)
        assert call["r"].status_code == 200, call["r"].text


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Owners alice (car a1) and bob (car b1), each car having computed one unit of acme's job this month, a1 also
    a row last month; and acme's embeddings deployment, whose replica (an owner-less car) answered SERVED requests."""
    data_dir = tmp_path_factory.mktemp("coord")
    proc = start_coordinator(data_dir)
    api = httpx.Client(base_url=proc.url, timeout=30)
    cars = {}
    for name in ("a1", "b1", "server"):
        r = api.post("/v1/vehicles/enroll", json={"enrollment_token": ENROLL, "name": name, "hardware": "ai4"})
        assert r.status_code == 201, r.text
        cars[name] = r.json()
    owners = {}
    for owner, car in (("alice", "a1"), ("bob", "b1")):
        owners[owner] = api.post("/v1/owners", json={"name": owner}, headers=auth(OPERATOR)).json()["token"]
        assert api.post(f"/v1/owners/{owner}/cars", json={"vehicle_id": cars[car]["vehicle_id"]},
                        headers=auth(OPERATOR)).status_code == 200
    inputs = npy(np.zeros((20, 40), np.float32))
    assert api.put(f"/v1/artifacts/{sha(inputs)}", content=inputs, headers=auth(TENANT)).status_code in (200, 201)
    r = api.post("/v1/jobs", json={"model": "mnist1d-cnn", "inputs": sha(inputs), "input_format": "npy",
                                   "unit_items": 10, "name": "acme-batch"}, headers=auth(TENANT))
    assert r.status_code == 201, r.text
    for car in ("a1", "b1"):
        cred = cars[car]["credential"]
        grant = api.post("/v1/leases", json={"state": PARKED}, headers=auth(cred)).json()
        out = npy(np.zeros((grant["items"], 10), np.float32))
        r = api.post(f"/v1/leases/{grant['lease_id']}/complete", headers=auth(cred), json={
            "result": sha(out), "inline": base64.b64encode(out).decode(), "compute_s": 0.5})
        assert r.status_code == 200, r.text
    month, at = _last_month()
    api.close()
    proc.stop()  # one coordinator per SQLite file: the row is written between two runs on the same database
    store = SQLStore(f"sqlite:///{(data_dir / 'coordinator.db').resolve()}")
    try:  # a row from last month, as the ledger would hold it
        store.record_ledger(LedgerRecord(lease_id="lease-last-month", vehicle_id=cars["a1"]["vehicle_id"],
                                         job_id="job-last-month", items=777, compute_s=7200.0, cellular_bytes=0,
                                         wifi_bytes=5_000_000, at=at))
    finally:
        store.close()
    proc = start_coordinator(data_dir)
    api = httpx.Client(base_url=proc.url, timeout=30)
    r = api.post("/v1/jobs", json={"kind": "serve", "model": "minilm-l6-v2", "replicas": 1, "name": "emb"},
                 headers=auth(TENANT))
    assert r.status_code == 201, r.text
    server = cars["server"]["credential"]
    grant = api.post("/v1/leases", json={"state": PARKED}, headers=auth(server)).json()
    assert grant["kind"] == "serve", grant
    _answer_embeddings(api, server, grant["lease_id"])
    yield {"url": proc.url, "api": api, "cars": cars, "owners": owners, "last_month": month}
    api.close()
    proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


def _rows(v: Visitor, table: str) -> list[list[str]]:
    return [[c.strip() for c in row.inner_text().split("\t")] for row in v.page.locator(f"#{table} tbody tr").all()]


def test_the_operator_sees_serving_latency_per_model(fleet, browser):  # noqa: F811
    v = Visitor(browser, fleet["url"])
    v.login(OPERATOR)
    row = v.page.locator("#serving tr[data-model='minilm-l6-v2']")
    cells = [c.strip() for c in row.inner_text().split("\t")]
    assert cells[:4] == ["minilm-l6-v2", "1", "1", str(SERVED)], cells
    p50, p95 = float(cells[4]), float(cells[5])
    assert 0 < p50 <= p95
    v.shot("operator-fleet-serving")
    v.clean()


def test_the_operator_sees_usage_per_owner_and_car_by_month(fleet, browser):  # noqa: F811
    v = Visitor(browser, fleet["url"])
    v.login(OPERATOR)
    v.goto("/dashboard/usage")
    this_month = time.strftime("%Y-%m", time.gmtime())
    assert v.page.inner_text("h1") == f"Usage, {this_month}"
    owners = {r[0]: r for r in _rows(v, "owners")}
    assert set(owners) == {"alice", "bob"} and owners["alice"][1:4] == ["1", "1", "10"]  # 1 car, 1 lease, 10 items
    assert {r[1] for r in _rows(v, "cars")} == {"alice", "bob"}
    v.shot("operator-usage-this-month")

    v.page.select_option("#month-select", fleet["last_month"])
    v.page.click("#month button[type=submit]")
    v.page.wait_for_load_state()
    assert v.page.inner_text("h1") == f"Usage, {fleet['last_month']}"
    (alice,) = _rows(v, "owners")
    assert alice[:4] == ["alice", "1", "1", "777"] and alice[5] == "2.00"  # 7,200 accelerator-seconds
    assert [r[1] for r in _rows(v, "cars")] == ["alice"]
    v.shot("operator-usage-last-month")

    v.goto("/dashboard/usage?month=all")
    owners = {r[0]: r for r in _rows(v, "owners")}
    assert owners["alice"][2:4] == ["2", "787"] and owners["bob"][2:4] == ["1", "10"]

    assert v.goto("/dashboard/usage?month=2026-13").status == 400
    assert "accepted: YYYY-MM" in v.page.inner_text("[role=alert]")
    assert not v.page.locator("#owners").count()  # nothing shown for a month that is not one
    v.errors = [e for e in v.errors if "400" not in e]
    v.clean()


@pytest.mark.parametrize("who", ["alice", "tenant"])
def test_neither_page_shows_an_owner_or_a_tenant_anything(fleet, browser, who):  # noqa: F811
    v = Visitor(browser, fleet["url"])
    v.login(fleet["owners"]["alice"] if who == "alice" else TENANT)
    for path in ("/dashboard/usage", f"/dashboard/usage?month={fleet['last_month']}", "/dashboard/usage?month=all",
                 "/dashboard/fleet"):
        assert v.goto(path).status == 403, path
        text = v.page.inner_text("main")
        assert "bob" not in text and "777" not in text and "minilm" not in text, (path, text)
    v.shot(f"usage-forbidden-{who}")
    v.errors = [e for e in v.errors if "403" not in e]
    v.clean()


def test_without_a_session_the_usage_months_lead_to_the_login_form(fleet):
    with httpx.Client(base_url=fleet["url"]) as client:
        for path in (f"/dashboard/usage?month={fleet['last_month']}", "/dashboard/usage?month=all"):
            r = client.get(path)
            assert r.status_code == 303 and urlsplit(r.headers["location"]).path == "/login", path
