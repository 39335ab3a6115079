"""The agent against the real coordinator served by uvicorn on 127.0.0.1 (a thread of this process, on the wall
clock): a job that survives a preemption, and the agent command as its own process. The coordinator as its own
process is exercised with the agent command in test_agent_cli."""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from fake_models import slow_registry_factory
from harness import ENROLL, TENANT
from in_process import LiveCoordinator, on_socket

from fleetgrid.agent.config import AgentConfig
from fleetgrid.agent.runtime import Agent
from fleetgrid.agent.worker import WorkerProcess
from fleetgrid.client import FleetgridClient
from fleetgrid.clock import WallClock
from fleetgrid.vehicle.bus import ManualVehicleBus
from fleetgrid.vehicle.state import DriveState

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveCoordinator]:
    with on_socket(tmp_path_factory.mktemp("coord"), clock=WallClock(), lease_ttl_s=30.0) as live:
        yield live


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_preempted_unit_is_handed_back_and_resumed_to_the_local_result(server, tmp_path):
    from fleetgrid.workloads.inference import run_local

    x = np.random.default_rng(3).normal(size=(240, 40)).astype(np.float32)
    clock = WallClock()
    bus = ManualVehicleBus(clock=clock)
    config = AgentConfig(
        coordinator=server.url, state_dir=tmp_path / "car", enrollment_token=ENROLL, name="it-car",
        heartbeat_interval_s=0.2, poll_interval_s=0.05, lease_wait_s=2.0, progress_interval_s=0.1, max_units=1,
    )
    worker = WorkerProcess(threads=1, runner_factory=functools.partial(slow_registry_factory, delay_s=0.03))
    agent = Agent(config, bus, clock, worker=worker)
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    with FleetgridClient(server.url, TENANT) as tenant:
        job = tenant.submit("mnist1d-cnn", x, unit_items=240, batch_size=8)
        runner.start()
        try:
            work = tmp_path / "car" / "work"
            _wait(lambda: any(p.name == "checkpoint.npy" for p in work.rglob("*")), 60, "a first checkpoint")
            time.sleep(0.2)
            bus.set(drive=DriveState.DRIVING)
            _wait(lambda: tenant.job(job.job_id).preemptions == 1, 30, "the handback")
            assert agent.stats.preemptions == 1 and agent.worker.pid is None
            bus.set(drive=DriveState.PARKED)
            final = tenant.wait(job.job_id, timeout_s=60, poll_s=0.1)
            runner.join(30)
        finally:
            stop.set()
            runner.join(30)
        assert final.state == "done", final.error
        result = tenant.result(job.job_id)
    np.testing.assert_allclose(result, run_local("mnist1d-cnn", x, batch_size=8), rtol=1e-5, atol=1e-6)
    stats = agent.stats
    assert stats.units_done == 1 and stats.preemptions == 1 and len(stats.preemption_latencies_ms) == 1
    assert 0 < stats.items_resumed < 240, "the second lease resumed from the handed-back checkpoint"
    assert stats.wifi_bytes > x.nbytes and stats.cellular_bytes == 0
    # A real car's reports, a hand-back with its checkpoint and a resumed completion, pass every cross-check.
    assert [r.implausible for r in server.coordinator.store.list_reputations()] in ([], [0])


def test_the_agent_command_enrolls_works_and_exits_cleanly_on_sigterm(server, tmp_path):
    x = np.random.default_rng(4).normal(size=(64, 40)).astype(np.float32)
    args = [sys.executable, "-m", "fleetgrid", "agent", "--coordinator", server.url, "--state-dir", str(tmp_path),
            "--enroll-token", ENROLL, "--name", "cli-car", "--bus", "manual", "--threads", "1", "--heartbeat", "0.5",
            "--lease-wait", "1", "--clock-speed", "1440", "--hours", "0-24", "--log-level", "WARNING", "--json"]
    with FleetgridClient(server.url, TENANT) as tenant:
        job = tenant.submit("mnist1d-cnn", x, unit_items=64)
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            final = tenant.wait(job.job_id, timeout_s=60, poll_s=0.1)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert final.state == "done" and proc.returncode == 0, err[-2000:]
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["units_done"] == 1 and stats["items_done"] == 64
    assert json.loads((tmp_path / "stats.json").read_text())["units_done"] == 1
