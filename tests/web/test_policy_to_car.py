"""An owner's policy saved on the dashboard reaches a real agent process with its next heartbeat: the car stops
lending when the policy says so (only while plugged in, and it is not) and lends again when the owner relaxes it."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from fleetgrid.localfleet import AgentProcess
from harness import ENROLL, OPERATOR, auth, start_coordinator

pytestmark = pytest.mark.slow


def _wait_for(what: str, check, timeout_s: float = 90.0):
    """Poll ``check`` until it returns something truthy (a deadline, not a timing assertion: a busy machine is
    only slower)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _save_policy(client: httpx.Client, **fields: str) -> None:
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get("/dashboard/owner").text)[1]
    r = client.post("/dashboard/owner/policy", data={"csrf": csrf, **fields})
    assert r.status_code == 303, r.text


def test_a_policy_saved_on_the_dashboard_reaches_the_car_at_its_next_heartbeat(tmp_path):
    coordinator = start_coordinator(tmp_path / "coord")
    agent = AgentProcess(coordinator.url, tmp_path / "car", ENROLL, name="dana-car", bus="manual",
                         extra_args=["--heartbeat", "0.2", "--lease-wait", "1"])
    api = httpx.Client(base_url=coordinator.url, timeout=30)
    try:
        agent.start()

        def car() -> dict | None:
            found = [v for v in api.get("/v1/vehicles", headers=auth(OPERATOR)).json() if v["name"] == "dana-car"]
            return found[0] if found else None

        vehicle_id = _wait_for("the agent to enroll", car)["vehicle_id"]
        _wait_for("the parked car (manual bus) to report itself lending", lambda: car()["eligible"])
        token = api.post("/v1/owners", json={"name": "dana"}, headers=auth(OPERATOR)).json()["token"]
        assert api.post("/v1/owners/dana/cars", json={"vehicle_id": vehicle_id},
                        headers=auth(OPERATOR)).status_code == 200
        with httpx.Client(base_url=coordinator.url, timeout=30) as browser:
            assert browser.post("/login", data={"token": token}).status_code == 303
            _save_policy(browser, opt_in="on", plugged_in_only="on", min_soc_percent="20", hours_start="0",
                         hours_end="24", cellular_cap_mib="2048", allow_cellular="on")
            _wait_for("the car to stop lending (it is not plugged in)", lambda: not car()["eligible"])
            _wait_for("the agent to log the new policy",
                      lambda: "owner policy updated from the coordinator" in (agent.state_dir / "agent.log")
                      .read_text())
            _save_policy(browser, opt_in="on", min_soc_percent="20", hours_start="0", hours_end="24",
                         cellular_cap_mib="2048", allow_cellular="on")
            _wait_for("the car to lend again", lambda: car()["eligible"])
        assert agent.alive()
    finally:
        api.close()
        agent.stop()
        coordinator.stop()
    assert "Traceback" not in coordinator.log(), coordinator.log()[-3000:]
    assert "Traceback" not in (agent.state_dir / "agent.log").read_text()
