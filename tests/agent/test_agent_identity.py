"""A real agent process against a real coordinator (uvicorn on 127.0.0.1): it enrolls with a single-use token the
operator issued, makes its Ed25519 key (kept owner-only), and does a job with every request signed; a second car
with the same token is refused."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from harness import OPERATOR, TENANT
from in_process import LiveCoordinator, on_socket

from fleetgrid.client import FleetgridClient
from fleetgrid.clock import WallClock
from fleetgrid.identity.signing import CarKey

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveCoordinator]:
    with on_socket(tmp_path_factory.mktemp("coord"), clock=WallClock(), lease_ttl_s=30.0) as live:
        yield live


def agent_args(url: str, state_dir, token: str, name: str) -> list[str]:
    return [sys.executable, "-m", "fleetgrid", "agent", "--coordinator", url, "--state-dir", str(state_dir),
            "--enroll-token", token, "--name", name, "--bus", "manual", "--threads", "1", "--heartbeat", "0.5",
            "--lease-wait", "1", "--clock-speed", "1440", "--hours", "0-24", "--log-level", "WARNING", "--json"]


def test_an_agent_enrolls_with_an_issued_single_use_token_and_works_with_its_key(server, tmp_path):
    x = np.random.default_rng(5).normal(size=(64, 40)).astype(np.float32)
    with FleetgridClient(server.url, OPERATOR) as operator, FleetgridClient(server.url, TENANT) as tenant:
        issued = operator.issue_enrollment_token(uses=1, label="integration")
        job = tenant.submit("mnist1d-cnn", x, unit_items=32)
        proc = subprocess.Popen(agent_args(server.url, tmp_path / "car", issued.token, "keyed-car"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            final = tenant.wait(job.job_id, timeout_s=90, poll_s=0.1)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert final.state == "done" and proc.returncode == 0, err[-2000:]
        assert json.loads(out.strip().splitlines()[-1])["units_done"] == 2

        key_path = tmp_path / "car" / "car_key.pem"
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        enrollment = json.loads((tmp_path / "car" / "enrollment.json").read_text())
        record = server.coordinator.store.get_vehicle(enrollment["vehicle_id"])
        assert record is not None and record.public_key == CarKey.load(key_path).public_text
        # Its requests all passed as signed ones: the same credential without the key is refused.
        r = httpx.post(f"{server.url}/v1/vehicles/heartbeat", headers={"authorization": f"Bearer "
                                                                         f"{enrollment['credential']}"},
                       json={"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True})
        assert r.status_code == 401 and "must be signed" in r.json()["message"]
        [listed] = [t for t in operator.enrollment_tokens() if t.token_id == issued.token_id]
        assert (listed.used, listed.uses_left, listed.state) == (1, 0, "used_up")

    second = subprocess.run(agent_args(server.url, tmp_path / "car-2", issued.token, "second-car"),
                            capture_output=True, text=True, timeout=120)
    assert second.returncode != 0 and "used up (1 of 1" in second.stderr, second.stderr[-2000:]
    assert "Traceback" not in second.stderr
