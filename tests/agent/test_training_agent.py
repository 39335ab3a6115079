"""The agent's training path: the worker's TrainTask, the training report call, and whole training leases with a
real worker process training MNIST-1D (the global's bytes and the updates are artifacts, fetched and uploaded like any
workload's).

Unlike the inference tests, the report call and the whole leases here still run against a fake coordinator
(httpx.MockTransport, FakeTrainingCoordinator): each test dictates the rounds the car is granted (the same version
twice, a delta that is gone, a round that closes first), which the real training service does not let a test
choose."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from test_agent_runtime import make_bus, running, wait_for

from fleetgrid import errors
from fleetgrid.agent.config import AgentConfig
from fleetgrid.agent.runtime import Agent
from fleetgrid.agent.transport import CoordinatorClient
from fleetgrid.agent.worker import WorkerProcess
from fleetgrid.clock import ManualClock
from fleetgrid.protocol import (
    ArtifactRef,
    CompactSnapshot,
    EnrollRequest,
    EnrollResponse,
    FailRequest,
    HeartbeatResponse,
    LeaseAck,
    LeaseRequest,
    ModelDelta,
    StateReport,
    TrainGrant,
    UpdateReport,
)
from fleetgrid.vehicle.state import DriveState, Network
from fleetgrid.workloads.federated.task import TrainTask, load_train_state
from fleetgrid.workloads.training import (
    CompressionConfig,
    FlatLayout,
    build_model,
    decode,
    encode,
    params_digest,
)

pytestmark = pytest.mark.timeout(120)

T0 = 1_700_000_000.0
MODEL = "mnist1d-cnn"
DATA = {"dataset": "mnist1d", "num_vehicles": 2, "num_samples": 500, "seed": 0}
STATE = StateReport(drive="parked", soc=0.8, network="wifi", plugged_in=True, eligible=True)


def initial_params() -> torch.Tensor:
    model = build_model(MODEL, seed=0)
    return FlatLayout.of(model).flatten(model)  # (P,)


def local(steps: int, **extra) -> dict:
    return {"steps": steps, "batch_size": 16, "lr": 0.05} | extra


# --- the worker ------------------------------------------------------------------------------------------------


def train_task(tmp: Path, global_params: torch.Tensor, *, steps: int, shard: int = 0) -> TrainTask:
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / "global.npy", global_params.numpy())
    return TrainTask(
        model_name=MODEL, global_path=tmp / "global.npy", model_digest=params_digest(global_params), data=DATA,
        shard=shard, local=local(steps), seed=3, round=0, base_version=0, checkpoint_path=tmp / "checkpoint.npz",
        result_path=tmp / "result.npz",
    )


def test_a_train_task_trains_in_the_worker_and_a_bad_data_spec_is_refused(tmp_path):
    g = initial_params()
    worker = WorkerProcess(threads=1)
    seen: list[int] = []
    try:
        worker.run(train_task(tmp_path / "a", g, steps=20), seen.append)
        with pytest.raises(errors.InvalidInput, match=r"vehicle_index must be in \[0, 2\)"):
            worker.run(train_task(tmp_path / "b", g, steps=20, shard=7))
        worker.run(train_task(tmp_path / "c", g, steps=3))  # the child keeps serving after a refused task
    finally:
        worker.close()
    result = load_train_state(tmp_path / "a" / "result.npz")
    assert result is not None and result.steps_done == 20 and result.examples_seen == 20 * 16
    assert seen and seen[-1] <= 20 and seen == sorted(seen)
    assert result.params.shape == g.shape and np.isfinite(result.params).all()
    assert not np.array_equal(result.params, g.numpy()) and 0 < result.loss_sum / 20 < 10
    assert 0 < result.num_examples < 400
    assert load_train_state(tmp_path / "c" / "result.npz").steps_done == 3


def test_a_sigkilled_train_task_leaves_a_whole_checkpoint(tmp_path):
    g = initial_params()
    task = train_task(tmp_path, g, steps=5000)
    worker = WorkerProcess(threads=1)
    seen: list[int] = []
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(task, seen.append)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(lambda: len(seen) >= 3, what="three checkpoints")
        assert worker.stop()
        thread.join(10)
    finally:
        worker.close()
    assert isinstance(outcome[0], errors.Preempted)
    state = load_train_state(task.checkpoint_path)
    assert state is not None and seen[-1] <= state.steps_done < 5000
    assert np.isfinite(state.params).all() and not np.array_equal(state.params, g.numpy())
    assert not task.result_path.exists()


# --- the client ------------------------------------------------------------------------------------------------


def grant(lease_id: str = "t-1", *, round: int = 0, base_version: int = 0, digest: str = "0" * 64, steps: int = 5,
          data: dict | None = None, shard: int = 0, renew_every_s: float = 5.0,
          snapshot: ArtifactRef | None = None, deltas: list[ModelDelta] | None = None,
          compact: CompactSnapshot | None = None, **local_extra) -> TrainGrant:
    return TrainGrant(
        lease_id=lease_id, job_id="job-t", round=round, base_version=base_version, model_digest=digest,
        snapshot=snapshot or ArtifactRef(digest="e" * 64, size=100), deltas=deltas or [], compact=compact,
        model=MODEL,
        local=local(steps, **local_extra), seed=11, data=data or DATA, shard=shard, deadline=time.time() + 60,
        renew_every_s=renew_every_s,
    )


def test_the_client_reports_a_training_update_as_json():
    seen: list[httpx.Request] = []
    offered = grant()

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/leases":
            return httpx.Response(200, content=offered.model_dump_json())
        if request.url.path == "/v1/train/leases/t-1/update":
            return httpx.Response(200, json={"lease_id": "t-1", "state": "completed", "next_lease": json.loads(
                offered.model_copy(update={"lease_id": "t-2"}).model_dump_json())})
        return httpx.Response(409, json={"error": "conflict", "message": "round 0 is closed"})

    report = UpdateReport(update="f" * 64, round=0, base_version=3, num_examples=10, steps_done=2, steps_planned=5,
                          examples_seen=32)
    with CoordinatorClient("http://c.test", "cred-1", transport=httpx.MockTransport(handler)) as client:
        assert client.request_lease(LeaseRequest(state=STATE)) == offered
        ack = client.train_update("t-1", report)
        with pytest.raises(errors.Conflict, match="round 0 is closed"):
            client.train_update("t-9", report)
    assert isinstance(ack, LeaseAck) and isinstance(ack.next_lease, TrainGrant) and ack.next_lease.lease_id == "t-2"
    _, update, _ = seen
    assert update.headers["authorization"] == "Bearer cred-1"
    assert update.headers["content-type"] == "application/json"
    assert UpdateReport.model_validate_json(update.content) == report  # the report names the update; no bytes of it


# --- whole leases against an in-memory coordinator -------------------------------------------------------------


@dataclass
class Round:
    base_version: int
    steps: int = 5
    refuse: bool = False  # answer the update 409: the round closed first
    data: dict = field(default_factory=lambda: DATA)


@dataclass
class FakeTrainingCoordinator:
    """The vehicle API of a coordinator running one training job, in memory, shaped like :class:`CoordinatorClient`:
    hands out ``rounds`` in order, publishes each global version as a snapshot artifact and the float32 delta from
    the version before, and records the updates the car uploads and reports."""

    rounds: list[Round] = field(default_factory=list)
    credential: str | None = None
    calls: list[tuple[str, object]] = field(default_factory=list)
    lease_requests: list[LeaseRequest] = field(default_factory=list)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    downloads: dict[str, int] = field(default_factory=dict)  # digest -> times fetched
    versions: list[torch.Tensor] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)  # version -> digest of its snapshot artifact
    deltas: list[str] = field(default_factory=list)  # version v - 1 -> digest of the delta from v - 1 to v
    train_leases: dict[str, Round] = field(default_factory=dict)
    updates: list[tuple[UpdateReport, bytes]] = field(default_factory=list)  # (report, the update it names)
    gone: set[str] = field(default_factory=set)  # artifacts a grant names that are no longer served (404)
    compact: bool = False  # also publish each version's int8 compact snapshot and offer it in the grants
    compacts: list[str] = field(default_factory=list)  # version -> digest of its compact snapshot artifact
    renew_every_s: float = 0.05
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        # Each version is the last plus a decoded delta, computed as the car applies it, so digests match exactly.
        self.versions = [initial_params()]
        for seed in range(3):
            step = torch.from_numpy(np.random.default_rng(seed).normal(0, 1e-3, self.versions[0].shape).astype("f4"))
            delta = encode(step.numpy(), CompressionConfig(bits=8))  # a quarter of a snapshot: deltas are worth it
            self.deltas.append(self.put(delta))
            self.versions.append(self.versions[-1] + torch.from_numpy(decode(delta)))
        self.snapshots = [self.put(encode(v.numpy(), CompressionConfig())) for v in self.versions]
        if self.compact:
            self.compacts = [self.put(encode(v.numpy(), CompressionConfig(bits=8, chunk_size=256)))
                             for v in self.versions]

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.artifacts[digest] = data
        return digest

    def ref(self, digest: str) -> ArtifactRef:
        return ArtifactRef(digest=digest, size=len(self.artifacts[digest]))

    def compact_ref(self, version: int) -> CompactSnapshot:
        digest = self.compacts[version]
        decoded = torch.from_numpy(decode(self.artifacts[digest]).copy())
        return CompactSnapshot(digest=digest, size=len(self.artifacts[digest]), params_digest=params_digest(decoded))

    def calls_named(self, name: str) -> list[object]:
        return [body for called, body in self.calls if called == name]

    def _auth(self) -> None:
        if self.credential != "cred-1":
            raise errors.AuthError(f"credential {self.credential!r} refused")

    def enroll(self, request: EnrollRequest) -> EnrollResponse:
        self.calls.append(("enroll", request))
        if request.enrollment_token != "good-token":
            raise errors.AuthError("enrollment token refused")
        return EnrollResponse(vehicle_id="v-1", credential="cred-1")

    def heartbeat(self, report: StateReport) -> HeartbeatResponse:
        self._auth()
        self.calls.append(("heartbeat", report))
        return HeartbeatResponse(server_time=time.time(), active_leases=list(self.train_leases))

    def close(self) -> None:
        pass

    def request_lease(self, request: LeaseRequest) -> TrainGrant | None:
        self._auth()
        with self._lock:
            self.lease_requests.append(request)
            if not self.rounds or self.train_leases:
                return None
            spec = self.rounds.pop(0)
            lease_id = f"lease-{len(self.calls_named('grant'))}"
            self.train_leases[lease_id] = spec
            version = spec.base_version
            offered = grant(
                lease_id, round=len(self.calls_named("grant")), base_version=version,
                digest=params_digest(self.versions[version]), steps=spec.steps, data=spec.data,
                renew_every_s=self.renew_every_s, compression={"bits": 8},
                snapshot=self.ref(self.snapshots[version]),
                deltas=[ModelDelta(version=v + 1, **self.ref(self.deltas[v]).model_dump(include={"digest", "size"}))
                        for v in range(version)],
                compact=self.compact_ref(version) if self.compact else None,
            )
            self.calls.append(("grant", offered))
            return offered

    def train_update(self, lease_id: str, report: UpdateReport) -> LeaseAck:
        self._auth()
        self.updates.append((report, self.artifacts[report.update]))
        with self._lock:
            spec = self.train_leases.pop(lease_id)
        if spec.refuse:
            raise errors.Conflict(f"round {report.round} is closed; the update was not used")
        follow_on = self.request_lease(report.next) if report.next is not None else None
        return LeaseAck(lease_id=lease_id, state="completed", next_lease=follow_on)

    def renew(self, lease_id: str) -> LeaseAck:
        if lease_id not in self.train_leases:
            raise errors.NotFound(f"lease {lease_id} is not open")
        self.calls.append(("renew", lease_id))
        return LeaseAck(lease_id=lease_id, state="active", deadline=time.time() + 60)

    def fail(self, lease_id: str, request: FailRequest) -> LeaseAck:
        self.calls.append(("fail", request))
        with self._lock:
            self.train_leases.pop(lease_id)
        return LeaseAck(lease_id=lease_id, state="handed_back" if request.handback else "failed")

    def upload(self, data: bytes) -> str:
        self._auth()
        return self.put(data)

    def artifact_size(self, digest: str) -> int:
        return len(self.artifacts[digest])

    def download(self, digest: str, dest: Path, *, on_bytes=None) -> int:
        self._auth()
        if digest in self.gone:
            raise errors.NotFound(f"artifact {digest} does not exist or is not yours to read")
        dest = Path(dest)
        if dest.exists():
            return 0
        data = self.artifacts[digest]
        self.downloads[digest] = self.downloads.get(digest, 0) + 1
        for i in range(0, len(data), 4096):
            if on_bytes is not None:
                on_bytes(len(data[i : i + 4096]))
        dest.write_bytes(data)
        return len(data)

    def uploads(self) -> list[bytes]:
        """What the car uploaded: every artifact that was not published here."""
        published = {*self.snapshots, *self.deltas, *self.compacts}
        return [data for digest, data in self.artifacts.items() if digest not in published]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture(scope="module")
def worker():
    # One forkserver worker for the module: the server imports torch once, and each preempted worker restarts fast.
    process = WorkerProcess(threads=1, start_method="forkserver")
    yield process
    process.close()


def training_agent(tmp_path, bus, clock, fake, worker, **overrides) -> Agent:
    settings = {"heartbeat_interval_s": 0.05, "poll_interval_s": 0.02, "lease_wait_s": 0.0}
    config = AgentConfig(
        coordinator="http://coordinator.test", state_dir=tmp_path / "car", enrollment_token="good-token",
        **(settings | overrides),
    )
    return Agent(config, bus, clock, client=fake, worker=worker)


def test_a_car_fetches_a_global_once_then_dedups_by_digest_and_takes_deltas(tmp_path, clock, worker):
    fake = FakeTrainingCoordinator(rounds=[Round(0), Round(0), Round(2)])
    agent = training_agent(tmp_path, make_bus(clock), clock, fake, worker, max_units=3)
    stats = agent.run(threading.Event())
    assert stats.train_leases == stats.leases == 3 and stats.train_updates == 3 and stats.unit_failures == 0
    # Version 0 whole (its snapshot artifact); version 0 again from the car's own copy (same digest); version 2 as
    # the two delta artifacts after version 0, which weigh less than its snapshot.
    assert fake.downloads == {fake.snapshots[0]: 1, fake.deltas[0]: 1, fake.deltas[1]: 1}
    assert stats.model_downloads == 2 and stats.model_cache_hits == 1
    train_dir = tmp_path / "car" / "train" / "job-t"
    held = json.loads((train_dir / "global.json").read_text())
    assert held == {"version": 2, "digest": params_digest(fake.versions[2])}
    assert not (train_dir / "fetched").exists()  # the fetched artifacts go once the version is installed
    numel = fake.versions[0].numel()
    for (report, payload), offered in zip(fake.updates, fake.calls_named("grant"), strict=True):
        assert decode(payload).shape == (numel,) and np.isfinite(decode(payload)).all()
        assert (report.round, report.base_version) == (offered.round, offered.base_version)
        assert report.steps_done == report.steps_planned == 5 and not report.preempted
        assert report.examples_seen == 80 and report.num_examples > 0 and report.compute_s > 0
    # Only the first round was asked for on its own; the others came back with the previous report.
    assert len(fake.lease_requests) == 3 and [r.next is not None for r, _ in fake.updates] == [True, True, False]
    # The car uploaded its updates, each once, and nothing else.
    assert sorted(fake.uploads()) == sorted(payload for _, payload in fake.updates)
    # Every byte down and up was charged, to the plan and to its lease's report.
    down = sum(len(fake.artifacts[digest]) for digest in fake.downloads)
    up = sum(len(payload) for _, payload in fake.updates)
    assert stats.train_bytes_down == down and stats.train_bytes_up == up
    assert stats.wifi_bytes == agent.plan.to_json()["wifi_bytes_total"] == down + up
    first, first_update = fake.updates[0]
    assert first.wifi_bytes == len(fake.artifacts[fake.snapshots[0]]) + len(first_update) and first.cellular_bytes == 0
    residual = np.load(train_dir / "residual.npy")
    assert residual.shape == (numel,) and np.abs(residual).max() > 0, "8-bit updates leave a residual to carry"
    assert fake.calls_named("fail") == []


def test_a_delta_chain_that_misses_falls_back_to_the_snapshot(tmp_path, clock, worker):
    """A car holding version 0 is granted version 2 with a delta artifact the coordinator no longer has: it fetches
    the snapshot instead, and still lands on the grant's digest."""
    fake = FakeTrainingCoordinator(rounds=[Round(0), Round(2)], gone=set())
    fake.gone.add(fake.deltas[1])
    agent = training_agent(tmp_path, make_bus(clock), clock, fake, worker, max_units=2)
    stats = agent.run(threading.Event())
    assert stats.train_updates == 2 and stats.unit_failures == 0 and stats.model_downloads == 2
    assert fake.downloads == {fake.snapshots[0]: 1, fake.deltas[0]: 1, fake.snapshots[2]: 1}
    held = json.loads((tmp_path / "car" / "train" / "job-t" / "global.json").read_text())
    assert held == {"version": 2, "digest": params_digest(fake.versions[2])}


