"""Two coordinators on one PostgreSQL database: a secure round's messages go through the shared store, so cars that
talk only to the replica NOT driving the job, or to either replica request by request, complete the round with the
exact sum, and a car revealing a wrong share is still answered 400 and named; a round its driver left open when it
died is abandoned by the replica taking over, which runs a fresh one."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

from fleetgrid.clock import ManualClock
from fleetgrid.coordinator.app import Coordinator, create_app
from fleetgrid.coordinator.config import CoordinatorConfig
from fleetgrid.protocol import SecAggPlan
from fleetgrid.secagg_wire import (
    EncryptedShareBody,
    KeyAdvertisementBody,
    SecAggDownlink,
    ShareBundleBody,
    UnmaskBody,
    plan_from_wire,
)
from fleetgrid.workloads.training import FedAvgConfig, FlatLayout, build_model, config_from_dict
from fleetgrid.workloads.training.secagg import SecAggCar, decode_sum, quantize
from fleetgrid.workloads.training.secure import round_quantization

pytestmark = pytest.mark.postgres

ENROLL, OPERATOR, TENANT = "fge_sa-enroll", "fgo_sa-operator", "fgt_sa-tenant"
PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}
CARS = 5
SETTINGS = {"local": {"steps": 2, "batch_size": 16}, "secure_aggregation": True,
            "robust": {"norm_bound": "fixed", "max_norm": 1.0},
            "rounds": {"clients_per_round": CARS, "over_selection": 1.0, "min_reports": 3, "deadline_s": 600}}


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _flip(share: str) -> str:
    raw = bytearray(base64.b64decode(share))
    raw[-1] ^= 1
    return base64.b64encode(bytes(raw)).decode()


class Car:
    """One scripted car; ``via(step)`` is the replica its ``step``-th request goes to."""

    def __init__(self, i: int, enrolled: dict, via: Callable[[int], TestClient]) -> None:
        self.i, self.vehicle_id, self.cred = i, enrolled["vehicle_id"], _bearer(enrolled["credential"])
        self._via, self.steps = via, 0
        self.grant: dict = {}
        self.implausible = 0
        """Its implausible verdicts once the round is over."""

    def api(self) -> TestClient:
        self.steps += 1
        return self._via(self.i + self.steps)

    def begin(self) -> None:
        wire = SecAggPlan.model_validate(self.grant["secagg"])
        self.plan, self.member = plan_from_wire(wire), wire.member
        self.me = SecAggCar(wire.member, self.plan)
        rng = np.random.default_rng(self.i)
        self.q = quantize(rng.normal(0, 0.01, self.plan.vector_length).astype(np.float32), self.plan.quantization,
                          rng)
        self.base = f"/v1/train/leases/{self.grant['lease_id']}/secagg"

    def post(self, phase: str, body: dict):
        return self.api().post(f"{self.base}/{phase}", json=body, headers=self.cred)

    def fetch(self, phase: str) -> SecAggDownlink:
        until = time.monotonic() + 60
        while time.monotonic() < until:
            r = self.api().get(f"{self.base}/{phase}", headers=self.cred)
            assert r.status_code == 200, r.text
            down = SecAggDownlink.model_validate(r.json())
            if down.ready:
                return down
            time.sleep(down.retry_after_s)  # the driver's thread gets there on its next look
        raise AssertionError(f"car {self.i}: {phase} never ready")


@contextmanager
def _replicas(postgres_url, tmp_path) -> Iterator[tuple[Coordinator, Coordinator, TestClient, TestClient]]:
    clock = ManualClock(1_000_000.0)
    config = CoordinatorConfig(data_dir=tmp_path, database_url=postgres_url, enroll_token=ENROLL,
                               operator_token=OPERATOR, tenant_tokens={"acme": TENANT})
    first, second = Coordinator(config, clock), Coordinator(config, clock)
    try:
        with TestClient(create_app(coordinator=first)) as a, TestClient(create_app(coordinator=second)) as b:
            yield first, second, a, b
    finally:
        first.store.close()
        second.store.close()


def _start(a: TestClient, b: TestClient, via: Callable[[int], TestClient], first: Coordinator) -> tuple[str, list]:
    """Five cars enrolled and a secure job submitted to ``a``, which drives it."""
    cars = [Car(i, b.post("/v1/vehicles/enroll", json={"enrollment_token": ENROLL, "name": f"car-{i}",
                                                        "hardware": "ai4"}).json(), via)
            for i in range(CARS)]
    r = a.post("/v1/train/jobs", json={"model": "mnist1d-cnn", "strategy": "fedavg", "rounds": 1,
                                       "data": {"dataset": "mnist1d", "num_vehicles": CARS, "num_samples": 300},
                                       "settings": SETTINGS}, headers=_bearer(TENANT))
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    assert first.training.runs.get(job_id) is not None  # a drives it
    return job_id, cars


def _lease_all(cars: list[Car], job_id: str) -> None:
    """Each car asks for work until the round is offered to them all."""
    for car in cars:
        car.grant = {}
    until = time.monotonic() + 60
    while not all(c.grant for c in cars) and time.monotonic() < until:
        for car in (c for c in cars if not c.grant):
            r = car.api().post("/v1/leases", json={"state": PARKED, "wait_s": 0}, headers=car.cred)
            assert r.status_code in (200, 204), r.text
            if r.status_code == 200:
                car.grant = r.json()
        time.sleep(0.05)  # the driver's thread offers the round on its next look
    assert all(c.grant.get("job_id") == job_id and c.grant.get("secagg") for c in cars), "round not offered"
    for car in cars:
        car.begin()


def _advertise(cars: list[Car]) -> None:
    for car in cars:
        r = car.post("advertise", KeyAdvertisementBody.of(car.me.advertise()).model_dump())
        assert r.status_code == 200, r.text


def _finish_round(cars: list[Car], liar: int | None) -> None:
    """The phases after advertising, car by car in lockstep."""
    for car in cars:
        bundle = car.me.share_keys(car.fetch("share").neighbour_keys(car.member))
        body = ShareBundleBody(shares=[EncryptedShareBody.of(s) for s in bundle.shares])
        assert car.post("share", body.model_dump()).status_code == 200
    for car in cars:
        car.me.receive_shares(car.fetch("masked").shares_for(car.member))
        payload = car.me.masked_input(car.q).payload
        digest = hashlib.sha256(payload).hexdigest()
        assert car.api().put(f"/v1/artifacts/{digest}", content=payload, headers=car.cred).status_code in (200, 201)
        report = {"update": digest, "round": car.grant["round"], "base_version": car.grant["base_version"],
                  "num_examples": 10, "steps_done": 2, "steps_planned": 2, "examples_seen": 32}
        r = car.post("masked", {"report": report})
        assert r.status_code == 200, r.text
        assert car.post("masked", {"report": report}).status_code == 409  # once per car and phase
    for car in cars:
        body = UnmaskBody.of(car.me.unmask(car.fetch("unmask").unmask_request(car.member)))
        if car.i == liar:
            body = UnmaskBody(mask_key_shares={c: _flip(y) for c, y in body.mask_key_shares.items()},
                              seed_shares={c: _flip(y) for c, y in body.seed_shares.items()})
        r = car.post("unmask", body.model_dump())
        if car.i == liar:
            assert r.status_code == 400 and r.json()["error"] == "dishonest_share", r.text
        else:
            assert r.status_code == 200, r.text


def _done(api: TestClient, job_id: str, cars: list[Car], coord: Coordinator) -> dict:
    until = time.monotonic() + 120
    while time.monotonic() < until:
        status = api.get(f"/v1/jobs/{job_id}", headers=_bearer(TENANT)).json()
        if status["state"] not in ("queued", "running"):
            for car in cars:
                car.implausible = coord.store.get_reputation(car.vehicle_id).implausible
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still running: {status}")


def _secure_round(postgres_url, tmp_path, route: str, liar: int | None) -> tuple[dict, list[Car]]:
    """Five cars through one secure round of a job the first replica drives, each request sent where ``route``
    says: ``other`` (always the replica not driving), ``alternate`` (the replicas in turn). Returns the finished
    job's status and the cars."""
    with _replicas(postgres_url, tmp_path) as (first, second, a, b):
        via = (lambda step: b) if route == "other" else (lambda step: (a, b)[step % 2])
        job_id, cars = _start(a, b, via, first)
        _lease_all(cars, job_id)
        _advertise(cars)
        _finish_round(cars, liar)
        return _done(b, job_id, cars, second), cars


