"""Billing through the coordinator's API, in process on a manual clock: the price list and its bad input, owners
and their cars (and not another owner's), a preempted-and-resumed unit paid once, a replica that lost its quorum
not paid, and the statements, bill and payout export that follow."""

from __future__ import annotations

import calendar
import csv
import hashlib
import io
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fleetgrid.clock import ManualClock
from fleetgrid.coordinator.app import Coordinator, create_app
from fleetgrid.coordinator.config import CoordinatorConfig
from harness import ENROLL, OPERATOR, TENANT

NOV_15 = float(calendar.timegm((2026, 11, 15, 12, 0, 0)))
PLUGGED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": True, "eligible": True}
PRICES = {"currency": "USD", "operator_fee": "0.1",
          "prices": {"inference": {"per_item": "0.001", "per_accelerator_s": "0.0001"}}}


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


class Api:
    def __init__(self, client: TestClient, clock: ManualClock) -> None:
        self.client, self.clock = client, clock

    def call(self, method: str, path: str, token: str | None, **kw):
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return self.client.request(method, "/v1" + path, headers=headers, **kw)

    def ok(self, method: str, path: str, token: str | None, status: int = 200, **kw):
        r = self.call(method, path, token, **kw)
        assert r.status_code == status, r.text
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text

    def upload(self, data: bytes, token: str) -> str:
        digest = hashlib.sha256(data).hexdigest()
        assert self.call("PUT", f"/artifacts/{digest}", token, content=data).status_code in (200, 201)
        return digest

    def enroll(self, name: str) -> tuple[str, str]:
        body = {"enrollment_token": ENROLL, "name": name, "hardware": "ai4"}
        cred = self.ok("POST", "/vehicles/enroll", None, 201, json=body)["credential"]
        return cred, cred.split(".")[1]

    def lease(self, cred: str) -> dict:
        return self.ok("POST", "/leases", cred, json={"state": PLUGGED})

    def owner(self, name: str, *cars: str, tariff: str = "0.20") -> str:
        token = self.ok("POST", "/owners", OPERATOR, 201, json={"name": name, "tariff": tariff})["token"]
        for vid in cars:
            self.ok("POST", f"/owners/{name}/cars", OPERATOR, json={"vehicle_id": vid})
        return token

    def submit(self, items: int, **spec) -> str:
        x = np.random.default_rng(0).normal(size=(items, 40)).astype(np.float32)
        body = {"model": "mnist1d-cnn", "inputs": self.upload(npy(x), TENANT), "input_format": "npy", **spec}
        return self.ok("POST", "/jobs", TENANT, 201, json=body)["job_id"]


@pytest.fixture
def api(tmp_path) -> Iterator[Api]:
    clock = ManualClock(NOV_15)
    config = CoordinatorConfig(data_dir=tmp_path, enroll_token=ENROLL, operator_token=OPERATOR,
                               tenant_tokens={"acme": TENANT}, sweep_interval_s=3600.0)
    coord = Coordinator(config, clock=clock)
    try:
        with TestClient(create_app(coordinator=coord)) as client:
            yield Api(client, clock)
    finally:
        coord.store.close()


def test_bad_prices_are_refused_naming_the_problem_and_change_nothing(api):
    assert api.call("GET", "/prices", OPERATOR).status_code == 404
    first = api.ok("PUT", "/prices", OPERATOR, json=PRICES)
    assert first["version"] == 1 and first["prices"]["inference"]["per_item"] == "0.001"
    bad = [
        ({**PRICES, "currency": "ABC"}, 400, "ISO 4217"),
        ({**PRICES, "operator_fee": "1.2"}, 400, "operator_fee"),
        ({**PRICES, "operator_fee": "-0.1"}, 400, "operator_fee"),
        ({**PRICES, "prices": {"inference": {"per_item": "-0.001"}}}, 400, "inference.per_item"),
        ({**PRICES, "prices": {"inference": {"per_item": "1e400000"}}}, 400, "inference.per_item"),
        ({**PRICES, "prices": {"inference": {"per_item": "free"}}}, 400, "not a decimal number"),
        ({**PRICES, "prices": {"inference": {"per_item": 0.001}}}, 422, "per_item"),
        ({**PRICES, "prices": {"inference": {"per_hour": "1"}}}, 400, "per_hour"),
        ({**PRICES, "currency": "EUR"}, 409, "currency"),
    ]
    for body, status, needle in bad:
        r = api.call("PUT", "/prices", OPERATOR, json=body)
        assert r.status_code == status and needle in r.json()["message"], (needle, r.text)
    assert api.ok("GET", "/prices", TENANT) == first  # tenants may read it; nothing changed
    assert api.call("PUT", "/prices", TENANT, json=PRICES).status_code == 401


