"""A hostile car among real agent processes, on a real coordinator process. It speaks the vehicle API itself
(enroll, lease, upload the update artifact, report it) and sends, in turn: a huge update claiming absurd example
counts, a huge one claiming its shard's size, then scaled, sign-flipped ones. The job finishes and its global stays
finite: each absurd claim is refused with a 4xx naming the limit, each huge or scaled update is clipped."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load

from fleetgrid import errors
from fleetgrid.agent.transport import CoordinatorClient
from fleetgrid.protocol import EnrollRequest, LeaseRequest, StateReport, TrainGrant, UpdateReport
from fleetgrid.workloads.training import (
    CompressionConfig,
    DataSpec,
    LocalTrainingConfig,
    TrainInstructions,
    build_local_dataset,
    build_model,
    config_from_dict,
    decode,
    encode,
    train_locally,
)

pytestmark = pytest.mark.timeout(300)

DATA = {"dataset": "mnist1d", "num_vehicles": 3, "alpha": 1.0, "num_samples": 800, "seed": 3}
SETTINGS = {"local": {"steps": 10, "batch_size": 32, "lr": 0.05, "momentum": 0.9},
            "rounds": {"clients_per_round": 3, "over_selection": 1.0, "min_reports": 1, "deadline_s": 120}}
PARKED = StateReport(drive="parked", soc=0.8, network="wifi", plugged_in=False, eligible=True)


class HostileCar(threading.Thread):
    """Takes every share of the job it is offered and reports a crafted update for it."""

    def __init__(self, url: str, enroll: str, folder: Path) -> None:
        super().__init__(daemon=True)
        self.client = CoordinatorClient(url)
        self.client.credential = self.client.enroll(
            EnrollRequest(enrollment_token=enroll, name="hostile", hardware="ai4")).credential
        self.folder = folder
        self.outcomes: list[tuple[str, str]] = []  # (attack, "accepted" or the refusal's message)
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                grant = self.client.request_lease(LeaseRequest(state=PARKED, wait_s=1))
                if isinstance(grant, TrainGrant):
                    self.attack(grant)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test
            self.error = exc

    def attack(self, grant: TrainGrant) -> None:
        delta, report = self.honest(grant)
        if not self.outcomes:  # the first share: absurd claims, then a huge update claiming its shard's size
            absurd = UpdateReport.model_construct(**dict(report) | {"num_examples": 10**15})  # past the wire's limit
            self.send("claims 1e15 examples", delta, absurd, grant)
            self.send("claims 1e9 examples", delta, report.model_copy(update={"num_examples": 10**9}), grant)
            self.send("huge", np.full_like(delta, 3e38), report, grant)
        else:
            self.send("scaled x100, sign-flipped", -100 * delta, report, grant)

    def honest(self, grant: TrainGrant) -> tuple[np.ndarray, UpdateReport]:
        """What an honest car would send for this share: it trains on its own shard, as the agent would."""
        dest = self.folder / grant.snapshot.digest
        if not dest.exists():
            self.client.download(grant.snapshot.digest, dest)
        params = torch.from_numpy(decode(dest.read_bytes()).reshape(-1).copy())
        local: LocalTrainingConfig = config_from_dict(LocalTrainingConfig, grant.local)
        dataset = build_local_dataset(DataSpec(**grant.data), grant.shard)
        ins = TrainInstructions(round=grant.round, base_version=grant.base_version, model_digest=grant.model_digest,
                                local=local, seed=grant.seed)
        result = train_locally(build_model(grant.model), params, dataset, ins, client_id="hostile")
        assert result.update is not None
        report = UpdateReport(update="0" * 64, round=grant.round, base_version=grant.base_version,
                              num_examples=len(dataset), steps_done=local.steps, steps_planned=local.steps,
                              examples_seen=result.examples_seen, compute_s=0.0)
        return decode(result.update.payload).reshape(-1), report

    def send(self, attack: str, delta: np.ndarray, report: UpdateReport, grant: TrainGrant) -> None:
        digest = self.client.upload(encode(delta.astype(np.float32), CompressionConfig()))
        report = UpdateReport.model_construct(**dict(report) | {"update": digest})  # unchecked: it may be absurd
        try:
            self.client.train_update(grant.lease_id, report)
            self.outcomes.append((attack, "accepted"))
        except (errors.InvalidInput, errors.TransportError) as exc:  # a 400, or the wire schema's 422
            self.outcomes.append((attack, str(exc)))
        except errors.Conflict as exc:  # a 409: its round closed first, as it may for any car
            self.outcomes.append((attack, f"late: {exc}"))


def test_a_hostile_car_among_real_agents_cannot_stop_or_derail_a_job(fleet, tmp_path):
    coordinator = fleet.start_coordinator()
    for name in ("car-a", "car-b"):  # enrolled first: shards 0 and 1; the hostile car holds shard 2
        fleet.start_agent(name)
    with fleet.client() as client:
        job = client.submit_train("mnist1d-cnn", data=DATA, strategy="fedavg", settings=SETTINGS, rounds=3)
        hostile = HostileCar(coordinator.url, coordinator.credentials().enroll, tmp_path)
        hostile.start()
        try:
            final = client.wait(job.job_id, timeout_s=240)
        finally:
            hostile.halt.set()
            hostile.join(30)
        model_bytes = client.result_bytes(job.job_id) if final.state == "done" else b""
    assert hostile.error is None, hostile.error
    assert final.state == "done", final.error

    outcomes = dict(hostile.outcomes[:3])  # the first share's three reports
    assert "num_examples: Input should be less than or equal to" in outcomes["claims 1e15 examples"]  # the wire's
    largest = max(len(build_local_dataset(DataSpec(**DATA), i)) for i in range(DATA["num_vehicles"]))
    assert (f"claims num_examples=1000000000, more than the {largest} examples a car's data shard can hold; at "
            f"most {largest} is accepted") in outcomes["claims 1e9 examples"]
    assert outcomes["huge"] == "accepted"
    assert ("scaled x100, sign-flipped", "accepted") in hostile.outcomes[3:], hostile.outcomes

    t = final.training
    assert [h["version"] for h in t.history] == [0, 1, 2, 3]
    assert t.rejected >= 1 and sum(h["refused"] for h in t.history[1:]) >= 1
    assert sum(h["clipped"] for h in t.history[1:]) >= 2  # the huge update and at least one scaled one
    assert all(np.isfinite(h["loss"]) for h in t.history)
    weights = st_load(model_bytes)
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert max(float(w.abs().max()) for w in weights.values()) < 100  # nowhere near 3e38