def expected_norm(cars: list[Car]) -> float:
    """The norm of the mean update the exact sum of these cars' quantized updates decodes to, as the strategy takes
    it: on the grid (and rotation) the round gave them, which must be the one the job's settings give."""
    grid = cars[0].plan.quantization
    config = config_from_dict(FedAvgConfig, SETTINGS)
    assert grid == round_quantization(config, FlatLayout.of(build_model("mnist1d-cnn")).numel, None,
                                      rotation=grid.rotation)
    assert all(c.plan.quantization == grid for c in cars), "every car of a round gets the same grid"
    plain = np.sum(np.stack([c.q.astype(np.uint64) for c in cars]), axis=0)  # (P,) exact integer sum
    n = len(cars)
    return float((torch.from_numpy(decode_sum(plain, n, grid)).to(torch.float64) / n).to(torch.float32).norm())


def test_cars_talking_only_to_the_replica_not_driving_the_job_complete_a_secure_round(postgres_url, tmp_path):
    status, cars = _secure_round(postgres_url, tmp_path, "other", liar=None)
    assert status["state"] == "done", status
    row = status["training"]["history"][-1]
    assert (row["secagg_asked"], row["secagg_dropped"], row["secagg_dishonest"], row["cars"]) == (CARS, 0, 0, CARS)
    assert row["pseudo_grad_norm"] == expected_norm(cars)  # the exact sum: one unit off shows


