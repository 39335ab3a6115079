"""The billing commands as a user types them, against a real coordinator process: prices, owners, a statement
and a bill in table, JSON and CSV, the payout export; bad input exits 2 with one line, never a traceback."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest

from harness import ENROLL, OPERATOR, TENANT, start_coordinator

pytestmark = pytest.mark.timeout(300)

WIDE = {**os.environ, "COLUMNS": "200"}


def fleetgrid(*args: str, code: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "fleetgrid", *args], capture_output=True, text=True, timeout=120,
                          env=WIDE)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = start_coordinator(tmp_path_factory.mktemp("coord"))
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


def _one_completed_unit(url: str) -> str:
    """Enroll a car and have it complete a 20-item unit; returns the car's id."""
    with httpx.Client(base_url=url + "/v1", timeout=30) as http:
        def call(method: str, path: str, token: str | None = None, **kw) -> httpx.Response:
            r = http.request(method, path, headers={"authorization": f"Bearer {token}"} if token else {}, **kw)
            assert r.status_code < 300, r.text
            return r

        cred = call("POST", "/vehicles/enroll", json={"enrollment_token": ENROLL, "name": "car",
                                                      "hardware": "ai4"}).json()["credential"]
        for token, data in ((TENANT, npy(np.zeros((20, 40), np.float32))),
                            (cred, npy(np.zeros((20, 10), np.float32)))):
            call("PUT", f"/artifacts/{hashlib.sha256(data).hexdigest()}", token, content=data)
        inputs, result = (hashlib.sha256(npy(np.zeros(s, np.float32))).hexdigest() for s in ((20, 40), (20, 10)))
        call("POST", "/jobs", TENANT, json={"model": "mnist1d-cnn", "inputs": inputs, "input_format": "npy",
                                            "unit_items": 20, "name": "embed"})
        state = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}
        grant = call("POST", "/leases", cred, json={"state": state}).json()
        call("POST", f"/leases/{grant['lease_id']}/complete", cred, json={"result": result})
        return cred.split(".")[1]


def test_prices_owners_statements_bills_and_payouts(server, tmp_path):
    at = ["--coordinator", server.url]
    op = [*at, "--token", OPERATOR]
    for args, says in [(["--currency", "USD", "--fee", "0.1", "--price", "inference.per_item=-1"], "per_item"),
                       (["--currency", "XYZ", "--fee", "0.1", "--price", "inference.per_item=1"], "ISO 4217"),
                       (["--currency", "USD", "--fee", "2", "--price", "inference.per_item=1"], "operator_fee"),
                       (["--currency", "USD", "--fee", "0.1", "--price", "per_item=1"], "WORKLOAD.UNIT=DECIMAL"),
                       (["--currency", "USD"], "needs --currency, --fee")]:
        assert says in fleetgrid("operator", "prices", *args, *op, code=2).stderr
    assert "no price list" in fleetgrid("operator", "prices", *op, code=2).stderr  # nothing was set
    shown = fleetgrid("operator", "prices", "--currency", "USD", "--fee", "0.1", "--price",
                      "inference.per_item=0.001", *op).stdout
    assert "per_item" in shown and "0.001" in shown

    vid = _one_completed_unit(server.url)
    alice = json.loads(fleetgrid("owner", "add", "alice", "--tariff", "0.25", "--json", *op).stdout)["token"]
    assert "not a decimal" in fleetgrid("owner", "add", "bob", "--tariff", "cheap", *op, code=2).stderr
    assert vid in fleetgrid("owner", "attach", "alice", vid, *op).stdout
    assert "does not exist" in fleetgrid("owner", "attach", "nobody", vid, *op, code=2).stderr
    assert "alice" in fleetgrid("owner", "list", *op).stdout

    me = [*at, "--token", alice]
    st = json.loads(fleetgrid("owner", "statement", "--json", *me).stdout)
    # 20 items x 0.001 = 0.02; the operator keeps 10%.
    assert (st["charges_micro"], st["fee_micro"], st["gross_micro"], st["cars"]) == (20_000, 2_000, 18_000, [vid])
    table = fleetgrid("owner", "statement", *me).stdout
    assert "inference" in table and "0.018000 USD" in table
    rows = list(csv.reader(io.StringIO(fleetgrid("owner", "statement", "--csv", *me).stdout)))
    assert rows[1][:3] == ["work", "inference", "1"] and rows[-1][-1] == str(st["net_micro"])
    assert "YYYY-MM" in fleetgrid("owner", "statement", "--month", "2026-13", *me, code=2).stderr
    assert "owner's token" in fleetgrid("owner", "statement", *at, code=2).stderr
    assert "choose one" in fleetgrid("owner", "statement", "--json", "--csv", *me, code=2).stderr
    empty = json.loads(fleetgrid("owner", "statement", "--month", "2020-01", "--json", *me).stdout)
    assert (empty["work"], empty["gross_micro"]) == ([], 0)
    assert json.loads(fleetgrid("owner", "statement", "--owner", "alice", "--json", *op).stdout) == st

    bill = json.loads(fleetgrid("tenant", "bill", "--json", *at, "--token", TENANT).stdout)
    assert bill["total_micro"] == 20_000 and [j["name"] for j in bill["jobs"]] == ["embed"]
    assert "0.020000 USD" in fleetgrid("tenant", "bill", *at, "--token", TENANT).stdout
    assert fleetgrid("tenant", "bill", "--csv", *at, "--token", TENANT).stdout.splitlines()[-1].endswith(",20000,")
    assert fleetgrid("tenant", "bill", *at, "--token", alice, code=2).returncode == 2  # an owner is no tenant

    out = tmp_path / "payouts.csv"
    fleetgrid("operator", "payouts", "--out", str(out), *op)
    payouts = list(csv.DictReader(out.open()))
    assert [(p["owner"], p["amount"], p["currency"]) for p in payouts] == [("alice", "0.018000", "USD")]
    assert "is a folder" in fleetgrid("operator", "payouts", "--out", str(tmp_path), *op, code=2).stderr
