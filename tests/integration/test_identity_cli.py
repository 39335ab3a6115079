"""The identity commands as an operator types them, against a real coordinator process: enrollment tokens issued,
listed and revoked, a car suspended and unsuspended, the audit log; bad input exits 2 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from harness import OPERATOR, start_coordinator

pytestmark = pytest.mark.timeout(300)

WIDE = {**os.environ, "COLUMNS": "200"}


def fleetgrid(url: str, *args: str, code: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "fleetgrid", *args, "--coordinator", url, "--token", OPERATOR],
                          capture_output=True, text=True, timeout=120, env=WIDE)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = start_coordinator(tmp_path_factory.mktemp("coord"))
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


def test_tokens_are_issued_listed_and_revoked_and_the_audit_log_shows_it(server):
    url = server.url
    token = fleetgrid(url, "operator", "enrollment-tokens", "issue", "--uses", "2", "--expires-in", "12h",
                      "--label", "garage 4").stdout.strip()
    assert token.startswith("fgen_")
    r = httpx.post(f"{url}/v1/vehicles/enroll", json={"enrollment_token": token, "name": "c", "hardware": "ai4"})
    assert r.status_code == 201, r.text
    vehicle_id = r.json()["vehicle_id"]
    [listed] = json.loads(fleetgrid(url, "operator", "enrollment-tokens", "list", "--json").stdout)
    assert (listed["label"], listed["used"], listed["uses_left"], listed["state"]) == ("garage 4", 1, 1, "live")
    table = fleetgrid(url, "operator", "enrollment-tokens", "list").stdout
    assert listed["token_id"] in table and token not in table
    out = fleetgrid(url, "operator", "enrollment-tokens", "revoke", listed["token_id"]).stdout
    assert "revoked (1 enrollment(s)" in out
    r = httpx.post(f"{url}/v1/vehicles/enroll", json={"enrollment_token": token, "name": "c", "hardware": "ai4"})
    assert r.status_code == 401 and "revoked" in r.json()["message"]

    assert "suspended" in fleetgrid(url, "operator", "suspend", vehicle_id, "--reason", "odd results").stdout
    assert "unsuspended" in fleetgrid(url, "operator", "unsuspend", vehicle_id).stdout
    entries = json.loads(fleetgrid(url, "operator", "audit", "--json").stdout)
    assert [e["action"] for e in entries[:4]] == ["vehicle.unsuspend", "vehicle.suspend", "enrollment_token.revoke",
                                                  "enrollment_token.issue"]
    assert "odd results" in fleetgrid(url, "operator", "audit").stdout


def test_bad_input_is_one_line_and_exit_2(server):
    url = server.url
    bad = fleetgrid(url, "operator", "enrollment-tokens", "issue", "--expires-in", "soon", code=2)
    assert "is not a duration" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    bad = fleetgrid(url, "operator", "enrollment-tokens", "issue", "--uses", "0", code=2)
    assert "--uses 0 must be at least 1" in bad.stderr
    missing = fleetgrid(url, "operator", "enrollment-tokens", "revoke", "et-nope", code=2)
    assert "does not exist" in missing.stderr
    missing = fleetgrid(url, "operator", "suspend", "v-nope", "--reason", "x", code=2)
    assert "does not exist" in missing.stderr