def test_cars_alternating_between_replicas_complete_a_secure_round_and_a_liar_is_named(postgres_url, tmp_path):
    status, cars = _secure_round(postgres_url, tmp_path, "alternate", liar=2)
    assert status["state"] == "done", status
    row = status["training"]["history"][-1]
    assert (row["secagg_dishonest"], row["cars"]) == (1, CARS)
    assert row["pseudo_grad_norm"] == expected_norm(cars)
    assert [c.implausible for c in cars] == [0, 0, 1, 0, 0]  # the liar, and only it, lost reputation


def test_a_round_its_driver_left_open_is_abandoned_and_the_new_driver_runs_a_fresh_one(postgres_url, tmp_path,
                                                                                        monkeypatch):
    """The driving replica stops mid-round without closing it (as if killed: its rows and the cars' leases stay);
    the replica that takes the job over cancels those shares, its fresh round drops the old rows, and the cars
    complete the fresh round through it with the exact sum."""
    with _replicas(postgres_url, tmp_path) as (first, second, a, b):
        job_id, cars = _start(a, b, lambda step: b, first)
        _lease_all(cars, job_id)
        _advertise(cars)
        old = [(c.base, c.grant["secagg"]["round_id"]) for c in cars]
        monkeypatch.setattr(first.training.secure, "_close", lambda run, rnd: None)  # dies: nothing is closed
        monkeypatch.setattr(first.training, "close_round", lambda run: None)
        first.training.shutdown()
        assert second.store.secagg_phase(old[0][1]) == "sharing"  # left open, with its cars' messages
        assert second.training.take_over() == 1 and job_id in second.training.runs
        _lease_all(cars, job_id)  # the old shares were cancelled: every car is free for the fresh round
        assert {c.grant["secagg"]["round_id"] for c in cars} != {old[0][1]}
        assert second.store.secagg_phase(old[0][1]) is None  # the old round's rows are gone
        r = b.get(f"{old[0][0]}/share", headers=cars[0].cred)
        assert r.status_code == 409, r.text  # a car still on the old round is told it closed
        _advertise(cars)
        _finish_round(cars, liar=None)
        status = _done(b, job_id, cars, second)  # (a keeps its stopped run in memory, as a dead one would not)
    assert status["state"] == "done", status
    row = status["training"]["history"][-1]
    assert (row["secagg_asked"], row["secagg_dropped"], row["cars"]) == (CARS, 0, CARS)
    assert row["pseudo_grad_norm"] == expected_norm(cars)
