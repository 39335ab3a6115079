"""The agent's loop against an in-memory coordinator and a hand-driven vehicle bus, with a real worker process."""

from __future__ import annotations

import functools
import io
import json
import math
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from agent_fakes import FakeCoordinator, expected, summax_factory

from fleetgrid import errors
from fleetgrid.agent.config import AgentConfig
from fleetgrid.agent.runtime import Agent
from fleetgrid.agent.statedir import AgentStats
from fleetgrid.agent.worker import WorkerProcess
from fleetgrid.clock import ManualClock
from fleetgrid.protocol import CompleteRequest, FailRequest, LeaseGrant
from fleetgrid.vehicle.bus import ManualVehicleBus
from fleetgrid.vehicle.policy import OwnerPolicy
from fleetgrid.vehicle.state import DriveState, Network, VehicleState

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000.0  # a Tuesday, 22:13 UTC: inside the default all-day hours


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


def make_bus(clock: ManualClock, **state) -> ManualVehicleBus:
    values = {"drive": DriveState.PARKED, "soc": 0.8, "network": Network.WIFI, "plugged_in": False, "at": T0}
    return ManualVehicleBus(VehicleState(**(values | state)), clock)


def make_agent(tmp_path, bus, clock, fake, *, delay_s=0.0, policy=None, **overrides) -> Agent:
    settings = {"heartbeat_interval_s": 0.05, "poll_interval_s": 0.02, "lease_wait_s": 0.0, "progress_interval_s": 0.05}
    config = AgentConfig(
        coordinator="http://coordinator.test", state_dir=tmp_path / "car", enrollment_token="good-token",
        policy=policy or OwnerPolicy(), **(settings | overrides),
    )
    # forkserver: one torch import for the whole module instead of one per worker (the default, spawn, is
    # exercised by the worker and integration tests).
    worker = WorkerProcess(runner_factory=functools.partial(summax_factory, delay_s=delay_s), start_method="forkserver")
    return Agent(config, bus, clock, client=fake, worker=worker)


@contextmanager
def running(agent: Agent) -> Iterator[dict[str, AgentStats]]:
    stop = threading.Event()
    out: dict[str, AgentStats] = {}
    thread = threading.Thread(target=lambda: out.update(stats=agent.run(stop)), daemon=True)
    thread.start()
    try:
        yield out
        if agent.config.max_units is not None:
            thread.join(60)  # the run ends by itself once its units are done
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive(), "the agent did not stop"


def items(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)


def test_no_lease_while_ineligible_then_one_unit_once_parked(tmp_path, clock):
    fake = FakeCoordinator()
    x = items(10)
    fake.add_unit(x)
    bus = make_bus(clock, drive=DriveState.DRIVING)
    agent = make_agent(tmp_path, bus, clock, fake, max_units=1)
    with running(agent) as out:
        wait_for(lambda: len(fake.calls_named("heartbeat")) >= 3, what="heartbeats")
        assert fake.lease_requests == [], "an ineligible car asked for work"
        report = fake.calls_named("heartbeat")[-1]
        assert report.eligible is False and report.reasons == ["driving"] and report.drive == "driving"
        bus.set(drive=DriveState.PARKED)
    stats = out["stats"]
    assert all(request.state.eligible for request in fake.lease_requests)
    assert stats.units_done == 1 and stats.items_done == 10 and stats.preemptions == 0
    np.testing.assert_array_equal(fake.results[0], expected(x))
    (complete,) = fake.calls_named("complete")
    assert isinstance(complete, CompleteRequest) and complete.wifi_bytes > 0 and complete.cellular_bytes == 0
    saved = json.loads((tmp_path / "car" / "stats.json").read_text())
    assert saved["units_done"] == 1
    enrollment = tmp_path / "car" / "enrollment.json"
    assert stat.S_IMODE(enrollment.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "car" / "dataplan.json").stat().st_mode) == 0o600
    assert json.loads(enrollment.read_text())["credential"] == "cred-1"
    assert list((tmp_path / "car" / "work").iterdir()) == [], "the unit's files were cleaned up"


def test_a_saved_credential_is_reused_and_no_token_without_one_is_refused(tmp_path, clock):
    fake = FakeCoordinator()
    fake.add_unit(items(4))
    bus = make_bus(clock)
    with running(make_agent(tmp_path, bus, clock, fake, max_units=1)):
        pass
    second = FakeCoordinator()
    second.add_unit(items(4))
    agent = make_agent(tmp_path, bus, clock, second, max_units=1)
    agent.config.enrollment_token = None
    assert agent.run(threading.Event()).units_done == 1
    assert second.calls_named("enroll") == [] and second.credential == "cred-1"
    fresh = make_agent(tmp_path / "other", bus, clock, FakeCoordinator())
    fresh.config.enrollment_token = None
    with pytest.raises(errors.AuthError, match="no enrollment token"):
        fresh.run(threading.Event())


