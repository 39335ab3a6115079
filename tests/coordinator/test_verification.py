"""Verified inference results through the whole HTTP stack (in process, SQLite and PostgreSQL, manual clock): a car that
returns plausible wrong results is caught, suspended and not paid, its results are recomputed, and the tenant's
result holds only right rows; reports claiming more than the coordinator saw lower a car's reputation."""

from __future__ import annotations

import base64
import hashlib
import io
import json

import numpy as np
import pytest
from starlette.testclient import TestClient

from fake_models import ITEM, expected  # registers fake-summax
from fleetgrid.clock import ManualClock
from fleetgrid.coordinator.app import Coordinator, create_app
from fleetgrid.coordinator.config import CoordinatorConfig
from fleetgrid.coordinator.reputation import TrustPolicy

ENROLL, OPERATOR, TENANT = "fge_verify-enroll", "fgo_verify-operator", "fgt_verify-tenant"
PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}
X = np.random.default_rng(7).normal(size=(48, ITEM)).astype(np.float32)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


class Fleet:
    def __init__(self, api: TestClient, coord: Coordinator, clock: ManualClock) -> None:
        self.api, self.coord, self.clock = api, coord, clock
        self.last_grant: dict = {}

    def enroll(self, name: str) -> str:
        r = self.api.post("/v1/vehicles/enroll", json={"enrollment_token": ENROLL, "name": name, "hardware": "ai4"})
        assert r.status_code == 201, r.text
        return r.json()["credential"]

    def submit(self, x: np.ndarray, unit_items: int = 4) -> str:
        data = _npy(x)
        digest = hashlib.sha256(data).hexdigest()
        assert self.api.put(f"/v1/artifacts/{digest}", content=data, headers=_auth(TENANT)).status_code in (200, 201)
        r = self.api.post("/v1/jobs", headers=_auth(TENANT), json={
            "model": "fake-summax", "inputs": digest, "input_format": "npy", "unit_items": unit_items})
        assert r.status_code == 201, r.text
        return r.json()["job_id"]

    def work(self, cred: str, *, cheat: bool = False, compute_s: float = 0.0, wifi_bytes: int = 0) -> int | None:
        """Lease one unit, compute it (wrong but plausible when ``cheat``) and complete it; the status code of the
        completion, or None when there was no work (or the car is refused)."""
        r = self.api.post("/v1/leases", json={"state": PARKED}, headers=_auth(cred))
        if r.status_code != 200:
            return None
        grant = self.last_grant = r.json()
        items = np.load(io.BytesIO(self.api.get(f"/v1/artifacts/{grant['input']['digest']}",
                                                headers=_auth(cred)).content))
        out = expected(items)
        if cheat:
            out = out + np.float32(0.5)  # finite, the right shape: only a comparison can tell
        data = _npy(out.astype(np.float32))
        self.clock.advance(1.0)
        body = {"result": hashlib.sha256(data).hexdigest(), "inline": base64.b64encode(data).decode(),
                "compute_s": compute_s, "wifi_bytes": wifi_bytes}
        done = self.api.post(f"/v1/leases/{grant['lease_id']}/complete", json=body, headers=_auth(cred))
        return done.status_code

    def job(self, job_id: str) -> dict:
        return self.api.get(f"/v1/jobs/{job_id}", headers=_auth(TENANT)).json()

    def result(self, job_id: str) -> np.ndarray:
        r = self.api.get(f"/v1/jobs/{job_id}/result", headers=_auth(TENANT))
        assert r.status_code == 200, r.text
        return np.load(io.BytesIO(r.content))


@pytest.fixture
def fleet(tmp_path, store_url):
    clock = ManualClock(1_000_000.0)
    config = CoordinatorConfig(data_dir=tmp_path, database_url=store_url, enroll_token=ENROLL, operator_token=OPERATOR,
                               tenant_tokens={"acme": TENANT}, verify_results=True,
                               trust=TrustPolicy(trust_after=2, floor_rate=0.05))
    coord = Coordinator(config, clock)
    try:
        with TestClient(create_app(coordinator=coord)) as api:
            yield Fleet(api, coord, clock)
    finally:
        coord.store.close()


def _vehicle_id(cred: str) -> str:
    return cred.split(".")[1]


