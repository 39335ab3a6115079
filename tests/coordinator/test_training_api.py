"""Training jobs through a real coordinator process, with cars scripted over raw HTTP: the round mechanics, the
wire formats, and every way a tenant or a car can get it wrong (4xx, and the global never touched).

A car fetches the global's artifacts the grant names and uploads its update as an artifact before reporting it."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load

from fleetgrid.workloads.training import (
    CompressionConfig,
    DataSpec,
    ErrorFeedback,
    FlatLayout,
    LocalTrainingConfig,
    ModelDownload,
    TrainInstructions,
    apply_download,
    build_eval_set,
    build_local_dataset,
    build_model,
    encode,
    heldout_prior,
    train_locally,
)
from harness import ENROLL, OPERATOR, TENANT, start_coordinator

torch.set_num_threads(1)

PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}
DATA = {"dataset": "mnist1d", "num_vehicles": 4, "alpha": 1.0, "num_samples": 600}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = start_coordinator(tmp_path_factory.mktemp("coord"), lease_ttl_s=30.0)
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


@pytest.fixture
def api(server):
    import httpx

    with httpx.Client(base_url=server.url + "/v1", timeout=30) as http:
        yield http


def auth(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


def submit(api, **overrides) -> dict:
    body = {"model": "mnist1d-cnn", "data": DATA, "strategy": "fedavg", "rounds": 2,
            "settings": {"local": {"steps": 4, "batch_size": 16},
                         "rounds": {"clients_per_round": 1, "over_selection": 1.0, "deadline_s": 60}}}
    body.update(overrides)
    return api.post("/train/jobs", json=body, headers=auth(TENANT))


def enroll(api, name: str) -> str:
    r = api.post("/vehicles/enroll", json={"enrollment_token": ENROLL, "name": name, "hardware": "ai4"})
    assert r.status_code == 201, r.text
    return r.json()["credential"]


def lease(api, cred: str, job_id: str, wait_s: float = 10.0) -> dict:
    """Ask until this job's share of a round arrives (other tests' jobs may hand out other work)."""
    until = time.monotonic() + 30
    while time.monotonic() < until:
        r = api.post("/leases", json={"state": PARKED, "wait_s": wait_s}, headers=auth(cred))
        assert r.status_code in (200, 204), r.text
        if r.status_code == 200 and r.json()["kind"] == "train" and r.json()["job_id"] == job_id:
            return r.json()
        if r.status_code == 200:  # someone else's work: give it back
            api.post(f"/leases/{r.json()['lease_id']}/fail", json={"reason": "not this test", "handback": True},
                     headers=auth(cred))
    raise AssertionError(f"no training lease of {job_id} within 30 s")


def status(api, job_id: str) -> dict:
    r = api.get(f"/jobs/{job_id}", headers=auth(TENANT))
    assert r.status_code == 200, r.text
    return r.json()


def wait_version(api, job_id: str, version: int, timeout_s: float = 120.0) -> dict:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        s = status(api, job_id)
        if s["units_done"] >= version:  # checkpointed: durable
            return s
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach version {version}: {s}")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(api, cred: str, digest: str, **headers) -> bytes:
    r = api.get(f"/artifacts/{digest}", headers=auth(cred) | headers)
    assert r.status_code in (200, 206), r.text
    return r.content


def global_params(api, cred: str, grant: dict) -> torch.Tensor:
    """The grant's base version, from its snapshot artifact (checked against the grant's digest)."""
    full = fetch(api, cred, grant["snapshot"]["digest"])
    assert len(full) == grant["snapshot"]["size"]
    return apply_download(None, ModelDownload(from_version=None, version=grant["base_version"],
                                              digest=grant["model_digest"], full=full))


def stored(server, digest: str) -> bool:
    """Whether the coordinator's artifact directory holds ``digest``."""
    return (Path(server.data_dir) / "artifacts" / digest[:2] / digest).is_file()


