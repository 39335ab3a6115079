"""Cars' usage reports cross-checked through the whole HTTP stack (in process, SQLite and PostgreSQL, manual
clock), with verification off: a report claiming work faster than the car's hardware could do it, or more bytes
than its lease could move, on a completed or a given-up lease, is clamped and lowers the car's reputation."""

from __future__ import annotations

import base64
import hashlib

import numpy as np
import pytest
from starlette.testclient import TestClient

from fake_models import ITEM, SumMaxRunner, expected
from fleetgrid.clock import ManualClock
from fleetgrid.coordinator.app import Coordinator, create_app
from fleetgrid.coordinator.config import CoordinatorConfig
from fleetgrid.coordinator.throughput import HEADROOM
from fleetgrid.errors import UnknownModel
from fleetgrid.models.registry import get_model_spec, register
from fleetgrid.models.spec import ModelSpec
from fleetgrid.vehicle.hardware import get_profile

from .test_verification import ENROLL, OPERATOR, PARKED, TENANT, _auth, _npy

HEAVY_OPS = 1e13
"""A fake model that declares the cost of a forward pass of a five-trillion-parameter model per item: 8 items need
at least 8e13 / (243e12 x HEADROOM) = 0.165 s of an AI4."""


def _heavy() -> ModelSpec:
    try:  # registered once per process, however many modules import this one
        return get_model_spec("fake-heavy")
    except UnknownModel:
        return register(ModelSpec(
            name="fake-heavy", description="test model: [sum, max] of each row, declared very costly",
            input_kind="array", item_shape=(ITEM,), input_dtype="float32", output_shape=(2,), default_batch_size=4,
            default_unit_items=8, needs_model_file=False, extra=None, loader=lambda _file: SumMaxRunner(0.0),
            ops_per_item=HEAVY_OPS))


HEAVY = _heavy()
X = np.random.default_rng(11).normal(size=(16, ITEM)).astype(np.float32)
FASTEST_S = 8 * HEAVY_OPS / (get_profile("ai4").int8_tops * 1e12 * HEADROOM)


class Cars:
    def __init__(self, api: TestClient, coord: Coordinator, clock: ManualClock) -> None:
        self.api, self.coord, self.clock = api, coord, clock

    def enroll(self, name: str) -> tuple[str, str]:
        r = self.api.post("/v1/vehicles/enroll", json={"enrollment_token": ENROLL, "name": name, "hardware": "ai4"})
        assert r.status_code == 201, r.text
        cred = r.json()["credential"]
        return cred, cred.split(".")[1]

    def submit(self, model: str) -> str:
        data = _npy(X[:8])
        digest = hashlib.sha256(data).hexdigest()
        assert self.api.put(f"/v1/artifacts/{digest}", content=data, headers=_auth(TENANT)).status_code in (200, 201)
        r = self.api.post("/v1/jobs", headers=_auth(TENANT), json={
            "model": model, "inputs": digest, "input_format": "npy", "unit_items": 8})
        assert r.status_code == 201, r.text
        return r.json()["job_id"]

    def lease(self, cred: str) -> dict:
        r = self.api.post("/v1/leases", json={"state": PARKED}, headers=_auth(cred))
        assert r.status_code == 200, r.text
        return r.json()

    def complete(self, cred: str, **report: float) -> None:
        grant = self.lease(cred)
        data = _npy(expected(X[:8]).astype(np.float32))
        self.clock.advance(1.0)
        body = {"result": hashlib.sha256(data).hexdigest(), "inline": base64.b64encode(data).decode(), **report}
        r = self.api.post(f"/v1/leases/{grant['lease_id']}/complete", json=body, headers=_auth(cred))
        assert r.status_code == 200, r.text

    def row(self, vehicle_id: str):
        (row,) = [r for r in self.coord.store.usage_lines(0.0, 1e12) if r.vehicle_id == vehicle_id]
        return row

    def implausible(self, vehicle_id: str) -> int:
        return self.coord.store.get_reputation(vehicle_id).implausible


@pytest.fixture
def cars(tmp_path, store_url):
    clock = ManualClock(1_000_000.0)
    config = CoordinatorConfig(data_dir=tmp_path, database_url=store_url, enroll_token=ENROLL,
                               operator_token=OPERATOR, tenant_tokens={"acme": TENANT})
    coord = Coordinator(config, clock)
    try:
        with TestClient(create_app(coordinator=coord)) as api:
            yield Cars(api, coord, clock)
    finally:
        coord.store.close()


def test_work_claimed_faster_than_the_hardware_can_is_cut_and_lowers_the_reputation(cars):
    (fast, fast_id), (honest, honest_id) = cars.enroll("fast"), cars.enroll("honest")
    cars.submit("fake-heavy")
    cars.submit("fake-heavy")
    cars.complete(fast, compute_s=0.001)  # 8 items needing >= 0.165 s, done in a millisecond
    cars.complete(honest, compute_s=0.9)
    row = cars.row(fast_id)
    assert row.items == int(8 * (0.001 + 0.01) / FASTEST_S) < 8  # what an AI4 could do in the time claimed
    assert row.accelerator_s == pytest.approx(0.001)
    assert cars.implausible(fast_id) == 1
    assert (cars.row(honest_id).items, cars.implausible(honest_id)) == (8, 0)


def test_a_cheap_model_done_in_no_time_stands(cars):
    car, vid = cars.enroll("quick")
    cars.submit("fake-summax")  # declares no cost: only its 96 bytes of inputs bound it, in nanoseconds
    cars.complete(car, compute_s=0.0)
    assert (cars.row(vid).items, cars.implausible(vid)) == (8, 0)


def test_ten_times_the_bytes_on_a_completed_lease_are_clamped_and_lower_the_reputation(cars):
    car, vid = cars.enroll("chatty")
    cars.submit("fake-summax")
    cars.complete(car, compute_s=0.5, cellular_bytes=10 * (4 << 20))  # a unit of 96 bytes in; < 1.1 MiB allowed
    row = cars.row(vid)
    assert row.cellular_bytes + row.wifi_bytes < (1 << 20) + 4096 and row.items == 8
    assert cars.implausible(vid) == 1


def test_a_given_up_lease_is_cross_checked_too(cars):
    car, vid = cars.enroll("quitter")
    cars.submit("fake-summax")
    grant = cars.lease(car)
    cars.clock.advance(2.0)
    r = cars.api.post(f"/v1/leases/{grant['lease_id']}/fail", headers=_auth(car), json={
        "reason": "out of memory", "compute_s": 6.5, "wifi_bytes": 10 * (4 << 20)})
    assert r.status_code == 200, r.text
    row = cars.row(vid)
    assert row.accelerator_s == pytest.approx(2.0) and row.wifi_bytes < (1 << 20) + 4096
    assert cars.implausible(vid) == 1
