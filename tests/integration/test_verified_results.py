"""Verified inference results against a real ``fleetgrid serve --verify-results`` process: honest cars and one car
returning plausible wrong embeddings; the cheater is suspended and refused, the tenant's result is the model's own,
and the operator reads the reputations with ``fleetgrid operator reputation`` (never a traceback)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest

from fleetgrid.localfleet import CoordinatorProcess
from fleetgrid.models.registry import load_runner
from harness import ENROLL, OPERATOR, TENANT

pytestmark = pytest.mark.timeout(300)

PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}
X = np.random.default_rng(3).normal(size=(120, 40)).astype(np.float32)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def fleetgrid(*args: str, code: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "fleetgrid", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    args = ["--verify-results", "--enroll-token", ENROLL, "--operator-token", OPERATOR, "--tenant", f"acme={TENANT}"]
    proc = CoordinatorProcess(tmp_path_factory.mktemp("coord"), extra_args=args).start()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


def test_a_cheating_car_is_caught_and_the_operator_sees_it(server):
    model = load_runner("mnist1d-cnn", threads=1)
    with httpx.Client(base_url=server.url + "/v1", timeout=30) as http:
        def call(method: str, path: str, token: str, **kw) -> httpx.Response:
            return http.request(method, path, headers={"authorization": f"Bearer {token}"}, **kw)

        cars = {}
        for name in ("honest-1", "honest-2", "honest-3", "cheat"):
            r = http.post("/vehicles/enroll", json={"enrollment_token": ENROLL, "name": name, "hardware": "ai4"})
            cars[name] = r.json()["credential"]
        data = _npy(X)
        digest = hashlib.sha256(data).hexdigest()
        assert call("PUT", f"/artifacts/{digest}", TENANT, content=data).status_code in (200, 201)
        job = call("POST", "/jobs", TENANT, json={"model": "mnist1d-cnn", "inputs": digest, "input_format": "npy",
                                                  "unit_items": 10}).json()
        for _ in range(60):
            for name, cred in cars.items():
                r = call("POST", "/leases", cred, json={"state": PARKED})
                if r.status_code != 200:
                    continue
                grant = r.json()
                items = np.load(io.BytesIO(call("GET", f"/artifacts/{grant['input']['digest']}", cred).content))
                out = model(items).astype(np.float32)
                if name == "cheat":
                    out = out + np.float32(0.25)
                result = _npy(out)
                body = {"result": hashlib.sha256(result).hexdigest(), "inline": base64.b64encode(result).decode()}
                call("POST", f"/leases/{grant['lease_id']}/complete", cred, json=body)
            status = call("GET", f"/jobs/{job['job_id']}", TENANT).json()
            if status["state"] != "running":
                break
        assert status["state"] == "done", status
        got = np.load(io.BytesIO(call("GET", f"/jobs/{job['job_id']}/result", TENANT).content))
        np.testing.assert_allclose(got, model(X), rtol=1e-3, atol=1e-4)
        refused = call("POST", "/leases", cars["cheat"], json={"state": PARKED})
        assert refused.status_code == 403 and "suspended" in refused.json()["message"]

    op = ["--coordinator", server.url, "--token", OPERATOR]
    rows = json.loads(fleetgrid("operator", "reputation", "--json", *op).stdout)
    cheat_id = cars["cheat"].split(".")[1]
    by_id = {r["vehicle_id"]: r for r in rows}
    assert by_id[cheat_id]["suspended"] and by_id[cheat_id]["faults"] >= 1
    assert sum(not r["suspended"] and r["agreed"] >= 1 for r in rows) == 3
    table = fleetgrid("operator", "reputation", *op).stdout
    cheat_row = next(line for line in table.splitlines() if cheat_id in line)
    assert ("outvoted" in cheat_row or "answered wrong" in cheat_row) and "100%" in cheat_row  # why; all checked
    one = json.loads(fleetgrid("operator", "reputation", cheat_id, "--json", *op).stdout)
    assert [r["vehicle_id"] for r in one] == [cheat_id]
    missing = fleetgrid("operator", "reputation", "v-nobody", *op, code=2)
    assert "v-nobody" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