def train(grant: dict, params: torch.Tensor, cred_name: str = "car") -> tuple[dict, bytes]:
    """What a car does: build its own shard, train, compress the delta; returns (UpdateReport, payload)."""
    local = LocalTrainingConfig(**{k: v for k, v in grant["local"].items() if k != "compression"},
                                compression=CompressionConfig(**grant["local"]["compression"]))
    ins = TrainInstructions(round=grant["round"], base_version=grant["base_version"],
                            model_digest=grant["model_digest"], local=local, seed=grant["seed"])
    dataset = build_local_dataset(DataSpec(**grant["data"]), grant["shard"])
    result = train_locally(build_model(grant["model"]), params, dataset, ins, client_id=cred_name,
                           error_feedback=ErrorFeedback(params.numel()))
    u = result.update
    report = {"round": u.round, "base_version": u.base_version, "num_examples": u.num_examples,
              "steps_done": u.steps_done, "steps_planned": u.steps_planned, "examples_seen": u.examples_seen,
              "train_loss": u.train_loss}
    return report, u.payload


def upload(api, cred: str, data: bytes) -> str:
    r = api.put(f"/artifacts/{sha(data)}", content=data, headers=auth(cred))
    assert r.status_code in (200, 201), r.text
    return sha(data)


def report_update(api, cred: str, lease_id: str, report: dict, digest: str):
    return api.post(f"/train/leases/{lease_id}/update", json={**report, "update": digest}, headers=auth(cred))


def post_update(api, cred: str, lease_id: str, report: dict, payload: bytes):
    """What a car does with its update: upload it as an artifact, then report it by digest."""
    return report_update(api, cred, lease_id, report, upload(api, cred, payload))


# --- submission ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "needle"), [
    ({"strategy": "fedsgd"}, "unknown strategy 'fedsgd'"),
    ({"model": "resnet50"}, "unknown training model 'resnet50'"),
    ({"settings": {"local": {"steps": 0}}}, "local steps H must be an integer >= 1"),
    ({"data": {**DATA, "alpha": 0}}, "Dirichlet alpha must be > 0"),
    ({"data": {**DATA, "alpha": -1.5}}, "Dirichlet alpha must be > 0"),
    ({"settings": {"local": {"compression": {"bits": 3}}}}, "bits"),
    ({"settings": {"downlink": {"bits": 3}}}, "bits"),
    ({"data": {"dataset": "imagenet"}}, "unknown dataset 'imagenet'"),
    ({"data": {**DATA, "shards": 4}}, "unknown data setting(s) ['shards']"),
    ({"data": {"dataset": "stdlib_text", "max_files": 1}}, "lower num_vehicles or allow more files"),
    ({"model": "charlm", "data": DATA}, "CharLM takes int64 ids"),
    ({"settings": {"rounds": {"min_reports": 5, "clients_per_round": 2}}}, "min_reports"),
    ({"target_metric": {"f1": 0.9}}, "unknown target metric"),
    ({"settings": {"local": {"optimizer": "lbfgs"}}}, "local optimizer must be one of"),
    ({"settings": {"local": {"max_passes": 0}}}, "max_passes must be a finite number > 0"),
    ({"strategy": "diloco", "settings": {"drift_correction": 1.0}}, "runs only in the in-process harness"),
])
def test_impossible_training_jobs_are_refused_with_400(api, overrides, needle):
    r = submit(api, **overrides)
    assert r.status_code == 400, r.text
    assert needle in r.json()["message"], r.json()


def test_bad_submission_fields_are_422_naming_the_field(api):
    r = submit(api, rounds=0)
    assert r.status_code == 422 and "rounds" in r.json()["message"]
    r = submit(api, epochs=3)
    assert r.status_code == 422 and "epochs" in r.json()["message"]


