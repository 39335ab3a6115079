"""The agent's loop against the real coordinator app in this process (its lease clock moved by hand) and a
hand-driven vehicle bus, with a real worker process running a fake model."""

from __future__ import annotations

import functools
import io
import json
import math
import stat
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_models import expected, sha, summax_factory
from harness import ENROLL
from in_process import LiveCoordinator, in_process
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetgrid import errors
from fleetgrid.agent.config import AgentConfig
from fleetgrid.agent.runtime import Agent
from fleetgrid.agent.statedir import AgentStats
from fleetgrid.agent.worker import WorkerProcess
from fleetgrid.clock import ManualClock
from fleetgrid.protocol import CompleteRequest, EnrollResponse, FailRequest, LeaseRequest, StateReport
from fleetgrid.vehicle.bus import ManualVehicleBus
from fleetgrid.vehicle.policy import OwnerPolicy
from fleetgrid.vehicle.state import DriveState, Network, VehicleState

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000.0  # a Tuesday, 22:13 UTC: inside the default all-day hours
RENEW_EVERY_S = 0.05
"""``lease_ttl_s`` of the coordinators whose leases tests watch being renewed is three times this."""


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def live(tmp_path) -> Iterator[LiveCoordinator]:
    with in_process(tmp_path / "coordinator") as coordinator:
        yield coordinator


def make_bus(clock: ManualClock, **state) -> ManualVehicleBus:
    values = {"drive": DriveState.PARKED, "soc": 0.8, "network": Network.WIFI, "plugged_in": False, "at": T0}
    return ManualVehicleBus(VehicleState(**(values | state)), clock)


def make_agent(tmp_path, bus, clock, live: LiveCoordinator, *, delay_s=0.0, policy=None, **overrides) -> Agent:
    settings = {"heartbeat_interval_s": 0.05, "poll_interval_s": 0.02, "lease_wait_s": 0.0, "progress_interval_s": 0.05}
    config = AgentConfig(
        coordinator=live.url, state_dir=tmp_path / "car", enrollment_token=ENROLL, policy=policy or OwnerPolicy(),
        **(settings | overrides),
    )
    # forkserver: one torch import for the whole module instead of one per worker (the default, spawn, is
    # exercised by the worker and integration tests).
    worker = WorkerProcess(runner_factory=functools.partial(summax_factory, delay_s=delay_s), start_method="forkserver")
    return Agent(config, bus, clock, client=live.car(), worker=worker)


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


def submit(live: LiveCoordinator, x: np.ndarray, *, batch_size: int = 4, **options) -> str:
    """A tenant's job of the fake model over ``x``, one unit unless ``unit_items`` says otherwise."""
    with live.tenant() as tenant:
        return tenant.submit("fake-summax", x, batch_size=batch_size, **({"unit_items": len(x)} | options)).job_id


def result(live: LiveCoordinator, job_id: str) -> np.ndarray:
    with live.tenant() as tenant:
        status = tenant.job(job_id)
        assert status.state == "done", status
        return tenant.result(job_id)


def checkpointed_rows(work: Path) -> int:
    """Rows in the checkpoint of the unit in ``work``; 0 before the first one (or once the unit is gone)."""
    for path in work.glob("*/checkpoint.npy"):
        try:
            return len(np.load(path))
        except OSError:
            return 0
    return 0


def test_no_lease_while_ineligible_then_one_unit_once_parked(tmp_path, clock, live):
    x = items(10)
    job = submit(live, x)
    bus = make_bus(clock, drive=DriveState.DRIVING)
    agent = make_agent(tmp_path, bus, clock, live, max_units=1)
    with running(agent) as out:
        wait_for(lambda: len(live.tap.calls("POST /v1/vehicles/heartbeat")) >= 3 or live.tap.calls("POST /v1/leases"),
                 what="heartbeats")
        assert live.tap.calls("POST /v1/leases") == [], "an ineligible car asked for work"
        report = live.tap.calls("POST /v1/vehicles/heartbeat")[-1].sent(StateReport)
        assert report.eligible is False and report.reasons == ["driving"] and report.drive == "driving"
        bus.set(drive=DriveState.PARKED)
    stats = out["stats"]
    assert all(e.sent(LeaseRequest).state.eligible for e in live.tap.calls("POST /v1/leases"))
    assert stats.units_done == 1 and stats.items_done == 10 and stats.preemptions == 0
    np.testing.assert_array_equal(result(live, job), expected(x))
    (complete,) = [e.sent(CompleteRequest) for e in live.tap.calls("POST /v1/leases/*/complete")]
    assert complete.wifi_bytes > 0 and complete.cellular_bytes == 0
    saved = json.loads((tmp_path / "car" / "stats.json").read_text())
    assert saved["units_done"] == 1
    enrollment = tmp_path / "car" / "enrollment.json"
    assert stat.S_IMODE(enrollment.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "car" / "dataplan.json").stat().st_mode) == 0o600
    (enrolled,) = [e.got(EnrollResponse) for e in live.tap.calls("POST /v1/vehicles/enroll")]
    assert json.loads(enrollment.read_text())["credential"] == enrolled.credential
    assert list((tmp_path / "car" / "work").iterdir()) == [], "the unit's files were cleaned up"