def test_owners_see_only_their_own_cars(api):
    car_a, vid_a = api.enroll("a")
    car_b, vid_b = api.enroll("b")
    alice, bob = api.owner("alice", vid_a), api.owner("bob", vid_b)
    assert alice.startswith("fgown_")
    assert [c["vehicle_id"] for c in api.ok("GET", "/owner/cars", alice)] == [vid_a]
    assert api.ok("GET", f"/owner/cars/{vid_a}", alice)["name"] == "a"
    for path in (f"/owner/cars/{vid_b}", "/owner/cars/no-such-car"):  # another owner's car, or none: 404 alike
        r = api.call("GET", path, alice)
        assert r.status_code == 404 and "not one of your cars" in r.json()["message"]
    r = api.call("POST", "/owners/alice/cars", OPERATOR, json={"vehicle_id": vid_b})
    assert r.status_code == 409 and "bob" in r.json()["message"]
    assert api.ok("GET", "/owner", bob)["cars"] == [vid_b]  # unchanged
    for token, path in ((alice, "/owners"), (alice, "/payouts"), (TENANT, "/owner/statement"), (alice, "/bill"),
                        (car_a, "/owner/statement"), (OPERATOR, "/owner/cars"), ("fgown_forged", "/owner")):
        assert api.call("GET", path, token).status_code == 401, (token, path)
    r = api.call("POST", "/owners", OPERATOR, json={"name": "carol", "tariff": "-1"})
    assert r.status_code == 400 and "tariff" in r.json()["message"]
    r = api.call("PUT", "/owner/tariff", alice, json={"tariff": "99999"})
    assert r.status_code == 400 and "tariff" in r.json()["message"]
    r = api.call("GET", "/owners/carol/statement", OPERATOR)
    assert r.status_code == 404 and "carol" in r.json()["message"]
    assert [o["name"] for o in api.ok("GET", "/owners", OPERATOR)] == ["alice", "bob"]
    assert api.ok("PUT", "/owner/tariff", alice, json={"tariff": "0.31"})["tariff"] == "0.31"