def test_the_openapi_schema_describes_the_training_protocol(server):
    """Training has no byte route of its own: the report is JSON naming an artifact, and the grant names the
    artifacts of the global version."""
    import httpx

    doc = httpx.get(server.url + "/openapi.json", timeout=30).json()
    paths, schemas = doc["paths"], doc["components"]["schemas"]
    assert not [p for p in paths if p.startswith("/v1/train/") and p.endswith("/model")]
    body = paths["/v1/train/leases/{lease_id}/update"]["post"]["requestBody"]["content"]
    assert list(body) == ["application/json"] and body["application/json"]["schema"]["$ref"].endswith("/UpdateReport")
    assert "update" in schemas["UpdateReport"]["required"]
    assert {"snapshot", "deltas", "model_digest"} <= set(schemas["TrainGrant"]["properties"])
    assert {"version", "digest", "size"} <= set(schemas["ModelDelta"]["properties"])
    assert "/v1/artifacts/{digest}" in paths


# --- one job, end to end, with scripted cars -------------------------------------------------------------------

def test_rounds_updates_checkpoints_and_the_final_model(api, server):
    # A seed of its own: version 0's bytes are this job's alone, so their release shows on disk.
    r = submit(api, rounds=2, init_seed=101,
               settings={"local": {"steps": 4, "batch_size": 16}, "downlink": {"bits": 8},
                         "rounds": {"clients_per_round": 1, "over_selection": 2.0, "deadline_s": 60}})
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    assert r.json()["kind"] == "train" and r.json()["training"]["target_versions"] == 2
    cars = [enroll(api, f"car{i}") for i in range(2)]

    # Round 1: over-selection offers both cars a share; the first report closes the round.
    grants = [lease(api, c, job_id) for c in cars]
    assert {g["round"] for g in grants} == {1} and all(g["base_version"] == 0 for g in grants)
    assert grants[0]["snapshot"] == grants[1]["snapshot"] and grants[0]["deltas"] == []  # version 0: no delta yet
    params0 = global_params(api, cars[0], grants[0])
    report, payload = train(grants[0], params0)
    update0 = upload(api, cars[0], payload)
    ok = report_update(api, cars[0], grants[0]["lease_id"], report, update0)
    assert ok.status_code == 200 and ok.json()["state"] == "completed", ok.text
    s = wait_version(api, job_id, 1)
    assert s["training"]["history"][-1]["used"] == 1 and 0 <= s["training"]["history"][-1]["accuracy"] <= 1
    assert s["training"]["checkpoint"] is not None and s["units_done"] == 1

    # The straggler's update is for a closed round: 409, and the global does not move.
    late_report, late_payload = train(grants[1], params0)
    late = post_update(api, cars[1], grants[1]["lease_id"], late_report, late_payload)
    assert late.status_code == 409 and "closed" in late.json()["message"], late.text
    assert status(api, job_id)["training"]["version"] == 1

    # Round 2: a car holding version 0 fetches only the (int8) delta artifact, and it lands on the digest.
    grant = lease(api, cars[0], job_id)
    assert grant["base_version"] == 1
    (delta,) = grant["deltas"]
    assert delta["version"] == 1 and delta["size"] < grant["snapshot"]["size"] / 3
    blob = fetch(api, cars[0], delta["digest"])
    params1 = apply_download(params0, ModelDownload(from_version=0, version=1, digest=grant["model_digest"], full=None,
                                                    deltas=(blob,)))
    assert torch.equal(params1, global_params(api, cars[0], grant))
    # Round 2 was offered after version 1's checkpoint, which released what no round needs any more: version 0's
    # snapshot and the update it folded in (with its record); version 1's artifacts stay.
    assert not stored(server, grants[0]["snapshot"]["digest"]) and not stored(server, update0)
    assert stored(server, grant["snapshot"]["digest"]) and stored(server, delta["digest"])
    before = status(api, job_id)["training"]

    # Malformed updates: 400 each, the lease stays usable, the global and its checkpoint untouched.
    report, payload = train(grant, params1)
    numel = params1.numel()
    wrong_shape = encode(np.zeros(numel - 1, dtype=np.float32), CompressionConfig())
    wrong_dtype = bytearray(payload)
    wrong_dtype[5] = 7  # the header's dtype code: only 0 (float32) exists
    nan = encode(np.zeros(numel, dtype=np.float32), CompressionConfig())[:-4] + np.float32(np.nan).tobytes()
    bad_cases = [
        (report, wrong_shape, "shape"),
        (report, bytes(wrong_dtype), "dtype"),
        (report, nan, "NaN"),
        (report, b"not an update, just some text", "magic"),
        ({**report, "round": report["round"] + 7}, payload, "round"),
        ({**report, "steps_done": 99}, payload, "steps"),
    ]
    for bad_report, bad_payload, needle in bad_cases:
        r = post_update(api, cars[0], grant["lease_id"], bad_report, bad_payload)
        assert r.status_code == 400, (needle, r.text)
        assert needle in r.json()["message"], (needle, r.json())
    r = post_update(api, cars[0], grant["lease_id"], {**report, "num_examples": 0}, payload)
    assert r.status_code == 422 and "num_examples" in r.json()["message"], r.text
    after = status(api, job_id)["training"]
    assert (after["version"], after["checkpoint"]) == (before["version"], before["checkpoint"])
    assert after["rejected"] >= before["rejected"] + 3

    # Another car may not report on this lease; the right car's good update finishes the job.
    digest = upload(api, cars[0], payload)
    assert report_update(api, cars[1], grant["lease_id"], report, digest).status_code == 403
    assert report_update(api, cars[0], grant["lease_id"], report, digest).status_code == 200
    again = report_update(api, cars[0], grant["lease_id"], {**report, "wifi_bytes": 123}, digest)
    assert again.status_code == 200 and again.json()["state"] == "completed"  # a retried report counts once
    other = report_update(api, cars[0], grant["lease_id"], report, upload(api, cars[0], wrong_shape))
    assert other.status_code == 409 and "reports once" in other.json()["message"], other.text
    until = time.monotonic() + 30
    while (s := status(api, job_id))["state"] != "done" and time.monotonic() < until:
        time.sleep(0.1)
    assert s["state"] == "done", s
    assert [h["version"] for h in s["training"]["history"]] == [0, 1, 2]
    assert s["training"]["bytes_up"] > 0 and s["training"]["bytes_down"] > 0
    # Once the job is done, what it published goes too (the final model and checkpoint are the tenant's).
    until = time.monotonic() + 30
    while stored(server, grant["snapshot"]["digest"]) and time.monotonic() < until:
        time.sleep(0.1)
    assert not stored(server, grant["snapshot"]["digest"]) and not stored(server, delta["digest"])
    assert not stored(server, digest)  # the last update, folded into version 2

    # The final model: safetensors that load into the model, with the metrics history in its metadata.
    blob = api.get(f"/jobs/{job_id}/result", headers=auth(TENANT))
    assert blob.status_code == 200 and "safetensors" in blob.headers["content-disposition"]
    model = build_model("mnist1d-cnn")
    model.load_state_dict(st_load(blob.content))
    meta = json.loads(json.loads(blob.content[8 : 8 + int.from_bytes(blob.content[:8], "little")])
                      ["__metadata__"]["fleetgrid"])
    assert meta["version"] == 2 and len(meta["history"]) == 3 and meta["strategy"] == "fedavg"
    # The final global's weights are what the downloads carried, plus the last aggregate.
    assert FlatLayout.of(model).flatten(model).shape == params1.shape

    # Training leases are metered per car like inference units.
    ledger = api.get("/ledger", headers=auth(OPERATOR)).json()
    assert any(row["units"] >= 1 for row in ledger)


