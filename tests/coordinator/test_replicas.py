"""Two coordinators on one PostgreSQL database (replicas behind a load balancer) agree on credentials."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from starlette.testclient import TestClient

from fleetgrid.clock import ManualClock
from fleetgrid.coordinator.app import Coordinator, create_app
from fleetgrid.coordinator.config import CoordinatorConfig

pytestmark = pytest.mark.postgres

ENROLL, OPERATOR, TENANT = "fge_replica-enroll", "fgo_replica-operator", "fgt_replica-tenant"
PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _submit(api: TestClient, items: int, unit_items: int) -> None:
    buf = io.BytesIO()
    np.save(buf, np.zeros((items, 40), np.float32), allow_pickle=False)
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    assert api.put(f"/v1/artifacts/{digest}", content=buf.getvalue(), headers=_bearer(TENANT)).status_code == 201
    r = api.post("/v1/jobs", json={"model": "mnist1d-cnn", "inputs": digest, "input_format": "npy",
                                   "unit_items": unit_items}, headers=_bearer(TENANT))
    assert r.status_code == 201, r.text


def test_a_car_revoked_through_one_coordinator_is_refused_by_the_other(postgres_url, tmp_path):
    clock = ManualClock(1_000_000.0)
    # One data directory: replicas share the artifact store as they share the database.
    config = CoordinatorConfig(data_dir=tmp_path, database_url=postgres_url, enroll_token=ENROLL,
                               operator_token=OPERATOR, tenant_tokens={"acme": TENANT}, auth_cache_ttl_s=5.0)
    first, second = Coordinator(config, clock), Coordinator(config, clock)
    try:
        with TestClient(create_app(coordinator=first)) as a, TestClient(create_app(coordinator=second)) as b:
            r = a.post("/v1/vehicles/enroll", json={"enrollment_token": ENROLL, "name": "car", "hardware": "ai4"})
            vehicle_id, car = r.json()["vehicle_id"], _bearer(r.json()["credential"])
            _submit(a, items=30, unit_items=10)
            assert b.post("/v1/leases", json={"state": PARKED}, headers=car).status_code == 200  # b caches the car

            assert a.post(f"/v1/vehicles/{vehicle_id}/revoke", headers=_bearer(OPERATOR)).status_code == 200
            refused = b.post("/v1/leases", json={"state": PARKED}, headers=car)
            assert refused.status_code == 401, refused.text  # at once, though b still trusts its cached record
            assert "revoked" in refused.json()["message"]
            assert second.store.count_units(second.store.list_jobs()[0].job_id, "leased") == 0

            clock.advance(config.auth_cache_ttl_s)
            heartbeat = b.post("/v1/vehicles/heartbeat", json=PARKED, headers=car)
            assert heartbeat.status_code == 401, heartbeat.text  # b's cache entry expired: it asked the database
            assert "revoked" in heartbeat.json()["message"]
    finally:
        first.store.close()
        second.store.close()