def test_a_saved_credential_is_reused_and_no_token_without_one_is_refused(tmp_path, clock, live):
    bus = make_bus(clock)
    submit(live, items(4))
    with running(make_agent(tmp_path, bus, clock, live, max_units=1)):
        pass
    (enrolled,) = [e.got(EnrollResponse) for e in live.tap.calls("POST /v1/vehicles/enroll")]
    second = submit(live, items(4, 1))
    agent = make_agent(tmp_path, bus, clock, live, max_units=1)
    agent.config.enrollment_token = None
    assert agent.run(threading.Event()).units_done == 1
    assert len(live.tap.calls("POST /v1/vehicles/enroll")) == 1 and agent.client.credential == enrolled.credential
    np.testing.assert_array_equal(result(live, second), expected(items(4, 1)))  # the coordinator took the credential
    fresh = make_agent(tmp_path / "other", bus, clock, live)
    fresh.config.enrollment_token = None
    with pytest.raises(errors.AuthError, match="no enrollment token"):
        fresh.run(threading.Event())


def test_preemption_stops_the_worker_hands_back_the_checkpoint_and_the_unit_resumes(tmp_path, clock, live):
    x = items(40)
    job = submit(live, x, batch_size=2)
    bus = make_bus(clock)
    agent = make_agent(tmp_path, bus, clock, live, delay_s=0.03, max_units=1)
    with running(agent) as out:
        wait_for(lambda: checkpointed_rows(tmp_path / "car" / "work") >= 6, what="six rows checkpointed")
        asked = len(live.tap.calls("POST /v1/leases"))
        bus.set(drive=DriveState.DRIVING)
        wait_for(lambda: live.tap.calls("POST /v1/leases/*/fail"), what="the handback")
        (handback,) = [e.sent(FailRequest) for e in live.tap.calls("POST /v1/leases/*/fail")]
        assert handback.handback and handback.reason == "preempted: driving" and handback.checkpoint is not None
        saved = np.load(io.BytesIO(live.coordinator.artifacts.read_bytes(handback.checkpoint)))
        assert len(saved) == handback.done_items >= 6 and handback.done_items < 40
        np.testing.assert_array_equal(saved, expected(x)[: handback.done_items])
        heartbeats = len(live.tap.calls("POST /v1/vehicles/heartbeat"))
        wait_for(lambda: len(live.tap.calls("POST /v1/vehicles/heartbeat")) >= heartbeats + 3
                 or len(live.tap.calls("POST /v1/leases")) > asked, what="heartbeats while driving")
        assert len(live.tap.calls("POST /v1/leases")) == asked, "a lease was asked for while driving"
        assert agent.worker.pid is None, "the worker process is gone"
        bus.set(drive=DriveState.PARKED)
    stats = out["stats"]
    grants = live.tap.grants()
    assert len(grants) == 2
    assert grants[1].checkpoint is not None and grants[1].checkpoint.done_items == handback.done_items
    np.testing.assert_array_equal(result(live, job), expected(x))
    assert stats.preemptions == 1 and stats.units_done == 1 and stats.items_resumed == handback.done_items
    (latency,) = stats.preemption_latencies_ms
    print(f"preemption latency (bus read to worker gone): {latency:.1f} ms")
    assert math.isfinite(latency) and latency > 0, "the preemption's latency was recorded"


def test_a_transfer_over_the_cellular_cap_waits_for_wifi(tmp_path, clock):
    with in_process(tmp_path / "coordinator", lease_ttl_s=3 * RENEW_EVERY_S) as live:
        submit(live, items(64))
        bus = make_bus(clock, network=Network.CELLULAR)
        policy = OwnerPolicy(monthly_cellular_cap_bytes=500)  # smaller than the input shard
        agent = make_agent(tmp_path, bus, clock, live, policy=policy, max_units=1, progress_interval_s=60.0)
        with running(agent) as out:
            wait_for(lambda: agent.stats.wifi_waits == 1, what="the wait for Wi-Fi")
            renewed = len(live.tap.calls("POST /v1/leases/*/renew"))
            wait_for(lambda: len(live.tap.calls("POST /v1/leases/*/renew")) >= renewed + 2,
                     what="the lease kept alive while the transfer waits")
            assert live.tap.calls("GET /v1/artifacts/*") == [] and agent.plan.cellular_used == 0
            bus.set(network=Network.WIFI)
        stats = out["stats"]
        assert stats.units_done == 1 and stats.cellular_bytes == 0
        (complete,) = [e.sent(CompleteRequest) for e in live.tap.calls("POST /v1/leases/*/complete")]
        shard = live.tap.grants()[0].input.size
        assert complete.inline is not None  # a small result rides inside the completion, base64
        assert complete.wifi_bytes == stats.wifi_bytes == shard + len(complete.inline)
        saved = json.loads((tmp_path / "car" / "dataplan.json").read_text())
        assert saved["cellular_used"] == 0 and saved["wifi_bytes_total"] == stats.wifi_bytes