def test_global_versions_are_read_only_by_cars_training_them_and_resume_with_range(api):
    """A version's artifacts are the job's: a car with an open lease of the job reads them (resuming a cut
    transfer with Range); a car without one, a tenant, or the same car once its lease is closed get a 404."""
    job_id = submit(api, init_seed=202).json()["job_id"]
    car, stranger = enroll(api, "trainee"), enroll(api, "stranger")
    grant = lease(api, car, job_id)
    digest, size = grant["snapshot"]["digest"], grant["snapshot"]["size"]
    whole = fetch(api, car, digest)
    assert len(whole) == size and sha(whole) == digest
    cut = size // 3  # what a car got before its link dropped: it asks for the rest only
    rest = api.get(f"/artifacts/{digest}", headers=auth(car) | {"range": f"bytes={cut}-"})
    assert rest.status_code == 206 and rest.headers["content-range"] == f"bytes {cut}-{size - 1}/{size}"
    assert whole[:cut] + rest.content == whole
    for who in (stranger, TENANT):
        r = api.get(f"/artifacts/{digest}", headers=auth(who))
        assert r.status_code == 404 and "not yours to read" in r.json()["message"], r.text
    r = api.post(f"/leases/{grant['lease_id']}/fail", json={"reason": "preempted", "handback": True},
                 headers=auth(car))
    assert r.status_code == 200, r.text
    assert api.get(f"/artifacts/{digest}", headers=auth(car)).status_code == 404
    api.post(f"/jobs/{job_id}/cancel", headers=auth(TENANT))


