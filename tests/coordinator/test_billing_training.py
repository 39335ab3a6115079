"""A refused training update earns nothing, and its car's owner is told why; the corrected report on the same lease
is then paid as usual. Against a real coordinator process, with a car that really trains."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from fleetgrid.workloads.training import CompressionConfig, encode
from harness import OPERATOR, TENANT, start_coordinator

from .test_training_api import auth, enroll, global_params, lease, post_update, submit, train

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def api(tmp_path):
    proc = start_coordinator(tmp_path / "coord", lease_ttl_s=30.0)
    try:
        with httpx.Client(base_url=proc.url + "/v1", timeout=30) as http:
            yield http
    finally:
        proc.stop()


def test_a_refused_update_is_unpaid_and_the_statement_says_so(api):
    prices = {"currency": "USD", "operator_fee": "0.1", "prices": {"train": {"per_step": "0.001"}}}
    assert api.put("/prices", json=prices, headers=auth(OPERATOR)).status_code == 200
    # A round that stays open long after the refusal, however loaded the machine (the refused car reports again).
    settings = {"local": {"steps": 4, "batch_size": 16},
                "rounds": {"clients_per_round": 1, "over_selection": 1.0, "deadline_s": 600}}
    job_id = submit(api, settings=settings).json()["job_id"]
    cred = enroll(api, "trainer")
    vid = cred.split(".")[1]
    owner = api.post("/owners", json={"name": "dora"}, headers=auth(OPERATOR)).json()["token"]
    assert api.post("/owners/dora/cars", json={"vehicle_id": vid}, headers=auth(OPERATOR)).status_code == 200
    grant = lease(api, cred, job_id)
    params = global_params(api, cred, grant)
    report, payload = train(grant, params)
    month = time.strftime("%Y-%m", time.gmtime())

    wrong_shape = encode(np.zeros(params.numel() - 1, dtype=np.float32), CompressionConfig())
    refused = post_update(api, cred, grant["lease_id"], report, wrong_shape)
    assert refused.status_code == 400 and "shape" in refused.json()["message"], refused.text
    st = api.get(f"/owner/statement?month={month}", headers=auth(owner)).json()
    assert st["work"] == [] and st["gross_micro"] == 0
    (unpaid,) = st["unpaid"]
    assert unpaid["reason"].startswith("rejected: training update refused:") and "shape" in unpaid["reason"]
    assert (unpaid["leases"], unpaid["examples"]) == (1, report["examples_seen"])
    assert api.get(f"/bill?month={month}", headers=auth(TENANT)).json()["total_micro"] == 0

    ok = post_update(api, cred, grant["lease_id"], report, payload)  # the corrected report on the same lease
    assert ok.status_code == 200, ok.text
    st = api.get(f"/owner/statement?month={month}", headers=auth(owner)).json()
    assert st["unpaid"] == [] and [(w["workload"], w["steps"]) for w in st["work"]] == [("train",
                                                                                         report["steps_done"])]
    assert st["gross_micro"] == report["steps_done"] * 900  # 0.001 per step, less the 10% fee
    api.post(f"/jobs/{job_id}/cancel", headers=auth(TENANT))