def test_a_cheating_car_is_caught_suspended_unpaid_and_its_work_recomputed(fleet):
    honest = [fleet.enroll(f"honest-{i}") for i in range(3)]
    cheat = fleet.enroll("cheat")
    job_id = fleet.submit(X)  # 12 units
    for _ in range(40):
        for cred in [cheat, *honest]:
            fleet.work(cred, cheat=cred == cheat)
        if fleet.job(job_id)["state"] != "running":
            break
    status = fleet.job(job_id)
    assert status["state"] == "done", status
    np.testing.assert_allclose(fleet.result(job_id), expected(X), rtol=1e-6)  # not one wrong row delivered

    cheater = fleet.coord.store.get_vehicle(_vehicle_id(cheat))
    assert cheater is not None and cheater.suspended and "outvoted" in (cheater.suspended_reason or "")
    refused = fleet.api.post("/v1/leases", json={"state": PARKED}, headers=_auth(cheat))
    assert refused.status_code == 403 and "suspended" in refused.json()["message"]
    rows = [r for r in fleet.coord.store.usage_lines(0.0, 1e12) if r.vehicle_id == cheater.vehicle_id]
    assert rows and all(r.rejected for r in rows)  # none of its work is paid
    for cred in honest:
        rep = fleet.coord.store.get_reputation(_vehicle_id(cred))
        assert rep.faults == 0 and rep.agreed >= 1
        assert not fleet.coord.store.get_vehicle(_vehicle_id(cred)).suspended  # type: ignore[union-attr]
    shown = fleet.api.get(f"/v1/vehicles/{cheater.vehicle_id}/reputation", headers=_auth(OPERATOR))
    assert shown.status_code == 200, shown.text
    assert shown.json()["suspended"] and shown.json()["faults"] >= 1


def _run_to_end(fleet: Fleet, job_id: str, cars: list[str]) -> dict:
    for _ in range(60):
        for cred in cars:
            fleet.work(cred)
        status = fleet.job(job_id)
        if status["state"] != "running":
            return status
    return fleet.job(job_id)


def test_a_car_that_cheats_once_trusted_is_caught_and_its_released_results_recomputed(fleet):
    a, b, sneak = (fleet.enroll(n) for n in ("a", "b", "sneak"))
    store, verifier = fleet.coord.store, fleet.coord.scheduler.verifier
    assert verifier is not None
    # Earn trust honestly: every result of an untrusted car is confirmed by another car's first.
    assert _run_to_end(fleet, fleet.submit(X), [sneak, a, b])["state"] == "done"
    assert fleet.coord.config.trust.trusted(store.get_reputation(_vehicle_id(sneak)))

    job_id = fleet.submit(X)
    verifier.draw = lambda: 0.999  # trusted results are not spot-checked ...
    for _ in range(2):
        assert fleet.work(sneak, cheat=True) == 200  # ... so these wrong ones are accepted unconfirmed
    assert fleet.job(job_id)["units_done"] == 2
    assert len(store.unverified_results(_vehicle_id(sneak), ["inference"])) == 2
    verifier.draw = lambda: 0.0  # the next one is checked
    assert fleet.work(sneak, cheat=True) == 200
    assert fleet.job(job_id)["units_done"] == 2
    status = _run_to_end(fleet, job_id, [a, b])
    assert status["state"] == "done", status
    np.testing.assert_allclose(fleet.result(job_id), expected(X), rtol=1e-6)  # the released wrong rows were redone
    rows = [r for r in store.usage_lines(0.0, 1e12) if r.vehicle_id == _vehicle_id(sneak) and r.job_id == job_id]
    assert len(rows) == 3 and all(r.rejected for r in rows)
    # One fault of a car with a good record costs it its trust, not yet its credential; the next one does.
    rep = store.get_reputation(_vehicle_id(sneak))
    assert rep.faults == 1 and rep.streak == 0 and not store.get_vehicle(_vehicle_id(sneak)).suspended  # type: ignore[union-attr]
    job_id = fleet.submit(X[:8])
    assert fleet.work(sneak, cheat=True) == 200
    assert _run_to_end(fleet, job_id, [a, b])["state"] == "done"
    assert store.get_vehicle(_vehicle_id(sneak)).suspended  # type: ignore[union-attr]
    np.testing.assert_allclose(fleet.result(job_id), expected(X[:8]), rtol=1e-6)