def test_a_hostile_cars_update_reports_are_refused_and_change_nothing(api):
    """An update digest the car did not upload (another car's, or none at all), one larger than any update of the
    model, a truncated one, or one holding a NaN: each a 4xx naming the problem, before anything is written. The
    lease stays open, the job and the ledger as they were, and the car's real update is then accepted."""
    job_id = submit(api).json()["job_id"]
    car, other = enroll(api, "hostile"), enroll(api, "bystander2")
    grant = lease(api, car, job_id)
    params = global_params(api, car, grant)
    report, payload = train(grant, params)
    numel = params.numel()
    nan = bytearray(encode(np.ones(numel, dtype=np.float32), CompressionConfig()))
    nan[-4:] = np.float32(np.nan).tobytes()
    cases = [
        (upload(api, other, payload), 404, "was not uploaded by this vehicle"),  # the bytes are another car's
        (sha(b"never uploaded"), 404, "was not uploaded by this vehicle"),
        (upload(api, car, payload + bytes(9 * numel)), 400, "is at most"),
        (upload(api, car, payload[:-8]), 400, "header implies"),
        (upload(api, car, bytes(nan)), 400, "NaN"),
    ]
    before = status(api, job_id)
    units_before = {row["vehicle_id"]: row["units"] for row in api.get("/ledger", headers=auth(OPERATOR)).json()}
    for digest, code, needle in cases:
        r = report_update(api, car, grant["lease_id"], report, digest)
        assert r.status_code == code and needle in r.json()["message"], (needle, r.text)
    after = status(api, job_id)
    for key in ("units_done", "units_in_flight", "state"):
        assert after[key] == before[key], key
    for key in ("version", "checkpoint", "reports"):
        assert after["training"][key] == before["training"][key], key
    ledger = {row["vehicle_id"]: row["units"] for row in api.get("/ledger", headers=auth(OPERATOR)).json()}
    assert ledger == units_before
    hb = api.post("/vehicles/heartbeat", json=PARKED, headers=auth(car)).json()
    assert grant["lease_id"] in hb["active_leases"]
    ok = post_update(api, car, grant["lease_id"], report, payload)
    assert ok.status_code == 200 and ok.json()["state"] == "completed", ok.text
    api.post(f"/jobs/{job_id}/cancel", headers=auth(TENANT))