def test_a_car_installs_a_compact_snapshot_then_keeps_it_up_to_date_with_deltas(tmp_path, clock, worker):
    """With compact snapshots offered, a car holding nothing fetches version 0's (not the float32 one) and holds it
    approximately; granted version 0 again it fetches nothing; granted version 1 it applies the delta to its
    approximate copy (one int8 delta weighs less than the compact snapshot); granted version 3, two deltas behind,
    it fetches version 3's compact snapshot instead."""
    fake = FakeTrainingCoordinator(rounds=[Round(0), Round(0), Round(1)], compact=True)
    sizes = [len(fake.artifacts[d]) for d in (fake.deltas[0], fake.compacts[0], fake.snapshots[0])]
    assert sizes[0] < sizes[1] < sizes[2] / 3
    agent = training_agent(tmp_path, make_bus(clock), clock, fake, worker, max_units=3)
    stats = agent.run(threading.Event())
    assert stats.train_updates == 3 and stats.unit_failures == 0
    assert fake.downloads == {fake.compacts[0]: 1, fake.deltas[0]: 1}
    assert stats.model_downloads == 2 and stats.model_cache_hits == 1
    train_dir = tmp_path / "car" / "train" / "job-t"
    held = np.load(train_dir / "global.npy")
    expected = decode(fake.artifacts[fake.compacts[0]]) + decode(fake.artifacts[fake.deltas[0]])
    assert np.array_equal(held, expected) and not np.array_equal(held, fake.versions[1].numpy())
    record = json.loads((train_dir / "global.json").read_text())
    assert record == {"version": 1, "digest": params_digest(torch.from_numpy(expected)), "exact": False,
                      "model_digest": params_digest(fake.versions[1])}
    assert stats.train_bytes_down == len(fake.artifacts[fake.compacts[0]]) + len(fake.artifacts[fake.deltas[0]])

    fake.rounds = [Round(3)]  # the same car, two versions further on: two deltas outweigh the compact snapshot
    stats = training_agent(tmp_path, make_bus(clock), clock, fake, worker, max_units=1).run(threading.Event())
    assert stats.train_updates == 1 and stats.unit_failures == 0
    assert fake.downloads == {fake.compacts[0]: 1, fake.deltas[0]: 1, fake.compacts[3]: 1}
    record = json.loads((train_dir / "global.json").read_text())
    assert record["version"] == 3 and record["exact"] is False
    assert record["model_digest"] == params_digest(fake.versions[3])


