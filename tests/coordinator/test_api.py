"""The HTTP API against a real coordinator process (uvicorn on 127.0.0.1): bad input, isolation, idempotency, TLS."""

from __future__ import annotations

import hashlib
import io
import ssl
import time

import httpx
import numpy as np
import pytest

from harness import ENROLL, OPERATOR, OTHER_TENANT, TENANT, start_coordinator
from tls import self_signed

PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Api:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)

    def call(self, method: str, path: str, token: str | None = None, **kw) -> httpx.Response:
        headers = kw.pop("headers", {})
        if token:
            headers["authorization"] = f"Bearer {token}"
        return self.http.request(method, "/v1" + path, headers=headers, **kw)

    def upload(self, data: bytes, token: str = TENANT) -> str:
        r = self.call("PUT", f"/artifacts/{sha(data)}", token, content=data)
        assert r.status_code in (200, 201), r.text
        return sha(data)

    def enroll(self, name: str = "car") -> str:
        r = self.call("POST", "/vehicles/enroll", json={"enrollment_token": ENROLL, "name": name, "hardware": "ai4"})
        assert r.status_code == 201, r.text
        return r.json()["credential"]

    def submit(self, x: np.ndarray, token: str = TENANT, **kw) -> dict:
        body = {"model": "mnist1d-cnn", "inputs": self.upload(npy(x), token), "input_format": "npy", **kw}
        r = self.call("POST", "/jobs", token, json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def lease(self, cred: str) -> dict:
        r = self.call("POST", "/leases", cred, json={"state": PARKED})
        assert r.status_code == 200, r.text
        return r.json()

    def compute_and_upload(self, grant: dict, cred: str) -> str:
        from fleetgrid.models.registry import load_runner
        from fleetgrid.workloads.inputs import decode_items

        data = self.call("GET", f"/artifacts/{grant['input']['digest']}", cred).content
        out = load_runner("mnist1d-cnn", threads=1)(decode_items(data, "npy")).astype(np.float32)
        return self.upload(npy(out), cred)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = start_coordinator(tmp_path_factory.mktemp("coord"), lease_ttl_s=30.0, max_artifact_bytes=1 << 20)
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


@pytest.fixture
def api(server):
    client = Api(server.url)
    yield client
    client.http.close()


X = np.random.default_rng(0).normal(size=(50, 40)).astype(np.float32)


def test_openapi_docs_are_served(api):
    assert api.http.get("/docs").status_code == 200
    assert "/v1/leases" in api.http.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "nope", "input_format": "npy"}, 400, "registered models: "),
        ({"model": "mnist1d-cnn", "input_format": "npy", "colour": "red"}, 422, "unknown field 'colour'"),
        ({"model": "mnist1d-cnn", "input_format": "csv"}, 422, "input_format"),
        ({"model": "mnist1d-cnn", "input_format": "npy", "unit_items": 0}, 422, "unit_items"),
        ({"model": "mnist1d-cnn", "input_format": "npy", "redundancy": {"replicas": 2, "quorum": 3}}, 422, "quorum 3"),
        ({"model": "mnist1d-cnn", "input_format": "npy", "model_file": "0" * 64}, 400, "takes no model_file"),
        ({"model": "torchscript", "input_format": "npy"}, 400, "model_file"),
    ],
)
def test_bad_job_specs_are_refused_by_name(api, body, status, needle):
    body = {"inputs": api.upload(npy(X)), **body}
    before = api.call("GET", "/jobs", TENANT).json()
    r = api.call("POST", "/jobs", TENANT, json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["message"]
    assert api.call("GET", "/jobs", TENANT).json() == before  # nothing invalid is stored


@pytest.mark.parametrize(
    ("data", "fmt", "needle"),
    [
        (npy(np.zeros((5, 41), np.float32)), "npy", "(N, 40)"),
        (npy(np.zeros((5, 40), np.float64)), "npy", "float32"),
        (npy(np.zeros((0, 40), np.float32)), "npy", ""),
        (b'"a text"\n', "jsonl", "npy"),
        (b"not an array at all", "npy", ""),
    ],
)
def test_wrong_inputs_are_refused(api, data, fmt, needle):
    r = api.call("POST", "/jobs", TENANT, json={"model": "mnist1d-cnn", "inputs": api.upload(data),
                                                  "input_format": fmt})
    assert r.status_code == 400, r.text
    assert needle in r.json()["message"]


def test_inputs_must_be_uploaded_by_this_tenant(api):
    digest = api.upload(npy(X + 1.0), OTHER_TENANT)  # content only the other tenant has uploaded
    r = api.call("POST", "/jobs", TENANT, json={"model": "mnist1d-cnn", "inputs": digest, "input_format": "npy"})
    assert r.status_code == 404 and "PUT it" in r.json()["message"]


def test_corrupted_upload_is_refused_and_not_stored(api):
    data = npy(X)
    wrong = sha(data + b"x")
    r = api.call("PUT", f"/artifacts/{wrong}", TENANT, content=data)
    assert r.status_code == 400 and r.json()["error"] == "hash_mismatch"
    assert api.call("GET", f"/artifacts/{wrong}", TENANT).status_code == 404
    assert api.call("PUT", "/artifacts/not-a-digest", TENANT, content=data).status_code == 400


def test_oversized_bodies_are_refused(api):
    big = b"x" * ((1 << 20) + 10)
    r = api.call("PUT", f"/artifacts/{sha(big)}", TENANT, content=big)
    assert r.status_code == 413 and "limit" in r.json()["message"]

    def chunks():  # no Content-Length: the limit still holds while streaming
        for _ in range(20):
            yield b"y" * 65536

    streamed = b"y" * (65536 * 20)
    r = api.call("PUT", f"/artifacts/{sha(streamed)}", TENANT, content=chunks())
    assert r.status_code == 413
    assert api.call("GET", f"/artifacts/{sha(streamed)}", TENANT).status_code == 404
    r = api.call("POST", "/jobs", TENANT, content=b"{" + b" " * (2 << 20) + b"}",
                 headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_credentials(api):
    assert api.call("GET", "/jobs").status_code == 401
    assert api.call("GET", "/jobs", "fgt_wrong").status_code == 401
    assert api.call("GET", "/jobs", headers={"authorization": "Basic abc"}).status_code == 401
    r = api.call("POST", "/vehicles/enroll", json={"enrollment_token": "wrong", "name": "c", "hardware": "ai4"})
    assert r.status_code == 401 and "enrollment token" in r.json()["message"]
    r = api.call("POST", "/vehicles/enroll", json={"enrollment_token": ENROLL, "name": "c", "hardware": "tpu"})
    assert r.status_code == 400 and "hw3" in r.json()["message"]
    cred = api.enroll()
    assert api.call("POST", "/vehicles/heartbeat", cred, json=PARKED).status_code == 200
    assert api.call("POST", "/vehicles/heartbeat", cred[:-2] + "zz", json=PARKED).status_code == 401
    assert api.call("GET", "/fleet", TENANT).status_code == 401  # tenants are not the operator
    vid = cred.split(".")[1]
    assert api.call("POST", f"/vehicles/{vid}/revoke", OPERATOR).status_code == 200
    r = api.call("POST", "/vehicles/heartbeat", cred, json=PARKED)
    assert r.status_code == 401 and "revoked" in r.json()["message"]


def test_leases_belong_to_their_vehicle_and_complete_once(api):
    job = api.submit(X, unit_items=25)
    mine, theirs = api.enroll("mine"), api.enroll("theirs")
    grant = api.lease(mine)
    result = api.compute_and_upload(grant, mine)
    for action, body in (("complete", {"result": result}), ("renew", None), ("fail", {"reason": "x"})):
        r = api.call("POST", f"/leases/{grant['lease_id']}/{action}", theirs, json=body)
        assert r.status_code == 403 and "another vehicle" in r.json()["message"]
    # a vehicle cannot read inputs of a lease it does not hold
    assert api.call("GET", f"/artifacts/{grant['input']['digest']}", theirs).status_code == 404
    for _ in range(2):  # a retried completion is accepted and counted once
        r = api.call("POST", f"/leases/{grant['lease_id']}/complete", mine, json={"result": result})
        assert r.status_code == 200 and r.json()["state"] == "completed"
    other = api.upload(npy(np.zeros((25, 10), np.float32)), mine)
    r = api.call("POST", f"/leases/{grant['lease_id']}/complete", mine, json={"result": other})
    assert r.status_code == 409
    ledger = {e["vehicle_id"]: e for e in api.call("GET", "/ledger", OPERATOR).json()}
    assert ledger[mine.split(".")[1]]["units"] == 1 and ledger[mine.split(".")[1]]["items"] == 25
    # wrong result shape is refused and the lease stays open
    grant2 = api.lease(mine)
    bad = api.upload(npy(np.zeros((3, 10), np.float32)), mine)
    r = api.call("POST", f"/leases/{grant2['lease_id']}/complete", mine, json={"result": bad})
    assert r.status_code == 400 and "(25, 10)" in r.json()["message"]
    good = api.compute_and_upload(grant2, mine)
    assert api.call("POST", f"/leases/{grant2['lease_id']}/complete", mine, json={"result": good}).status_code == 200
    status = api.call("GET", f"/jobs/{job['job_id']}", TENANT).json()
    assert status["state"] == "done" and status["units_done"] == 2


def test_tenants_see_only_their_jobs(api):
    job = api.submit(X)
    assert api.call("GET", f"/jobs/{job['job_id']}", OTHER_TENANT).status_code == 404
    assert job["job_id"] not in {j["job_id"] for j in api.call("GET", "/jobs", OTHER_TENANT).json()}
    assert api.call("POST", f"/jobs/{job['job_id']}/cancel", OTHER_TENANT).status_code == 404
    r = api.call("GET", f"/jobs/{job['job_id']}/result", TENANT)
    assert r.status_code == 409 and "not done" in r.json()["message"]
    assert api.call("POST", f"/jobs/{job['job_id']}/cancel", TENANT).json()["state"] == "cancelled"
    assert api.call("POST", f"/jobs/{job['job_id']}/cancel", TENANT).status_code == 409


def test_garbage_never_gets_a_500(api):
    cred = api.enroll()
    probes = [
        ("POST", "/jobs", TENANT, {"content": b"{not json", "headers": {"content-type": "application/json"}}),
        ("POST", "/jobs", TENANT, {"json": [1, 2, 3]}),
        ("POST", "/leases", cred, {"json": {"state": {"drive": "flying"}}}),
        ("POST", "/leases", cred, {"json": {"state": PARKED, "wait_s": -1}}),
        ("POST", "/leases/../../etc/complete", cred, {"json": {}}),
        ("POST", "/leases/nope/complete", cred, {"json": {"result": "0" * 64}}),
        ("POST", "/leases/nope/progress", cred, {"json": {"done_items": -5}}),
        ("GET", "/artifacts/" + "0" * 64, cred, {"headers": {"range": "bytes=999999-"}}),
        ("GET", "/jobs/%00", TENANT, {}),
        ("POST", "/tenants", OPERATOR, {"json": {"name": "Bad Name!"}}),
    ]
    for method, path, token, kw in probes:
        r = api.call(method, path, token, **kw)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)
        assert r.json()["message"]


def test_ineligible_vehicle_gets_no_work(api):
    cred = api.enroll()
    state = {**PARKED, "drive": "driving", "eligible": False, "reasons": ["driving"]}
    r = api.call("POST", "/leases", cred, json={"state": state})
    assert r.status_code == 409 and "driving" in r.json()["message"]


def test_range_download_resumes(api):
    data = npy(np.arange(1000, dtype=np.float32))
    digest = api.upload(data)
    r = api.call("GET", f"/artifacts/{digest}", TENANT, headers={"range": "bytes=100-"})
    assert r.status_code == 206 and r.content == data[100:]
    assert r.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    assert api.call("GET", f"/artifacts/{digest}", TENANT, headers={"range": f"bytes={len(data)}-"}).status_code == 416
    assert api.call("HEAD", f"/artifacts/{digest}", TENANT).headers["content-length"] == str(len(data))


def test_expired_lease_is_reissued(tmp_path):
    proc = start_coordinator(tmp_path, lease_ttl_s=1.0)
    try:
        api = Api(proc.url)
        api.submit(X, unit_items=50)
        slow, fast = api.enroll("slow"), api.enroll("fast")
        grant = api.lease(slow)
        time.sleep(1.8)
        r = api.call("POST", f"/leases/{grant['lease_id']}/renew", slow)
        assert r.status_code == 409 and r.json()["error"] == "lease_expired"
        again = api.lease(fast)
        assert again["unit_index"] == grant["unit_index"]
        # the expired lease no longer opens its inputs, and cannot be completed
        assert api.call("GET", f"/artifacts/{grant['input']['digest']}", slow).status_code == 404
        late = api.upload(npy(np.zeros((50, 10), np.float32)), slow)
        r = api.call("POST", f"/leases/{grant['lease_id']}/complete", slow, json={"result": late})
        assert r.status_code == 409 and r.json()["error"] == "lease_expired"
    finally:
        proc.stop()


def test_tls_with_a_self_signed_certificate(tmp_path):
    cert, key = self_signed(tmp_path)
    proc = start_coordinator(tmp_path / "data", tls=(cert, key))
    try:
        assert proc.url.startswith("https://")
        r = httpx.get(proc.url + "/v1/jobs", headers={"authorization": f"Bearer {TENANT}"},
                      verify=ssl.create_default_context(cafile=str(cert)))
        assert r.status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(proc.url + "/healthz", verify=True)  # not trusted without the certificate
    finally:
        proc.stop()


def test_inline_result_and_next_lease_in_one_call(api):
    import base64

    job = api.submit(X[:30] * 2.0, unit_items=10)
    cred = api.enroll("one-trip")
    grant = api.lease(cred)
    seen = []
    while grant is not None:
        seen.append(grant["unit_index"])
        from fleetgrid.models.registry import load_runner
        from fleetgrid.workloads.inputs import decode_items

        items = decode_items(api.call("GET", f"/artifacts/{grant['input']['digest']}", cred).content, "npy")
        data = npy(load_runner("mnist1d-cnn", threads=1)(items).astype(np.float32))
        path = f"/leases/{grant['lease_id']}/complete"
        bad = api.call("POST", path, cred, json={"result": sha(data), "inline": "not base64!"})
        assert bad.status_code == 400 and "base64" in bad.json()["message"]
        wrong = api.call("POST", path, cred, json={"result": sha(data + b"x"), "inline": base64.b64encode(data).decode()})
        assert wrong.status_code == 400 and wrong.json()["error"] == "hash_mismatch"
        r = api.call("POST", path, cred, json={"result": sha(data), "inline": base64.b64encode(data).decode(),
                                               "next": {"state": PARKED}})
        assert r.status_code == 200, r.text
        grant = r.json()["next_lease"]
    assert seen == [0, 1, 2]
    assert api.call("GET", f"/jobs/{job['job_id']}", TENANT).json()["state"] == "done"


def test_redundant_units_need_a_quorum_and_a_disagreement_adds_a_replica(api):
    x = X[:20] * 3.0
    job = api.submit(x, unit_items=20, redundancy={"replicas": 2, "quorum": 2})
    honest, liar, tiebreak = api.enroll("honest"), api.enroll("liar"), api.enroll("tiebreak")
    first = api.lease(honest)
    r = api.call("POST", "/leases", honest, json={"state": PARKED})
    assert r.status_code == 204  # never two replicas of one unit to the same car
    second = api.lease(liar)
    assert (first["replica"], second["replica"]) == (0, 1)
    good = api.compute_and_upload(first, honest)
    api.call("POST", f"/leases/{first['lease_id']}/complete", honest, json={"result": good})
    assert api.call("GET", f"/jobs/{job['job_id']}", TENANT).json()["units_done"] == 0  # one vote is not a quorum
    wrong = api.upload(npy(np.zeros((20, 10), np.float32)), liar)
    api.call("POST", f"/leases/{second['lease_id']}/complete", liar, json={"result": wrong})
    assert api.call("GET", f"/jobs/{job['job_id']}", TENANT).json()["state"] == "running"
    third = api.lease(tiebreak)  # the disagreement asked for one more replica
    assert third["replica"] == 2
    api.call("POST", f"/leases/{third['lease_id']}/complete", tiebreak,
             json={"result": api.compute_and_upload(third, tiebreak)})
    status = api.call("GET", f"/jobs/{job['job_id']}", TENANT).json()
    assert status["state"] == "done" and status["units_done"] == 1
    result = np.load(io.BytesIO(api.call("GET", f"/jobs/{job['job_id']}/result", TENANT).content))
    assert np.abs(result).sum() > 0  # the honest answer won