def test_a_step_budget_in_passes_is_planned_by_the_car_and_checked_by_the_coordinator(api):
    """With ``max_passes`` a car plans fewer than H steps on a small shard; the coordinator recomputes the plan from
    the lease and the reported examples, refuses a report claiming another one, and accepts the car's own."""
    job_id = submit(api, settings={"local": {"steps": 4, "batch_size": 16, "max_passes": 0.2},
                                   "rounds": {"clients_per_round": 1, "over_selection": 1.0,
                                              "deadline_s": 60}}).json()["job_id"]
    car = enroll(api, "passes")
    grant = lease(api, car, job_id)
    report, payload = train(grant, global_params(api, car, grant))
    planned = math.ceil(0.2 * report["num_examples"] / 16)
    assert report["steps_done"] == report["steps_planned"] == planned < 4
    digest = upload(api, car, payload)
    for claimed in (4, planned + 1):
        r = report_update(api, car, grant["lease_id"], {**report, "steps_planned": claimed}, digest)
        assert r.status_code == 400 and f"planned {planned} for" in r.json()["message"], r.text
    ok = report_update(api, car, grant["lease_id"], report, digest)
    assert ok.status_code == 200 and ok.json()["state"] == "completed", ok.text
    api.post(f"/jobs/{job_id}/cancel", headers=auth(TENANT))


def test_cars_aim_their_logit_adjustment_at_the_jobs_held_out_class_shares(api):
    """With ``logit_adjustment`` on, every lease carries the class shares of the held-out set the job is scored on
    (the car subtracts their log from its own prior's); with it off, none. The car trains with them, and the
    coordinator takes its report."""
    settings = {"local": {"steps": 4, "batch_size": 16, "logit_adjustment": 1.0},
                "rounds": {"clients_per_round": 1, "over_selection": 1.0, "deadline_s": 60}}
    job_id = submit(api, settings=settings).json()["job_id"]
    car = enroll(api, "adjusted")
    grant = lease(api, car, job_id)
    x, y = build_eval_set(DataSpec(**DATA))
    expected = heldout_prior(build_model("mnist1d-cnn"), x[:2048], y[:2048])
    assert grant["local"]["logit_adjustment"] == 1.0 and len(expected) == 10
    assert np.allclose(grant["local"]["logit_target"], expected, rtol=0, atol=1e-9)
    report, payload = train(grant, global_params(api, car, grant))
    ok = report_update(api, car, grant["lease_id"], report, upload(api, car, payload))
    assert ok.status_code == 200 and ok.json()["state"] == "completed", ok.text
    api.post(f"/jobs/{job_id}/cancel", headers=auth(TENANT))
    settings["local"]["logit_adjustment"] = 0.0  # FedAvg's default is 1
    plain = submit(api, settings=settings).json()["job_id"]
    grant = lease(api, enroll(api, "plain"), plain)
    assert grant["local"]["logit_adjustment"] == 0 and grant["local"]["logit_target"] is None
    api.post(f"/jobs/{plain}/cancel", headers=auth(TENANT))


def test_training_lease_routes_refuse_inference_reports(api):
    r = submit(api)
    job_id = r.json()["job_id"]
    car = enroll(api, "mixed")
    grant = lease(api, car, job_id)
    r = api.post(f"/leases/{grant['lease_id']}/complete", json={"result": "0" * 64}, headers=auth(car))
    assert r.status_code == 409 and "/update" in r.json()["message"]
    assert api.post(f"/leases/{grant['lease_id']}/renew", headers=auth(car)).status_code == 200
    hb = api.post("/vehicles/heartbeat", json=PARKED, headers=auth(car)).json()
    assert grant["lease_id"] in hb["active_leases"]
    r = api.post(f"/leases/{grant['lease_id']}/fail", json={"reason": "preempted", "handback": True},
                 headers=auth(car))
    assert r.status_code == 200 and r.json()["state"] == "handed_back"
    cancelled = api.post(f"/jobs/{job_id}/cancel", headers=auth(TENANT)).json()
    assert cancelled["state"] == "cancelled"


