"""A training update's report cross-checked like any other: against a real coordinator process, a car that really
trains and then reports ten times the bytes its share could have moved is paid for what it could have moved, and its
reputation is lowered."""

from __future__ import annotations

import pytest

from harness import OPERATOR

from .test_billing_training import api  # noqa: F401  (the fixture: a real coordinator process, its /v1 client)
from .test_training_api import auth, enroll, global_params, lease, post_update, submit, train

pytestmark = pytest.mark.timeout(240)


def test_an_update_reporting_ten_times_the_bytes_is_clamped_and_lowers_the_reputation(api):  # noqa: F811
    settings = {"local": {"steps": 2, "batch_size": 16},
                "rounds": {"clients_per_round": 1, "over_selection": 1.0, "deadline_s": 600}}
    job_id = submit(api, settings=settings).json()["job_id"]
    cred = enroll(api, "chatty")
    vid = cred.split(".")[1]
    grant = lease(api, cred, job_id)
    params = global_params(api, cred, grant)
    report, payload = train(grant, params)
    served = grant["snapshot"]["size"] + (grant.get("compact") or {}).get("size", 0)  # what the car may fetch
    could = 4 * (served + len(payload) + 4096) + (1 << 20)  # BYTES_ALLOWANCE, record included
    ok = post_update(api, cred, grant["lease_id"], {**report, "wifi_bytes": 10 * could}, payload)
    assert ok.status_code == 200, ok.text
    rep = api.get(f"/vehicles/{vid}/reputation", headers=auth(OPERATOR)).json()
    assert rep["implausible"] == 1
    (row,) = [r for r in api.get("/ledger", headers=auth(OPERATOR)).json() if r["vehicle_id"] == vid]
    assert 0 < row["wifi_bytes"] <= could and row["steps"] == report["steps_done"]