def test_a_resumed_unit_is_paid_once_and_the_statements_add_up(api):
    api.ok("PUT", "/prices", OPERATOR, json=PRICES)
    car_a, vid_a = api.enroll("a")
    car_b, vid_b = api.enroll("b")
    alice, bob = api.owner("alice", vid_a), api.owner("bob", vid_b)
    job = api.submit(100, unit_items=100)
    first = api.lease(car_a)
    api.clock.advance(60)
    checkpoint = api.upload(npy(np.zeros((40, 10), np.float32)), car_a)
    api.ok("POST", f"/leases/{first['lease_id']}/fail", car_a, json={
        "reason": "driving away", "handback": True, "done_items": 40, "checkpoint": checkpoint, "compute_s": 30})
    second = api.lease(car_b)
    assert second["checkpoint"]["done_items"] == 40
    api.clock.advance(60)
    result = api.upload(npy(np.zeros((100, 10), np.float32)), car_b)
    api.ok("POST", f"/leases/{second['lease_id']}/complete", car_b, json={"result": result, "compute_s": 50})
    assert api.ok("GET", f"/jobs/{job}", TENANT)["state"] == "done"
    ledger = {e["vehicle_id"]: e["items"] for e in api.ok("GET", "/ledger", OPERATOR)}
    assert ledger == {vid_a: 40, vid_b: 60}  # 100 items, paid once

    # alice: 40 items x 0.001 + 30 s x 0.0001 = 0.043; bob: 60 x 0.001 + 50 x 0.0001 = 0.065; fee 10%.
    a = api.ok("GET", "/owner/statement?month=2026-11", alice)
    b = api.ok("GET", "/owner/statement", bob)  # the current month by the coordinator's clock
    assert (a["charges_micro"], a["fee_micro"], a["gross_micro"]) == (43_000, 4_300, 38_700)
    assert (b["charges_micro"], b["fee_micro"], b["gross_micro"]) == (65_000, 6_500, 58_500)
    assert [(w["workload"], w["items"]) for w in a["work"]] == [("inference", 40)] and a["cars"] == [vid_a]
    # Plugged in: (100 W x 30 s + 250 W x 60 s held) / 0.88, at 0.20 per kWh.
    assert a["energy_wh"] == pytest.approx((100 * 30 + 250 * 60) / 3600 / 0.88)
    assert a["net_micro"] == a["gross_micro"] - a["energy_cost_micro"] and a["energy_cost_micro"] > 0
    assert a["hours_lent"] == pytest.approx(60 / 3600)
    bill = api.ok("GET", "/bill?month=2026-11", TENANT)
    assert bill["total_micro"] == 108_000 == a["charges_micro"] + b["charges_micro"]
    assert [(j["job_id"], j["items"], j["charge_micro"]) for j in bill["jobs"]] == [(job, 100, 108_000)]
    assert api.ok("GET", "/owners/alice/statement?month=2026-11", OPERATOR) == a
    rows = list(csv.DictReader(io.StringIO(api.ok("GET", "/payouts?month=2026-11", OPERATOR))))
    assert [(r["owner"], r["amount"], int(r["amount_micro"])) for r in rows] == [
        ("alice", "0.038700", 38_700), ("bob", "0.058500", 58_500)]

    empty = api.ok("GET", "/owner/statement?month=2020-01", alice)  # no data: an empty statement
    assert (empty["work"], empty["unpaid"], empty["gross_micro"], empty["hours_lent"]) == ([], [], 0, 0.0)
    assert api.ok("GET", "/bill?month=2020-01", TENANT)["jobs"] == []
    assert len(api.ok("GET", "/payouts?month=2020-01", OPERATOR).splitlines()) == 3  # header + two owners at 0
    for month, status in (("2026-13", 400), ("nov", 422), ("1969-12", 400)):
        r = api.call("GET", f"/owner/statement?month={month}", alice)
        assert r.status_code == status and "month" in r.json()["message"], r.text


def test_a_replica_that_lost_the_quorum_is_not_paid_and_the_statement_says_so(api):
    api.ok("PUT", "/prices", OPERATOR, json=PRICES)
    cars = [api.enroll(f"c{i}") for i in range(3)]
    tokens = {vid: api.owner(f"o{i}", vid) for i, (_, vid) in enumerate(cars)}
    job = api.submit(10, unit_items=10, redundancy={"replicas": 2, "quorum": 2})
    outputs = [np.zeros((10, 10), np.float32), np.ones((10, 10), np.float32), np.zeros((10, 10), np.float32)]
    for (cred, _), out in zip(cars, outputs, strict=True):  # the third replica is added after the two disagree
        grant = api.lease(cred)
        api.clock.advance(10)
        api.ok("POST", f"/leases/{grant['lease_id']}/complete", cred,
               json={"result": api.upload(npy(out), cred), "compute_s": 5})
    assert api.ok("GET", f"/jobs/{job}", TENANT)["state"] == "done"
    statements = [api.ok("GET", "/owner/statement?month=2026-11", tokens[vid]) for _, vid in cars]
    assert [s["gross_micro"] for s in statements] == [9_450, 0, 9_450]  # (0.01 + 0.0005) less 10%
    loser = statements[1]
    assert [(u["reason"], u["leases"], u["items"]) for u in loser["unpaid"]] == [
        ("rejected: unit 0: the result disagreed with the quorum of 2", 1, 10)]
    bill = api.ok("GET", "/bill?month=2026-11", TENANT)
    assert bill["total_micro"] == 21_000 and bill["jobs"][0]["unpaid_leases"] == 1
