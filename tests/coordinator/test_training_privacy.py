"""A differentially private training job through a real coordinator process, with a car scripted over HTTP: the
grant tells the car its clip, the job's progress reports epsilon growing version by version, and the job ends done,
not failed, when another round would spend more than its budget. Privacy settings that do not compose are 400s."""

from __future__ import annotations

import time

import pytest

from fleetgrid.workloads.training.privacy import epsilon_spent
from harness import TENANT, start_coordinator

from .test_training_api import auth, enroll, global_params, lease, post_update, status, train, wait_version

DATA = {"dataset": "mnist1d", "num_vehicles": 2, "alpha": 1.0, "num_samples": 400}
PRIVACY = {"mode": "central", "clip": 0.5, "noise_multiplier": 1.0, "population": 8, "epsilon_budget": 2.9}
SETTINGS = {"local": {"steps": 3, "batch_size": 16}, "robust": {"norm_bound": "off"}, "privacy": PRIVACY,
            "rounds": {"clients_per_round": 1, "over_selection": 1.0, "deadline_s": 60}}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    import httpx

    proc = start_coordinator(tmp_path_factory.mktemp("coord"), lease_ttl_s=30.0)
    try:
        with httpx.Client(base_url=proc.url + "/v1", timeout=30) as http:
            yield http
    finally:
        proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


def submit(api, settings):
    return api.post("/train/jobs", json={"model": "mnist1d-cnn", "data": DATA, "strategy": "fedavg", "rounds": 10,
                                         "settings": settings}, headers=auth(TENANT))


def test_a_private_job_reports_epsilon_per_version_and_stops_done_on_its_budget(api):
    r = submit(api, SETTINGS)
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    car = enroll(api, "dp-car")
    # q = 1 car asked of 8: 2.35 after one version, 2.72 after two, 2.96 after three (over the 2.9 budget)
    expected = [epsilon_spent([1.0] * k, q=1 / 8, delta=1e-5) for k in (1, 2, 3)]
    assert expected[1] < 2.9 < expected[2]
    for version in (1, 2):
        grant = lease(api, car, job_id)
        assert grant["local"]["update_clip"] == 0.5 and grant["local"]["update_noise_std"] == 0.0
        report, payload = train(grant, global_params(api, car, grant), "dp-car")
        ok = post_update(api, car, grant["lease_id"], report, payload)
        assert ok.status_code == 200, ok.text
        s = wait_version(api, job_id, version)
        privacy = s["training"]["privacy"]
        assert privacy["epsilon"] == pytest.approx(expected[version - 1], rel=1e-6)
        assert s["training"]["history"][-1]["epsilon"] == pytest.approx(expected[version - 1], rel=1e-6)
        assert privacy["mode"] == "central" and privacy["clip"] == 0.5 and privacy["noise_multiplier"] == 1.0
    until = time.monotonic() + 60
    while (s := status(api, job_id))["state"] != "done":
        assert s["state"] == "running" and time.monotonic() < until, s
        time.sleep(0.1)
    privacy = s["training"]["privacy"]
    assert privacy["stopped_on_budget"] and privacy["epsilon"] == pytest.approx(expected[1], rel=1e-6)
    assert privacy["epsilon_budget"] == 2.9 and s["units_done"] == 2 and s["training"]["version"] == 2


@pytest.mark.parametrize(("settings", "needle"), [
    ({"privacy": PRIVACY}, "norm_bound 'adaptive' cannot run with differential privacy"),
    ({**SETTINGS, "robust": {"aggregator": "median", "norm_bound": "off"}},
     "aggregator 'median' cannot run with differential privacy"),
    ({**SETTINGS, "privacy": {"mode": "central", "clip": 0.5}}, "needs exactly one of noise_multiplier"),
    ({"secure_aggregation": True}, "cannot see the individual norms"),
    ({"robust": {"aggregator": "krum", "byzantine": 1}}, "needs n >= 2f + 3 = 5 updates every round"),
    ({"secure_aggregation": True, "robust": {"norm_bound": "off"}}, "norm_bound='fixed' with max_norm"),
    ({"secure_aggregation": True, "robust": {"norm_bound": "fixed", "max_norm": 1.0},
      "rounds": {"clients_per_round": 2, "min_reports": 2}}, "secure aggregation needs clients_per_round >= 3"),
])
def test_privacy_and_robust_settings_that_do_not_compose_are_400s(api, settings, needle):
    r = submit(api, settings)
    assert r.status_code == 400, r.text
    assert needle in r.json()["message"], r.json()
