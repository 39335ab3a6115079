"""Secure aggregation through a real coordinator process, with cars scripted over raw HTTP running the protocol's
car side: the round's exact sum with a car lost after masking, and every way a car can speak out of turn (4xx)."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import httpx
import numpy as np
import pytest
import torch

from fleetgrid.protocol import SecAggPlan
from fleetgrid.secagg_wire import (
    KeyAdvertisementBody,
    SecAggDownlink,
    ShareBundleBody,
    UnmaskBody,
    plan_from_wire,
)
from fleetgrid.workloads.training.secagg import Quantization, SecAggCar, decode_sum, quantize
from harness import ENROLL, OPERATOR, TENANT, start_coordinator

PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}
DATA = {"dataset": "mnist1d", "num_vehicles": 5, "alpha": 1.0, "num_samples": 600}
CARS = 5


@pytest.fixture
def server(tmp_path):
    """A coordinator per test: a round's cohort is drawn from every car that asked for work lately."""
    proc = start_coordinator(tmp_path, lease_ttl_s=30.0)
    yield proc
    proc.stop()
    log = proc.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000:][:6000]


def client(server) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/v1", timeout=30)


def auth(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


def enroll(api, name: str) -> str:
    r = api.post("/vehicles/enroll", json={"enrollment_token": ENROLL, "name": name, "hardware": "ai4"})
    assert r.status_code == 201, r.text
    return r.json()["credential"]


def submit(api, rounds: int = 1, max_retries: int = 0, **settings) -> str:
    body = {"model": "mnist1d-cnn", "data": DATA, "strategy": "fedavg", "rounds": rounds,
            "settings": {"local": {"steps": 2, "batch_size": 16}, "secure_aggregation": True,
                         "robust": {"norm_bound": "fixed", "max_norm": 1.0},
                         "rounds": {"clients_per_round": CARS, "over_selection": 1.0, "min_reports": 3,
                                    "deadline_s": 60, "secagg_phase_s": 3.0, "max_retries": max_retries}, **settings}}
    r = api.post("/train/jobs", json=body, headers=auth(TENANT))
    assert r.status_code in (200, 201), r.text
    return r.json()["job_id"]


def lease(api, cred: str, job_id: str) -> dict:
    """Long-poll for a share of ``job_id``: the round is offered once every car of the cohort is asking."""
    for _ in range(30):
        r = api.post("/leases", json={"state": PARKED, "wait_s": 5.0}, headers=auth(cred))
        assert r.status_code in (200, 204), r.text
        if r.status_code == 200 and r.json().get("job_id") == job_id:
            return r.json()
        if r.status_code == 200:
            api.post(f"/leases/{r.json()['lease_id']}/fail", json={"reason": "not this test", "handback": True},
                     headers=auth(cred))
    raise AssertionError(f"no share of {job_id}")


def fetch(api, cred: str, lease_id: str, phase: str, *, closed_ok: bool = False) -> SecAggDownlink | None:
    """Poll the car's part of ``phase`` until the coordinator reached it (it answers at once either way); None if
    the round closed without this car and ``closed_ok``."""
    import time

    while True:
        r = api.get(f"/train/leases/{lease_id}/secagg/{phase}", headers=auth(cred))
        if closed_ok and r.status_code == 409:
            return None
        assert r.status_code == 200, r.text
        down = SecAggDownlink.model_validate(r.json())
        if down.ready:
            return down
        time.sleep(down.retry_after_s)  # the protocol's pacing, as a car follows it: no assertion rides on it


def _ready(down: SecAggDownlink | None) -> SecAggDownlink:
    assert down is not None
    return down


def fake_update(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.01, n).astype(np.float32)


class Sent(NamedTuple):
    quantized: np.ndarray
    """What the sum must contain."""
    grid: Quantization
    """The round's grid, its random rotation included, as the car got it."""


def run_car(server, cred: str, job_id: str, seed: int, *, stop_after_masking: bool = False,
            stop_after_sharing: bool = False, lie: bool = False, unclipped: bool = False) -> Sent | None:
    """A car's whole secure round over HTTP; returns its quantized update and grid, None if the round closed
    without it. ``lie``: flip a bit of every share it reveals; ``unclipped``: send the largest update
    the grid holds."""
    with client(server) as api:
        grant = lease(api, cred, job_id)
        lease_id, wire = grant["lease_id"], SecAggPlan.model_validate(grant["secagg"])
        plan = plan_from_wire(wire)
        me = SecAggCar(wire.member, plan)
        q = quantize(fake_update(plan.vector_length, seed), plan.quantization, np.random.default_rng(seed))
        if unclipped:  # every coordinate at the top of the grid: a norm far past the clip
            q = np.full_like(q, plan.quantization.levels)
        base = f"/train/leases/{lease_id}/secagg"
        r = api.post(f"{base}/advertise", json=KeyAdvertisementBody.of(me.advertise()).model_dump(),
                     headers=auth(cred))
        assert r.status_code == 200, r.text
        bundle = me.share_keys(_ready(fetch(api, cred, lease_id, "share")).neighbour_keys(wire.member))
        body = ShareBundleBody(shares=[_share(s) for s in bundle.shares])
        assert api.post(f"{base}/share", json=body.model_dump(), headers=auth(cred)).status_code == 200
        if stop_after_sharing:
            return None
        me.receive_shares(_ready(fetch(api, cred, lease_id, "masked")).shares_for(wire.member))
        payload = me.masked_input(q).payload
        digest = hashlib.sha256(payload).hexdigest()
        assert api.put(f"/artifacts/{digest}", content=payload, headers=auth(cred)).status_code in (200, 201)
        report = {"update": digest, "round": grant["round"], "base_version": grant["base_version"],
                  "num_examples": 10, "steps_done": 2, "steps_planned": 2, "examples_seen": 32}
        r = api.post(f"{base}/masked", json={"report": report}, headers=auth(cred))
        assert r.status_code == 200, r.text
        if stop_after_masking:
            return Sent(q, plan.quantization)
        asked = fetch(api, cred, lease_id, "unmask", closed_ok=True)
        if asked is None:  # the round was abandoned: too many others dropped
            return None
        answer = me.unmask(asked.unmask_request(wire.member))
        body = UnmaskBody.of(answer)
        if lie:
            body = UnmaskBody(mask_key_shares={c: _flip(y) for c, y in body.mask_key_shares.items()},
                              seed_shares={c: _flip(y) for c, y in body.seed_shares.items()})
        r = api.post(f"{base}/unmask", json=body.model_dump(), headers=auth(cred))
        if lie:
            assert r.status_code == 400 and r.json()["error"] == "dishonest_share", r.text
        else:
            assert r.status_code == 200, r.text
        return Sent(q, plan.quantization)


def _flip(share: str) -> str:
    import base64

    raw = bytearray(base64.b64decode(share))
    raw[-1] ^= 1
    return base64.b64encode(bytes(raw)).decode()


def _share(s):
    from fleetgrid.secagg_wire import EncryptedShareBody

    return EncryptedShareBody.of(s)


def job(api, job_id: str) -> dict:
    r = api.get(f"/jobs/{job_id}", headers=auth(TENANT))
    assert r.status_code == 200, r.text
    return r.json()


def wait_done(api, job_id: str) -> dict:
    import time

    for _ in range(1200):
        status = job(api, job_id)
        if status["state"] not in ("queued", "running"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still running: {status}")


def test_a_secure_round_sums_exactly_with_a_car_lost_after_masking(server):
    with client(server) as api:
        quantized, status = start_round(server, api, submit, stop_after_masking={0})
    assert status["state"] == "done", status
    training = status["training"]
    assert training["secure_aggregation"] is True
    row = training["history"][-1]
    assert (row["secagg_asked"], row["secagg_dropped"], row["cars"]) == (CARS, 1, CARS)
    assert row["pseudo_grad_norm"] == expected_norm(quantized)  # the exact sum: one unit off anywhere shows


def start_round(server, api, job_id_of, **modes) -> tuple[list, dict]:
    """Five cars through one secure round (car ``i`` in the modes' lists behaves so); returns what each car returned
    and the finished job's status."""
    creds = [enroll(api, f"car-{i}") for i in range(CARS)]
    job_id = job_id_of(api)
    with ThreadPoolExecutor(CARS) as pool:
        futures = [pool.submit(run_car, server, cred, job_id, i, **{m: i in who for m, who in modes.items()})
                   for i, cred in enumerate(creds)]
        returned = [f.result() for f in futures]
    return returned, wait_done(api, job_id)


def expected_norm(sent: list[Sent]) -> float:
    """The norm of the mean update the exact sum of these quantized updates decodes to, as the strategy takes it."""
    grid = plan_grid(sent[0].grid.rotation)
    assert all(s.grid == grid for s in sent), "every car of a round gets the grid the job's settings give"
    plain = np.sum(np.stack([s.quantized.astype(np.uint64) for s in sent]), axis=0)  # (P,) exact integer sum
    n = len(sent)
    return float((torch.from_numpy(decode_sum(plain, n, grid)).to(torch.float64) / n).to(torch.float32).norm())


@pytest.mark.parametrize(("mode", "cars"), [("stop_after_sharing", {0, 1}), ("unclipped", {3})])
def test_a_void_round_makes_no_model_step_and_the_job_goes_on(server, mode, cars):
    """Two of five cars lost after dealing shares is more than max_dropout 0.3 allows, and a car that does not clip
    makes the sum longer than the clips allow: either way that attempt makes no model step; the next attempt,
    with every car honest and present, does."""
    with client(server) as api:
        first: list = []
        creds = [enroll(api, f"void-{i}") for i in range(CARS)]
        job_id = submit(api, max_retries=1)
        for attempt, who in enumerate([cars, set()]):
            with ThreadPoolExecutor(CARS) as pool:
                futures = [pool.submit(run_car, server, cred, job_id, 10 * attempt + i, **{mode: i in who})
                           for i, cred in enumerate(creds)]
                returned = [f.result() for f in futures]
            if attempt == 0:
                first = returned
        status = wait_done(api, job_id)
    if mode == "stop_after_sharing":
        assert first == [None] * CARS, "the round was abandoned before unmasking"
    assert status["state"] == "done", status
    history = status["training"]["history"]
    assert [h["version"] for h in history] == [0, 1] and history[1]["attempts"] == 2, history
    assert history[1]["pseudo_grad_norm"] == expected_norm(returned)


def test_a_car_lying_in_unmasking_is_named_and_the_sum_stays_exact(server):
    with client(server) as api:
        quantized, status = start_round(server, api, submit, lie={2})
        names = {v["name"]: v["vehicle_id"] for v in api.get("/vehicles", headers=auth(OPERATOR)).json()}
        liar, honest = (api.get(f"/vehicles/{names[n]}/reputation", headers=auth(OPERATOR)).json()
                        for n in ("car-2", "car-1"))
    assert status["state"] == "done", status
    row = status["training"]["history"][-1]
    assert row["secagg_dishonest"] == 1 and row["cars"] == CARS
    assert row["pseudo_grad_norm"] == expected_norm(quantized)
    assert (liar["implausible"], honest["implausible"]) == (1, 0), (liar, honest)


def plan_grid(rotation: bytes | None) -> Quantization:
    """The round's grid, as the coordinator derives it from the job's settings (the rotation is the round's)."""
    from fleetgrid.workloads.training import FedAvgConfig, FlatLayout, build_model, config_from_dict
    from fleetgrid.workloads.training.secure import round_quantization

    config = config_from_dict(FedAvgConfig, {"secure_aggregation": True,
                                             "robust": {"norm_bound": "fixed", "max_norm": 1.0},
                                             "rounds": {"clients_per_round": CARS, "over_selection": 1.0,
                                                        "min_reports": 3}})
    return round_quantization(config, FlatLayout.of(build_model("mnist1d-cnn")).numel, None, rotation=rotation)


def test_cars_speaking_out_of_turn_or_for_another_lease_get_4xx(server):
    with client(server) as api:
        creds = [enroll(api, f"turn-{i}") for i in range(CARS)]
        job_id = submit(api)
        with ThreadPoolExecutor(CARS) as pool:
            grants = list(pool.map(lambda c: lease(client(server), c, job_id), creds))
        (mine, theirs), cred = grants[:2], creds[0]
        plan = plan_from_wire(SecAggPlan.model_validate(mine["secagg"]))
        adv = KeyAdvertisementBody.of(SecAggCar(mine["secagg"]["member"], plan).advertise()).model_dump()
        base = f"/train/leases/{mine['lease_id']}/secagg"
        r = api.post(f"/train/leases/{theirs['lease_id']}/secagg/advertise", json=adv, headers=auth(cred))
        assert r.status_code == 403, r.text  # another car's lease
        r = api.post(f"{base}/share", json={"shares": []}, headers=auth(cred))
        assert r.status_code == 409 and "advertising" in r.json()["message"], r.text  # out of phase
        r = api.post(f"{base}/advertise", json={**adv, "mask_pk": "not base64!" + "=" * 33}, headers=auth(cred))
        assert r.status_code == 400, r.text
        assert api.post(f"{base}/advertise", json=adv, headers=auth(cred)).status_code == 200
        r = api.post(f"{base}/advertise", json=adv, headers=auth(cred))
        assert r.status_code == 409 and "already advertised" in r.json()["message"], r.text
        down = api.get(f"{base}/unmask", headers=auth(cred))
        assert down.status_code == 200 and down.json()["ready"] is False
        assert api.get(f"{base}/sideways", headers=auth(cred)).status_code == 422
        r = api.post(f"/train/leases/{mine['lease_id']}/update", json={
            "update": "0" * 64, "round": mine["round"], "base_version": 0, "num_examples": 1, "steps_done": 1,
            "steps_planned": 2, "examples_seen": 1}, headers=auth(cred))
        assert r.status_code in (400, 404, 409), r.text
        assert api.post(f"/jobs/{job_id}/cancel", headers=auth(TENANT)).status_code == 200
