"""The whole system, as deployed: a coordinator process, agent processes, HTTP on 127.0.0.1, crashes included."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from fleetgrid.workloads.inference import run_local

from fleetgrid.testing import slow_model_file

from .conftest import wait_for

pytestmark = pytest.mark.timeout(240)

X = np.random.default_rng(7).normal(size=(4000, 40)).astype(np.float32)


def test_fleet_result_equals_a_local_run(fleet):
    fleet.start_coordinator()
    fleet.start_agent("car-a")
    fleet.start_agent("car-b")
    with fleet.client() as client:
        job = client.submit("mnist1d-cnn", X, unit_items=512)
        final = client.wait(job.job_id, timeout_s=120)
        assert final.state == "done", final.error
        assert final.units_done == final.units_total == 8
        result = client.result(job.job_id)
    np.testing.assert_allclose(result, run_local("mnist1d-cnn", X, threads=1), atol=1e-5, rtol=1e-5)
    with fleet.operator() as op:
        ledger = op.ledger()
        overview = op.fleet()
    assert sum(e.items for e in ledger) == len(X)  # metered exactly once per item
    assert overview.vehicles == 2 and overview.jobs == {"done": 1}


def test_agent_killed_mid_unit_and_the_job_still_completes(fleet, tmp_path):
    # One unit of 10 batches of nominally 0.5 s each: the kill below lands while the victim still holds it, however
    # fast the machine. (The model's loop count is calibrated on this machine, and a calibration taken while the
    # machine was busy runs several times faster later: two short units used to finish before the kill.)
    model = slow_model_file(tmp_path / "slow.pt", seconds_per_batch=0.5)
    x = X[:160]
    fleet.start_coordinator(extra_args=["--lease-ttl", "3"])
    victim = fleet.start_agent("victim")
    with fleet.client() as client, fleet.operator() as op:
        job = client.submit("torchscript", x, model_file=model, unit_items=160, batch_size=16)
        wait_for(lambda: any(v.active_leases for v in op.vehicles()), 60, "the victim to lease the unit")
        time.sleep(1.0)  # mid-unit: the worker started, batches to go
        victim.kill()
        assert client.job(job.job_id).state == "running"
        fleet.start_agent("rescuer")
        final = client.wait(job.job_id, timeout_s=180)
        assert final.state == "done", final.error
        assert final.reissued_units >= 1  # the victim's lease expired and was handed to the rescuer
        result = client.result(job.job_id)
    np.testing.assert_allclose(result, run_local("torchscript", x, batch_size=16, model_file=model, threads=1),
                               atol=1e-5)


def test_coordinator_restart_mid_job_loses_nothing(fleet):
    coordinator = fleet.start_coordinator()
    fleet.start_agent("car-a")
    fleet.start_agent("car-b")
    x = np.concatenate([X] * 10)
    with fleet.client() as client:
        job = client.submit("mnist1d-cnn", x, unit_items=1024)
        wait_for(lambda: client.job(job.job_id).units_done >= 2, 120, "two units to finish")
    coordinator.kill()
    coordinator.start()  # same data directory, same port: the agents reconnect on their own
    with fleet.client() as client:
        status = client.job(job.job_id)
        assert status.units_done >= 2 and status.state in ("running", "done")
        final = client.wait(job.job_id, timeout_s=180)
        assert final.state == "done", final.error
        result = client.result(job.job_id)
    np.testing.assert_allclose(result, run_local("mnist1d-cnn", x, threads=1), atol=1e-5, rtol=1e-5)
    with fleet.operator() as op:
        assert sum(e.items for e in op.ledger()) == len(x)


def test_a_preempted_unit_is_finished_by_another_car(fleet, tmp_path):
    """Car A's driver leaves mid-unit: A stops at once and hands its checkpoint back; car B finishes the unit.

    Car A runs the real agent in this process (its worker is still a separate process) so the test can start the
    trip at a chosen moment; car B is an agent process.
    """
    import threading

    from fleetgrid.agent.config import AgentConfig
    from fleetgrid.agent.runtime import Agent
    from fleetgrid.clock import WallClock
    from fleetgrid.vehicle import DriveState, ManualVehicleBus

    model = slow_model_file(tmp_path / "slow.pt", seconds_per_batch=0.2)
    x = X[:320]
    coordinator = fleet.start_coordinator()
    bus = ManualVehicleBus(clock=WallClock())
    config = AgentConfig(coordinator=coordinator.url, state_dir=tmp_path / "car-a",
                         enrollment_token=coordinator.credentials().enroll, name="car-a", threads=1,
                         heartbeat_interval_s=1.0, lease_wait_s=1.0, progress_interval_s=0.5)
    agent = Agent(config, bus, WallClock())
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        with fleet.client() as client:
            job = client.submit("torchscript", x, model_file=model, unit_items=320, batch_size=16)
            work = tmp_path / "car-a" / "work"
            wait_for(lambda: any(p.name == "checkpoint.npy" for p in work.rglob("*")), 60, "car A's first checkpoint")
            time.sleep(0.5)  # a few batches in, most still to go
            bus.set(drive=DriveState.DRIVING)
            wait_for(lambda: client.job(job.job_id).preemptions == 1, 30, "car A to hand the unit back")
            b = fleet.start_agent("car-b")
            final = client.wait(job.job_id, timeout_s=180)
            assert final.state == "done", final.error
            result = client.result(job.job_id)
    finally:
        stop.set()
        thread.join(30)
    assert final.preemptions == 1 and agent.stats.units_done == 0
    (latency,) = agent.stats.preemption_latencies_ms  # its figure belongs to bench/inference.py
    assert math.isfinite(latency) and latency > 0
    wait_for(lambda: b.stats().get("units_done", 0) == 1, 10, "car B's stats")
    assert 0 < b.stats()["items_resumed"] < len(x), "car B resumed from car A's checkpoint"
    np.testing.assert_allclose(result, run_local("torchscript", x, batch_size=16, model_file=model, threads=1),
                               atol=1e-5)