def test_fedbuff_takes_stale_updates_and_serves_each_car_its_own_version(api):
    """Asynchronous: every update makes a version; a car that trained on an older one is still heard (down-
    weighted), and the version its lease names stays readable after a newer one is made."""
    r = submit(api, strategy="fedbuff", rounds=2,
               settings={"local": {"steps": 4, "batch_size": 16}, "buffer_size": 1, "concurrency": 2,
                         "max_staleness": 2, "rounds": {"clients_per_round": 1, "deadline_s": 60}})
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    cars = [enroll(api, f"async{i}") for i in range(2)]
    grants = [lease(api, c, job_id) for c in cars]
    assert [g["base_version"] for g in grants] == [0, 0]
    first = global_params(api, cars[0], grants[0])
    report, payload = train(grants[0], first)
    assert post_update(api, cars[0], grants[0]["lease_id"], report, payload).status_code == 200
    wait_version(api, job_id, 1)
    # Car 1 still holds a lease on version 0: version 0's snapshot is kept for it (within max_staleness).
    assert torch.equal(global_params(api, cars[1], grants[1]), first)
    report, payload = train(grants[1], first)
    assert post_update(api, cars[1], grants[1]["lease_id"], report, payload).status_code == 200
    s = wait_version(api, job_id, 2)
    assert s["training"]["history"][2]["mean_staleness"] == 1.0


def test_a_car_that_reported_its_share_gets_no_second_share_of_the_same_round(api):
    """A synchronous round tops its cohort up with cars that turn up; a car holding one data shard that already
    reported this round is not among them: it would train the same shard from the same version again, and its data
    would count twice in the round."""
    r = submit(api, rounds=1, init_seed=303, data={**DATA, "num_vehicles": 2},  # as many shards as cars, or fewer
               settings={"local": {"steps": 4, "batch_size": 16},
                         "rounds": {"clients_per_round": 2, "over_selection": 1.0, "deadline_s": 120}})
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    quick, slow = enroll(api, "quick"), enroll(api, "slow")
    grant = lease(api, quick, job_id)
    report, payload = train(grant, global_params(api, quick, grant))
    assert post_update(api, quick, grant["lease_id"], report, payload).status_code == 200
    for _ in range(4):  # the quick car asks again while its round still waits for a second report
        r = api.post("/leases", json={"state": PARKED, "wait_s": 1}, headers=auth(quick))
        assert r.status_code in (200, 204), r.text
        if r.status_code == 200:
            assert r.json()["job_id"] != job_id, r.json()  # another test's work: give it back
            api.post(f"/leases/{r.json()['lease_id']}/fail", json={"reason": "not this test", "handback": True},
                     headers=auth(quick))
    assert status(api, job_id)["training"]["version"] == 0
    other = lease(api, slow, job_id)
    assert (other["round"], other["base_version"]) == (1, 0)
    report, payload = train(other, global_params(api, slow, other))
    assert post_update(api, slow, other["lease_id"], report, payload).status_code == 200
    row = wait_version(api, job_id, 1)["training"]["history"][1]
    assert (row["used"], row["cars"]) == (2, 2), row