def test_cellular_within_the_cap_is_charged_to_the_plan(tmp_path, clock, live):
    submit(live, items(8))
    bus = make_bus(clock, network=Network.CELLULAR)
    agent = make_agent(tmp_path, bus, clock, live, max_units=1)
    stats = agent.run(threading.Event())
    (complete,) = [e.sent(CompleteRequest) for e in live.tap.calls("POST /v1/leases/*/complete")]
    assert stats.wifi_waits == 0 and stats.wifi_bytes == 0
    assert complete.cellular_bytes == stats.cellular_bytes == agent.plan.cellular_used > 0
    assert json.loads((tmp_path / "car" / "dataplan.json").read_text())["cellular_used"] == stats.cellular_bytes


class SumMaxModule(torch.nn.Module):
    """The fake model as a TorchScript file a tenant uploads: the coordinator's trial run learns its output shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.sum(dim=1), x.max(dim=1).values], dim=1)  # (B, 2)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("model") / "summax.pt"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)
        torch.jit.script(SumMaxModule()).save(str(path))
    return path.read_bytes()


def test_a_model_file_is_downloaded_once_and_then_served_from_the_cache(tmp_path, clock, live, model_file):
    x = items(12)
    with live.tenant() as tenant:
        job = tenant.submit("torchscript", x, model_file=model_file, unit_items=6, batch_size=4).job_id
    agent = make_agent(tmp_path, make_bus(clock), clock, live, max_units=2)
    stats = agent.run(threading.Event())
    digest = live.tap.grants()[0].model.file.digest
    assert digest == sha(model_file) and len(live.tap.grants()) == 2
    assert stats.units_done == 2 and len(live.tap.calls(f"GET /v1/artifacts/{digest}")) == 1
    assert stats.model_downloads == 1 and stats.model_cache_hits == 1
    assert (tmp_path / "car" / "models" / digest).read_bytes() == model_file
    np.testing.assert_array_equal(result(live, job), expected(x))


def promising_items_once(count: int) -> Callable[[ASGIApp], ASGIApp]:
    """A coordinator whose first lease grant says the unit holds ``count`` items, whatever its shard holds."""

    def wrap(app: ASGIApp) -> ASGIApp:
        rewritten = False

        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["path"] != "/v1/leases" or rewritten:
                await app(scope, receive, send)
                return
            held: list[Message] = []

            async def rewrite(message: Message) -> None:
                nonlocal rewritten
                held.append(message)
                if message["type"] != "http.response.body" or message.get("more_body", False):
                    return
                start, body = held[0], b"".join(m.get("body", b"") for m in held[1:])
                if start["status"] == 200 and not rewritten:
                    rewritten = True
                    body = json.dumps(json.loads(body) | {"items": count}).encode()
                headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                await send(start | {"headers": [*headers, (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})

            await app(scope, receive, rewrite)

        return middleware

    return wrap


def test_a_unit_the_worker_rejects_is_failed_not_handed_back(tmp_path, clock):
    with in_process(tmp_path / "coordinator", wrap=promising_items_once(9)) as live:
        x = items(5)
        job = submit(live, x)
        agent = make_agent(tmp_path, make_bus(clock), clock, live, max_units=1)
        stats = agent.run(threading.Event())
        (fail,) = [e.sent(FailRequest) for e in live.tap.calls("POST /v1/leases/*/fail")]
        assert fail.handback is False and "holds 5 items; the lease says 9" in fail.reason
        assert stats.unit_failures == 1 and stats.units_done == 1 and stats.preemptions == 0
        # The coordinator issued the failed unit again, as it was this time, and the agent moved on to it.
        assert [grant.items for grant in live.tap.grants()] == [9, 5]
        np.testing.assert_array_equal(result(live, job), expected(x))


def test_a_lease_the_coordinator_dropped_stops_the_worker_without_a_handback(tmp_path, clock):
    with in_process(tmp_path / "coordinator", lease_ttl_s=3 * RENEW_EVERY_S) as live:
        submit(live, items(40), batch_size=2)
        agent = make_agent(tmp_path, make_bus(clock), clock, live, delay_s=0.05)
        with running(agent) as out:
            wait_for(lambda: checkpointed_rows(tmp_path / "car" / "work") > 0, what="a first checkpoint")
            (lost,) = live.tap.grants()
            pid = agent.worker.pid
            live.clock.advance(1.0)  # past the lease's deadline: it expires, and its unit is issued again
            wait_for(lambda: agent.stats.leases_lost == 1, what="the lost lease")
            assert pid is not None and not Path(f"/proc/{pid}").exists(), "the worker running it was stopped"
        stats = out["stats"]
        reported = [e.path for e in live.tap.calls(f"POST /v1/leases/{lost.lease_id}/*")]
        assert not [path for path in reported if path.endswith(("/fail", "/complete"))], reported
        assert stats.preemptions == 0 and stats.preemption_latencies_ms == []