def test_a_new_car_is_first_given_a_known_answer_and_caught_by_it(fleet):
    a, b = fleet.enroll("a"), fleet.enroll("b")
    job_id = fleet.submit(X)
    for _ in range(3):  # a few units confirmed by both cars: answers the coordinator knows
        fleet.work(a)
        fleet.work(b)
    done_before = fleet.job(job_id)["units_done"]
    assert done_before >= 1
    store, regular = fleet.coord.store, dict(fleet.last_grant)

    def probed() -> dict:
        unit = store.lease_context(fleet.last_grant["lease_id"])[1]  # type: ignore[index]
        assert unit.payload and "known_answer" in unit.payload, unit  # a copy of a confirmed unit ...
        assert store.accepted_results(job_id)[unit.idx] == (unit.idx, unit.payload["known_answer"])
        return fleet.last_grant

    honest = fleet.enroll("newcomer")
    assert fleet.work(honest) == 200
    grant = probed()
    assert set(grant) == set(regular) and grant["job_id"] == job_id  # ... granted like any unit
    assert grant["replica"] == 0
    assert store.get_reputation(_vehicle_id(honest)).agreed == 1  # passed: counts towards its trust

    cheat = fleet.enroll("cheat")
    assert fleet.work(cheat, cheat=True) == 200
    probed()
    assert store.get_vehicle(_vehicle_id(cheat)).suspended  # type: ignore[union-attr]
    assert "known answer" in (store.get_vehicle(_vehicle_id(cheat)).suspended_reason or "")  # type: ignore[union-attr]
    assert fleet.job(job_id)["units_done"] == done_before  # the check changed no result
    assert all(r.rejected for r in store.usage_lines(0.0, 1e12) if r.vehicle_id == _vehicle_id(cheat))
    assert _run_to_end(fleet, job_id, [a, b, honest])["state"] == "done"
    np.testing.assert_allclose(fleet.result(job_id), expected(X), rtol=1e-6)


def test_implausible_reports_are_clamped_and_lower_the_reputation(fleet):
    a, b = fleet.enroll("a"), fleet.enroll("b")
    job_id = fleet.submit(X[:8])
    assert fleet.work(a, compute_s=4.5, wifi_bytes=1 << 30) == 200  # held 1 s; a lease moves a few hundred bytes
    rep = fleet.coord.store.get_reputation(_vehicle_id(a))
    assert rep.implausible == 1
    row = next(r for r in fleet.coord.store.usage_lines(0.0, 1e12) if r.vehicle_id == _vehicle_id(a))
    assert row.accelerator_s == pytest.approx(1.0) and row.wifi_bytes < 2 << 20  # paid for what was seen
    for _ in range(10):
        fleet.work(b)
        fleet.work(a)
    assert fleet.job(job_id)["state"] == "done"
    assert fleet.coord.store.get_reputation(_vehicle_id(b)).implausible == 0


def test_without_verification_a_unit_is_computed_once(tmp_path):
    clock = ManualClock(1_000_000.0)
    config = CoordinatorConfig(data_dir=tmp_path, enroll_token=ENROLL, operator_token=OPERATOR,
                               tenant_tokens={"acme": TENANT})
    coord = Coordinator(config, clock)
    try:
        with TestClient(create_app(coordinator=coord)) as api:
            fleet = Fleet(api, coord, clock)
            car = fleet.enroll("only")
            job_id = fleet.submit(X[:8])
            assert fleet.work(car) == 200 and fleet.work(car) == 200
            assert fleet.job(job_id)["state"] == "done"
            assert len(coord.store.units_of(job_id)) == 2
    finally:
        coord.store.close()


def test_a_non_finite_result_is_refused_unpaid_and_the_unit_stays_with_its_car(fleet):
    a = fleet.enroll("a")
    job_id = fleet.submit(X[:8])
    r = fleet.api.post("/v1/leases", json={"state": PARKED}, headers=_auth(a))
    grant = r.json()
    for bad in (np.full((4, 2), np.nan, np.float32), np.full((4, 2), np.inf, np.float32)):
        data = _npy(bad)
        body = {"result": hashlib.sha256(data).hexdigest(), "inline": base64.b64encode(data).decode()}
        refused = fleet.api.post(f"/v1/leases/{grant['lease_id']}/complete", json=body, headers=_auth(a))
        assert refused.status_code == 400, refused.text
        assert "NaN or infinity" in refused.json()["message"]
    assert fleet.coord.store.usage_lines(0.0, 1e12) == []  # nothing metered, nothing paid
    assert fleet.coord.store.get_lease(grant["lease_id"]).state == "active"  # type: ignore[union-attr]
    assert fleet.job(job_id)["units_done"] == 0


@pytest.mark.parametrize("tolerance", [{"atol": "Infinity"}, {"rtol": "Infinity"}, {"atol": "NaN"}])
def test_an_infinite_tolerance_is_refused_as_it_would_make_any_results_agree(fleet, tolerance):
    data = _npy(X)
    digest = hashlib.sha256(data).hexdigest()
    fleet.api.put(f"/v1/artifacts/{digest}", content=data, headers=_auth(TENANT))
    body = {"model": "fake-summax", "inputs": digest, "input_format": "npy",
            "redundancy": {"replicas": 2, "quorum": 2, **tolerance}}
    r = fleet.api.post("/v1/jobs", content=json.dumps(body, allow_nan=True), headers={
        **_auth(TENANT), "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "redundancy" in r.json()["message"] and "finite" in r.json()["message"]