def test_preemption_stops_the_worker_hands_back_the_checkpoint_and_the_unit_resumes(tmp_path, clock):
    fake = FakeCoordinator()
    x = items(40)
    fake.add_unit(x, batch_size=2)
    bus = make_bus(clock)
    agent = make_agent(tmp_path, bus, clock, fake, delay_s=0.03, max_units=1)
    checkpoint = tmp_path / "car" / "work" / "lease-0" / "checkpoint.npy"
    with running(agent) as out:
        wait_for(lambda: checkpoint.exists() and len(np.load(checkpoint)) >= 6, what="six rows checkpointed")
        bus.set(drive=DriveState.DRIVING)
        wait_for(lambda: fake.calls_named("fail"), what="the handback")
        (handback,) = fake.calls_named("fail")
        assert isinstance(handback, FailRequest) and handback.handback and handback.reason == "preempted: driving"
        saved = np.load(io.BytesIO(fake.artifacts[handback.checkpoint]))
        assert len(saved) == handback.done_items >= 6 and handback.done_items < 40
        np.testing.assert_array_equal(saved, expected(x)[: handback.done_items])
        time.sleep(0.1)
        assert len(fake.calls_named("grant")) == 1, "no new lease while driving"
        assert agent.worker.pid is None, "the worker process is gone"
        bus.set(drive=DriveState.PARKED)
    stats = out["stats"]
    grants = fake.calls_named("grant")
    assert len(grants) == 2 and isinstance(grants[1], LeaseGrant)
    assert grants[1].checkpoint is not None and grants[1].checkpoint.done_items == handback.done_items
    np.testing.assert_array_equal(fake.results[0], expected(x))
    assert stats.preemptions == 1 and stats.units_done == 1 and stats.items_resumed == handback.done_items
    (latency,) = stats.preemption_latencies_ms
    print(f"preemption latency (bus read to worker gone): {latency:.1f} ms")
    assert math.isfinite(latency) and latency > 0, "the preemption's latency was recorded"


def test_a_transfer_over_the_cellular_cap_waits_for_wifi(tmp_path, clock):
    fake = FakeCoordinator(renew_every_s=0.05)
    x = items(64)
    fake.add_unit(x)
    bus = make_bus(clock, network=Network.CELLULAR)
    policy = OwnerPolicy(monthly_cellular_cap_bytes=500)  # smaller than the input shard
    agent = make_agent(tmp_path, bus, clock, fake, policy=policy, max_units=1, progress_interval_s=60.0)
    with running(agent) as out:
        wait_for(lambda: agent.stats.wifi_waits == 1, what="the wait for Wi-Fi")
        time.sleep(0.1)
        assert fake.downloads == {} and agent.plan.cellular_used == 0
        assert fake.calls_named("renew"), "the lease is kept alive while the transfer waits"
        bus.set(network=Network.WIFI)
    stats = out["stats"]
    assert stats.units_done == 1 and stats.cellular_bytes == 0
    (complete,) = fake.calls_named("complete")
    shard = fake.calls_named("grant")[0].input.size
    assert complete.inline is not None  # a small result rides inside the completion, base64
    assert complete.wifi_bytes == stats.wifi_bytes == shard + len(complete.inline)
    saved = json.loads((tmp_path / "car" / "dataplan.json").read_text())
    assert saved["cellular_used"] == 0 and saved["wifi_bytes_total"] == stats.wifi_bytes


def test_cellular_within_the_cap_is_charged_to_the_plan(tmp_path, clock):
    fake = FakeCoordinator()
    fake.add_unit(items(8))
    bus = make_bus(clock, network=Network.CELLULAR)
    agent = make_agent(tmp_path, bus, clock, fake, max_units=1)
    stats = agent.run(threading.Event())
    (complete,) = fake.calls_named("complete")
    assert stats.wifi_waits == 0 and stats.wifi_bytes == 0
    assert complete.cellular_bytes == stats.cellular_bytes == agent.plan.cellular_used > 0
    assert json.loads((tmp_path / "car" / "dataplan.json").read_text())["cellular_used"] == stats.cellular_bytes


def test_a_model_file_is_downloaded_once_and_then_served_from_the_cache(tmp_path, clock):
    fake = FakeCoordinator()
    model = b"\x00model-bytes" * 500
    for seed in range(2):
        fake.add_unit(items(6, seed), model_file=model)
    agent = make_agent(tmp_path, make_bus(clock), clock, fake, max_units=2)
    stats = agent.run(threading.Event())
    digest = fake.calls_named("grant")[0].model.file.digest
    assert stats.units_done == 2 and fake.downloads[digest] == 1
    assert stats.model_downloads == 1 and stats.model_cache_hits == 1
    assert (tmp_path / "car" / "models" / digest).read_bytes() == model


def test_a_unit_the_worker_rejects_is_failed_not_handed_back(tmp_path, clock):
    fake = FakeCoordinator()
    fake.add_unit(items(5))
    fake.units[0]["items"] = 9  # the lease promises more items than the shard holds
    fake.add_unit(items(5, 1))
    agent = make_agent(tmp_path, make_bus(clock), clock, fake, max_units=1)
    stats = agent.run(threading.Event())
    (fail,) = fake.calls_named("fail")
    assert fail.handback is False and "holds 5 items; the lease says 9" in fail.reason
    assert stats.unit_failures == 1 and stats.units_done == 1 and stats.preemptions == 0


def test_a_lease_the_coordinator_dropped_stops_the_worker_without_a_handback(tmp_path, clock):
    fake = FakeCoordinator(renew_every_s=0.05)
    fake.add_unit(items(40), batch_size=2)
    agent = make_agent(tmp_path, make_bus(clock), clock, fake, delay_s=0.05)
    checkpoint = tmp_path / "car" / "work" / "lease-0" / "checkpoint.npy"
    with running(agent) as out:
        wait_for(checkpoint.exists, what="a first checkpoint")
        fake.leases.clear()  # the coordinator expired and reissued it: renew now answers 404
        wait_for(lambda: agent.stats.leases_lost == 1, what="the lost lease")
        wait_for(lambda: agent.worker.pid is None, what="the worker gone")
    stats = out["stats"]
    assert fake.calls_named("fail") == [] and fake.calls_named("complete") == []
    assert stats.preemptions == 0 and stats.preemption_latencies_ms == [] and stats.units_done == 0