def test_hostile_update_reports_get_a_4xx_and_never_a_500(api):
    """A report is small JSON: deeply nested JSON, a body that is not JSON (an old car's frame of report and bytes),
    a malformed digest, an unknown lease or someone else's lease each get a 4xx naming the problem."""
    job_id = submit(api).json()["job_id"]
    car, stranger = enroll(api, "nester"), enroll(api, "bystander")
    grant = lease(api, car, job_id)
    path = f"/train/leases/{grant['lease_id']}/update"
    good = {"update": "0" * 64, "round": grant["round"], "base_version": grant["base_version"], "num_examples": 1,
            "steps_done": 1, "steps_planned": 4, "examples_seen": 16}
    r = api.post("/train/leases/tl-nothing-here/update", json=good, headers=auth(car))
    assert r.status_code == 404 and "tl-nothing-here" in r.json()["message"], r.text
    r = api.post(path, json=good, headers=auth(stranger))
    assert r.status_code == 403 and "another vehicle" in r.json()["message"], r.text
    nested = b"[" * 30_000 + b"]" * 30_000  # far past any parser's recursion limit
    r = api.post(path, content=nested, headers=auth(car) | {"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    frame = (2).to_bytes(4, "little") + b"{}" + b"\x00" * 64
    r = api.post(path, content=frame, headers=auth(car) | {"content-type": "application/octet-stream"})
    assert r.status_code == 422, r.text
    r = api.post(path, json={**good, "update": "not-a-digest"}, headers=auth(car))
    assert r.status_code == 422 and "update" in r.json()["message"], r.text
    r = api.post(path, json={**good, "payload": "AAAA"}, headers=auth(car))
    assert r.status_code == 422 and "unknown field 'payload'" in r.json()["message"], r.text
    api.post(f"/jobs/{job_id}/cancel", headers=auth(TENANT))


# --- durability --------------------------------------------------------------------------------------------------

def test_a_sigkill_mid_round_loses_no_acknowledged_update_and_no_lease(tmp_path):
    """Offers, leases and acknowledged updates are rows and artifacts: a coordinator killed mid-round comes back
    with the round it was in, the update it acknowledged (the car's upload and the record naming it), and the lease
    a second car is still working on."""
    import httpx

    coordinator = start_coordinator(tmp_path / "coord", lease_ttl_s=60.0)
    try:
        with httpx.Client(base_url=coordinator.url + "/v1", timeout=30) as api:
            r = submit(api, rounds=1, settings={"local": {"steps": 4, "batch_size": 16},
                                                "rounds": {"clients_per_round": 2, "over_selection": 1.0,
                                                           "min_reports": 2, "deadline_s": 600}})
            assert r.status_code == 201, r.text
            job_id = r.json()["job_id"]
            first, second = enroll(api, "first"), enroll(api, "second")
            grants = [lease(api, first, job_id), lease(api, second, job_id)]
            assert [g["round"] for g in grants] == [1, 1]
            assert status(api, job_id)["units_in_flight"] == 2  # training leases count like any other
            params0 = global_params(api, first, grants[0])
            report0, payload0 = train(grants[0], params0, "first")
            update0 = upload(api, first, payload0)
            ok = report_update(api, first, grants[0]["lease_id"], report0, update0)
            assert ok.status_code == 200 and ok.json()["state"] == "completed", ok.text
            assert status(api, job_id)["units_done"] == 0  # one of two reports: the round is still open
        coordinator.kill()
        assert stored(coordinator, update0)
        coordinator.start()
        with httpx.Client(base_url=coordinator.url + "/v1", timeout=30) as api:
            # A retry of the first car's acknowledged report (its answer lost to the kill) is recognised.
            again = report_update(api, first, grants[0]["lease_id"], {**report0, "wifi_bytes": 7}, update0)
            assert again.status_code == 200 and again.json()["state"] == "completed", again.text
            # The second car's lease survived the restart: it renews, and its update is taken.
            assert api.post(f"/leases/{grants[1]['lease_id']}/renew", headers=auth(second)).status_code == 200
            report, payload = train(grants[1], params0, "second")
            ok = post_update(api, second, grants[1]["lease_id"], report, payload)
            assert ok.status_code == 200, ok.text
            s = wait_version(api, job_id, 1)
            assert s["training"]["history"][-1]["used"] == 2, s["training"]["history"]  # both updates folded in
            final = status(api, job_id)
            assert final["state"] in ("running", "done") and final["training"]["reports"] >= 1
    finally:
        coordinator.stop()