def test_preemption_mid_training_sends_a_partial_update(tmp_path, clock, worker):
    fake = FakeTrainingCoordinator(rounds=[Round(0, steps=5000)])
    bus = make_bus(clock)
    agent = training_agent(tmp_path, bus, clock, fake, worker)
    checkpoint = tmp_path / "car" / "work" / "lease-0" / "checkpoint.npz"
    with running(agent) as out:
        wait_for(checkpoint.exists, what="a first training checkpoint")
        bus.set(drive=DriveState.DRIVING)
        wait_for(lambda: fake.updates, what="the partial update")
        assert agent.worker.pid is None, "the worker process is gone"
    stats = out["stats"]
    ((report, payload),) = fake.updates
    assert report.preempted and 0 < report.steps_done < report.steps_planned == 5000
    assert report.next is None and decode(payload).shape == (fake.versions[0].numel(),)
    assert stats.preemptions == 1 and stats.train_partial_updates == 1 and stats.train_updates == 0
    assert len(stats.preemption_latencies_ms) == 1 and fake.calls_named("fail") == []


def test_a_preempted_car_that_may_not_send_hands_the_lease_back(tmp_path, clock, worker):
    fake = FakeTrainingCoordinator(rounds=[Round(0, steps=5000)])
    bus = make_bus(clock)
    agent = training_agent(tmp_path, bus, clock, fake, worker)
    checkpoint = tmp_path / "car" / "work" / "lease-0" / "checkpoint.npz"
    with running(agent) as out:
        wait_for(checkpoint.exists, what="a first training checkpoint")
        bus.set(drive=DriveState.DRIVING, network=Network.OFFLINE)
        wait_for(lambda: fake.calls_named("fail"), what="the handback")
    (handback,) = fake.calls_named("fail")
    assert handback.handback and handback.reason == "preempted: driving; offline" and handback.wifi_bytes > 0
    assert fake.updates == [] and out["stats"].preemptions == 1


def test_a_refused_update_is_counted_and_the_agent_moves_on(tmp_path, clock, worker):
    fake = FakeTrainingCoordinator(rounds=[Round(0, refuse=True), Round(1)])
    agent = training_agent(tmp_path, make_bus(clock), clock, fake, worker, max_units=1)
    stats = agent.run(threading.Event())
    assert stats.updates_refused == 1 and stats.train_updates == 1 and len(fake.updates) == 2
    assert fake.calls_named("fail") == [] and stats.unit_failures == 0


def test_a_data_spec_the_car_cannot_build_fails_the_lease(tmp_path, clock, worker):
    fake = FakeTrainingCoordinator(rounds=[Round(0, data=DATA | {"dataset": "mnist3d"})])
    agent = training_agent(tmp_path, make_bus(clock), clock, fake, worker)
    with running(agent) as out:
        wait_for(lambda: fake.calls_named("fail"), what="the failed lease")
    (failed,) = fake.calls_named("fail")
    assert not failed.handback and "unknown dataset 'mnist3d'" in failed.reason
    assert out["stats"].unit_failures == 1 and fake.updates == []
