"""A hostile (or broken) car against a real coordinator process: whatever it sends is refused with a 4xx before it
touches any state, nothing is written for a lease that is not its own, and what it reports is metered once."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest

from harness import OPERATOR, TENANT, start_coordinator

from .test_api import PARKED, Api, npy, sha

X = np.random.default_rng(1).normal(size=(50, 40)).astype(np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = start_coordinator(tmp_path_factory.mktemp("coord"), lease_ttl_s=30.0, max_artifact_bytes=1 << 20)
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


@pytest.fixture
def api(server):
    """A client; the jobs a test leaves unfinished are cancelled after it, so the next test leases only its own."""
    client = Api(server.url)
    yield client
    for job in client.call("GET", "/jobs", TENANT).json():
        if job["state"] in ("queued", "running"):
            client.call("POST", f"/jobs/{job['job_id']}/cancel", TENANT)
    client.http.close()


def result_for(api: Api, grant: dict, cred: str) -> np.ndarray:
    from fleetgrid.models.registry import load_runner
    from fleetgrid.workloads.inputs import decode_items

    data = api.call("GET", f"/artifacts/{grant['input']['digest']}", cred).content
    return load_runner("mnist1d-cnn", threads=1)(decode_items(data, "npy")).astype(np.float32)


def complete_inline(api: Api, lease_id: str, cred: str, data: bytes, **extra) -> httpx.Response:
    body = {"result": sha(data), "inline": base64.b64encode(data).decode(), **extra}
    return api.call("POST", f"/leases/{lease_id}/complete", cred, json=body)


def job_status(api: Api, job_id: str) -> dict:
    return api.call("GET", f"/jobs/{job_id}", TENANT).json()


def ledger_of(api: Api, cred: str) -> dict:
    rows = {e["vehicle_id"]: e for e in api.call("GET", "/ledger", OPERATOR).json()}
    return rows.get(cred.split(".")[1], {"units": 0, "items": 0})


def test_a_bad_result_changes_nothing_and_a_good_one_still_completes(api):
    """A result is parsed whole before the unit is marked done: a truncated array (valid header), a NaN, a wrong
    shape, sent inline or uploaded, each get a 400 and the lease stays open for the real result."""
    job = api.submit(X, unit_items=25)
    car = api.enroll("sloppy")
    grants = [api.lease(car), api.lease(car)]
    expected = []
    for grant in grants:
        out = result_for(api, grant, car)
        expected.append(out)
        good = npy(out)
        nan = out.copy()
        nan[3, 4] = np.nan
        inf = out.copy()
        inf[0, 0] = np.inf
        bad = {
            "truncated": good[:-40],
            "nan": npy(nan),
            "inf": npy(inf),
            "one row short": npy(out[:-1]),
            "float64": npy(out.astype(np.float64)),
        }
        for why, data in bad.items():
            r = complete_inline(api, grant["lease_id"], car, data)
            assert r.status_code == 400, (why, r.status_code, r.text)
            assert r.json()["message"], why
            uploaded = api.upload(data, car)  # the same bytes uploaded as an artifact first
            r = api.call("POST", f"/leases/{grant['lease_id']}/complete", car, json={"result": uploaded})
            assert r.status_code == 400, (why, r.status_code, r.text)
        status = job_status(api, job["job_id"])
        assert status["units_done"] == 0 and status["result"] is None, status
        assert "finite" in complete_inline(api, grant["lease_id"], car, bad["nan"]).json()["message"]
    for grant, out in zip(grants, expected, strict=True):
        r = complete_inline(api, grant["lease_id"], car, npy(out))
        assert r.status_code == 200, r.text
    status = job_status(api, job["job_id"])
    assert status["state"] == "done" and status["units_done"] == 2, status
    result = np.load(io.BytesIO(api.call("GET", f"/jobs/{job['job_id']}/result", TENANT).content))
    np.testing.assert_array_equal(result, np.concatenate(expected))


def test_bad_checkpoints_are_refused_whole(api):
    api.submit(X, unit_items=50)
    car = api.enroll("checkpointer")
    grant = api.lease(car)
    part = result_for(api, grant, car)[:20]
    nan = part.copy()
    nan[1, 1] = np.nan
    for data in (npy(part)[:-8], npy(nan)):
        digest = api.upload(data, car)
        r = api.call("POST", f"/leases/{grant['lease_id']}/progress", car,
                     json={"done_items": 20, "checkpoint": digest})
        assert r.status_code == 400, r.text
        r = api.call("POST", f"/leases/{grant['lease_id']}/fail", car,
                     json={"reason": "preempted", "handback": True, "done_items": 20, "checkpoint": digest})
        assert r.status_code == 400, r.text
    r = api.call("POST", f"/leases/{grant['lease_id']}/fail", car, json={"reason": "done here", "handback": True})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"wifi_bytes": 2**62}, "wifi_bytes"),
        ({"cellular_bytes": 2**41}, "cellular_bytes"),
        ({"compute_s": 1e308}, "compute_s"),
        ({"compute_s": -1.0}, "compute_s"),
    ],
)
def test_absurd_counters_are_refused_on_the_wire(api, extra, needle):
    api.submit(X[:10], unit_items=10)
    car = api.enroll("liar")
    grant = api.lease(car)
    data = npy(result_for(api, grant, car))
    r = complete_inline(api, grant["lease_id"], car, data, **extra)
    assert r.status_code == 422 and needle in r.json()["message"], r.text
    r = api.call("POST", f"/leases/{grant['lease_id']}/fail", car, json={"reason": "x", **extra})
    assert r.status_code == 422 and needle in r.json()["message"], r.text
    assert api.call("GET", "/ledger", OPERATOR).status_code == 200
    assert complete_inline(api, grant["lease_id"], car, data).status_code == 200


def test_non_finite_numbers_in_json_are_refused(api):
    api.submit(X[:10], unit_items=10)
    car = api.enroll("nan-sender")
    grant = api.lease(car)
    data = npy(result_for(api, grant, car))
    for literal in (b"NaN", b"Infinity"):
        body = (b'{"result": "%s", "inline": "%s", "compute_s": %s}'
                % (sha(data).encode(), base64.b64encode(data), literal))
        r = api.call("POST", f"/leases/{grant['lease_id']}/complete", car, content=body,
                     headers={"content-type": "application/json"})
        assert r.status_code in (400, 422), r.text


def test_compute_time_cannot_exceed_the_lease(api):
    """compute_s within the wire's bound but longer than the lease has existed is refused: a car cannot bill an
    hour for a unit it was given a moment ago."""
    api.submit(X[:10], unit_items=10)
    car = api.enroll("overbiller")
    grant = api.lease(car)
    data = npy(result_for(api, grant, car))
    r = complete_inline(api, grant["lease_id"], car, data, compute_s=3600.0)
    assert r.status_code == 400 and "compute_s" in r.json()["message"], r.text
    assert job_status(api, grant["job_id"])["units_done"] == 0
    assert complete_inline(api, grant["lease_id"], car, data, compute_s=0.5).status_code == 200
    assert ledger_of(api, car)["compute_s"] == 0.5


def test_inline_results_for_someone_elses_lease_are_never_written(api, server):
    api.submit(X[:10], unit_items=10)
    owner, thief = api.enroll("owner"), api.enroll("thief")
    grant = api.lease(owner)
    junk = [npy(np.full((10, 10), float(i), np.float32)) for i in range(3)]
    r = complete_inline(api, grant["lease_id"], thief, junk[0])
    assert r.status_code == 403, r.text
    r = complete_inline(api, "lease-does-not-exist", thief, junk[1])
    assert r.status_code == 404, r.text
    root = server.data_dir / "artifacts"
    for data in junk[:2]:
        assert not (root / sha(data)[:2] / sha(data)).exists()
    # A lease already completed is not a place to write either.
    assert complete_inline(api, grant["lease_id"], owner, npy(result_for(api, grant, owner))).status_code == 200
    r = complete_inline(api, grant["lease_id"], owner, junk[2])
    assert r.status_code == 409, r.text
    assert not (root / sha(junk[2])[:2] / sha(junk[2])).exists()


def test_a_resumed_unit_is_metered_once(api):
    """Car A computes 20 items and hands the unit back with its checkpoint; car B resumes from it, reports its own
    progress, and completes: A is paid for 20 items, B for the 30 it computed."""
    api.submit(X, unit_items=50)
    a, b = api.enroll("first"), api.enroll("second")
    grant = api.lease(a)
    full = result_for(api, grant, a)
    checkpoint = api.upload(npy(full[:20]), a)
    r = api.call("POST", f"/leases/{grant['lease_id']}/fail", a,
                 json={"reason": "preempted", "handback": True, "done_items": 20, "checkpoint": checkpoint})
    assert r.status_code == 200, r.text
    resumed = api.lease(b)
    assert resumed["checkpoint"] == {"done_items": 20, "digest": checkpoint}
    progress = api.upload(npy(full[:35]), b)
    r = api.call("POST", f"/leases/{resumed['lease_id']}/progress", b, json={"done_items": 35, "checkpoint": progress})
    assert r.status_code == 200, r.text
    assert complete_inline(api, resumed["lease_id"], b, npy(full)).status_code == 200
    assert ledger_of(api, a)["items"] == 20
    assert ledger_of(api, b)["items"] == 30


def test_a_lease_that_expires_is_metered_for_the_checkpoint_it_left(tmp_path):
    """Car A reports a checkpoint of 20 items and goes quiet; its lease expires and car B resumes from that
    checkpoint: A is metered for 20 items, B for the 30 it computed, the unit for 50 in total."""
    from fleetgrid.models.registry import load_runner

    proc = start_coordinator(tmp_path, lease_ttl_s=2.0)
    try:
        api = Api(proc.url)
        api.submit(X, unit_items=50)
        a, b = api.enroll("vanishing"), api.enroll("finisher")
        full = load_runner("mnist1d-cnn", threads=1)(X).astype(np.float32)  # before the lease: its TTL is short
        checkpoint = api.upload(npy(full[:20]), a)
        grant = api.lease(a)
        r = api.call("POST", f"/leases/{grant['lease_id']}/progress", a,
                     json={"done_items": 20, "checkpoint": checkpoint})
        assert r.status_code == 200, r.text
        resumed = None
        while resumed is None:  # B long-polls; the sweeper expires A's lease and wakes it (the test timeout bounds)
            r = api.call("POST", "/leases", b, json={"state": PARKED, "wait_s": 10})
            assert r.status_code in (200, 204), r.text
            resumed = r.json() if r.status_code == 200 else None
        assert resumed["checkpoint"] == {"done_items": 20, "digest": checkpoint}
        assert complete_inline(api, resumed["lease_id"], b, npy(full)).status_code == 200
        assert (ledger_of(api, a)["items"], ledger_of(api, b)["items"]) == (20, 30)
    finally:
        proc.stop()
