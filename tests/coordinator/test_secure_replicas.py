"""Two coordinators on one PostgreSQL database: a secure round's messages are held by the replica driving the job,
so the other one refuses a car's message with a 409 naming the driver, never a 500 and never a half-written round."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

from fleetgrid.clock import ManualClock
from fleetgrid.coordinator.app import Coordinator, create_app
from fleetgrid.coordinator.config import CoordinatorConfig
from fleetgrid.protocol import SecAggPlan
from fleetgrid.secagg_wire import KeyAdvertisementBody, plan_from_wire
from fleetgrid.workloads.training.secagg import SecAggCar

pytestmark = pytest.mark.postgres

ENROLL, OPERATOR, TENANT = "fge_sa-enroll", "fgo_sa-operator", "fgt_sa-tenant"
PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}
SETTINGS = {"local": {"steps": 2, "batch_size": 16}, "secure_aggregation": True,
            "robust": {"norm_bound": "fixed", "max_norm": 1.0},
            "rounds": {"clients_per_round": 3, "over_selection": 1.0, "min_reports": 3, "deadline_s": 600}}


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_a_secure_rounds_messages_are_refused_by_the_replica_not_driving_it(postgres_url, tmp_path):
    clock = ManualClock(1_000_000.0)
    config = CoordinatorConfig(data_dir=tmp_path, database_url=postgres_url, enroll_token=ENROLL,
                               operator_token=OPERATOR, tenant_tokens={"acme": TENANT})
    first, second = Coordinator(config, clock), Coordinator(config, clock)
    try:
        with TestClient(create_app(coordinator=first)) as a, TestClient(create_app(coordinator=second)) as b:
            cars = [_bearer(a.post("/v1/vehicles/enroll", json={"enrollment_token": ENROLL, "name": f"car-{i}",
                                                                   "hardware": "ai4"}).json()["credential"])
                    for i in range(3)]
            r = a.post("/v1/train/jobs", json={"model": "mnist1d-cnn", "strategy": "fedavg", "rounds": 1,
                                               "data": {"dataset": "mnist1d", "num_vehicles": 3, "num_samples": 300},
                                               "settings": SETTINGS}, headers=_bearer(TENANT))
            assert r.status_code == 201, r.text
            job_id = r.json()["job_id"]
            assert first.training.runs.get(job_id) is not None  # a drives it
            grants: dict[int, dict] = {}
            until = time.monotonic() + 60
            while len(grants) < 3 and time.monotonic() < until:  # the cars ask a until the round is offered
                for i, car in enumerate(cars):
                    if i not in grants:
                        r = a.post("/v1/leases", json={"state": PARKED, "wait_s": 0}, headers=car)
                        assert r.status_code in (200, 204), r.text
                        if r.status_code == 200:
                            grants[i] = r.json()
                time.sleep(0.05)  # the driver's thread offers the round on its next look; no assertion on time
            assert len(grants) == 3 and all(g["job_id"] == job_id and g["secagg"] for g in grants.values())
            grant = grants[0]
            plan = plan_from_wire(SecAggPlan.model_validate(grant["secagg"]))
            adv = KeyAdvertisementBody.of(SecAggCar(grant["secagg"]["member"], plan).advertise()).model_dump()
            path = f"/v1/train/leases/{grant['lease_id']}/secagg"
            refused = b.post(f"{path}/advertise", json=adv, headers=cars[0])
            assert refused.status_code == 409, refused.text
            assert first.training.replica in refused.json()["message"], refused.json()
            assert b.get(f"{path}/share", headers=cars[0]).status_code == 409
            assert a.post(f"{path}/advertise", json=adv, headers=cars[0]).status_code == 200  # the driver takes it
            assert a.post(f"/v1/jobs/{job_id}/cancel", headers=_bearer(TENANT)).status_code == 200
    finally:
        first.store.close()
        second.store.close()
