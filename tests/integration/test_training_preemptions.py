"""Training work on few cars and preempted cars, on a real coordinator process: a lone car trains every shard of the
split in turn (not one shard again and again), the job's status counts every preempted share, whether its car
sent the steps it did as a partial update or handed it back, and an agent process whose car drives off mid-share
sends those steps, as the in-process harness's preempted cars do."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from fleetgrid.agent.config import AgentConfig
from fleetgrid.agent.runtime import Agent
from fleetgrid.clock import WallClock
from fleetgrid.vehicle.bus import ManualVehicleBus
from fleetgrid.vehicle.schedule import DaySchedule, VehicleTrace, save_traces
from fleetgrid.vehicle.state import DriveState, Network

from .conftest import wait_for

pytestmark = pytest.mark.timeout(300)

PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}


def _settings(clients: int, steps: int) -> dict:
    return {"local": {"steps": steps, "batch_size": 16},
            "rounds": {"clients_per_round": clients, "over_selection": 1.0, "min_reports": 1, "deadline_s": 300}}


class RawCar:
    """A car speaking the HTTP API itself, so the test sees each grant as it comes."""

    def __init__(self, http: httpx.Client, enroll: str, name: str) -> None:
        self.http = http
        r = http.post("/v1/vehicles/enroll", json={"enrollment_token": enroll, "name": name, "hardware": "ai4"})
        assert r.status_code == 201, r.text
        self.auth = {"authorization": f"Bearer {r.json()['credential']}"}

    def lease(self, job_id: str) -> dict:
        until = time.monotonic() + 120
        while time.monotonic() < until:
            r = self.http.post("/v1/leases", json={"state": PARKED, "wait_s": 5}, headers=self.auth)
            assert r.status_code in (200, 204), r.text
            if r.status_code == 200:
                grant = r.json()
                assert grant["kind"] == "train" and grant["job_id"] == job_id, grant
                return grant
        raise AssertionError(f"no share of {job_id} offered within 120 s")

    def hand_back(self, grant: dict) -> None:
        r = self.http.post(f"/v1/leases/{grant['lease_id']}/fail", headers=self.auth,
                           json={"reason": "preempted: driving", "handback": True})
        assert r.status_code == 200, r.text


def test_a_lone_car_trains_every_shard_in_turn_and_handbacks_are_counted(fleet):
    coordinator = fleet.start_coordinator()
    creds = coordinator.credentials()
    with httpx.Client(base_url=coordinator.url, timeout=60) as http, fleet.client() as tenant:
        first = RawCar(http, creds.enroll, "car-1")
        job = tenant.submit_train("mnist1d-cnn", data={"dataset": "mnist1d", "num_vehicles": 4, "alpha": 1.0},
                                  strategy="fedavg", settings=_settings(clients=4, steps=5), rounds=1)
        shards = []
        for _ in range(4):
            grant = first.lease(job.job_id)
            shards.append(grant["shard"])
            first.hand_back(grant)
        assert sorted(shards) == [0, 1, 2, 3], shards  # one car holds the whole split: each shard in turn
        status = tenant.job(job.job_id)
        assert (status.preemptions, status.training.handbacks, status.training.partial_updates) == (4, 4, 0)

        # A second car: the split is shared out, the first car keeps the even shards, the second the odd ones.
        second = RawCar(http, creds.enroll, "car-2")
        seen: dict[str, list[int]] = {"car-1": [], "car-2": []}
        for name, car in (("car-2", second), ("car-1", first), ("car-2", second), ("car-1", first)):
            grant = car.lease(job.job_id)
            seen[name].append(grant["shard"])
            car.hand_back(grant)
        assert sorted(seen["car-1"]) == [0, 2] and sorted(seen["car-2"]) == [1, 3], seen
        assert tenant.job(job.job_id).preemptions == 8
        tenant.cancel(job.job_id)


def test_a_partial_update_and_a_handback_each_count_as_a_preemption(fleet, tmp_path):
    coordinator = fleet.start_coordinator()
    clock = WallClock()
    bus = ManualVehicleBus(clock=clock)
    config = AgentConfig(coordinator=coordinator.url, state_dir=tmp_path / "car", name="car-1",
                         enrollment_token=coordinator.credentials().enroll, heartbeat_interval_s=0.2,
                         poll_interval_s=0.05, lease_wait_s=2.0, threads=1)
    agent = Agent(config, bus, clock)
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    work = tmp_path / "car" / "work"

    def training_checkpoint() -> bool:  # the worker is mid-share: it checkpoints after every step
        return any(work.rglob("checkpoint.npz"))

    with fleet.client() as tenant:
        # Shares far longer than the test: each ends only when the car is preempted.
        job = tenant.submit_train("mnist1d-cnn", data={"dataset": "mnist1d", "num_vehicles": 1}, strategy="fedavg",
                                  settings=_settings(clients=1, steps=1_000_000), rounds=3)
        runner.start()
        try:
            wait_for(training_checkpoint, 180, "the car training its first share")
            bus.set(drive=DriveState.DRIVING)  # on Wi-Fi still: it sends the steps it did
            wait_for(lambda: tenant.job(job.job_id).units_done >= 1, 120, "version 1, from the partial update")
            status = tenant.job(job.job_id)
            assert (status.preemptions, status.training.partial_updates, status.training.handbacks) == (1, 1, 0)
            assert status.training.history[1]["partial"] == 1 and status.training.history[1]["cars"] == 1

            bus.set(drive=DriveState.PARKED)
            wait_for(lambda: agent.stats.train_leases >= 2 and training_checkpoint(), 180, "the second share")
            bus.set(drive=DriveState.DRIVING, network=Network.OFFLINE)  # nothing can be sent: handed back
            wait_for(lambda: tenant.job(job.job_id).training.handbacks == 1, 120, "the handback")
            status = tenant.job(job.job_id)
            assert (status.preemptions, status.training.partial_updates) == (2, 1)
            assert agent.stats.preemptions == 2 and agent.stats.train_partial_updates == 1
        finally:
            stop.set()
            runner.join(60)
            tenant.cancel(job.job_id)


def test_an_agent_process_whose_car_drives_off_mid_share_sends_the_steps_it_did(fleet, tmp_path):
    """The car's bus replays a day of one-minute trips every three minutes, four times faster than the wall (30 s
    parked, 15 s driving, on cellular); a share of a million steps ends only when a trip preempts it."""
    fleet.start_coordinator()
    trips = tuple((m, m + 1) for m in range(2, 1438, 3))
    parked = tuple((end, start) for (_, end), (start, _) in zip(((0, 0), *trips), trips, strict=False))
    save_traces(tmp_path / "traces.jsonl", [VehicleTrace("car", (DaySchedule(trips=trips, plugged=parked,
                                                                             wifi=parked, soc_start=0.9),))])
    clock = ["--clock-speed", "4", "--clock-start", "0", "--clock-origin", str(time.time())]
    car = fleet.start_agent("car-1", bus=f"trace:{tmp_path / 'traces.jsonl'}#car", extra_args=clock)
    with fleet.client() as tenant:
        job = tenant.submit_train("mnist1d-cnn", data={"dataset": "mnist1d", "num_vehicles": 1, "num_samples": 800},
                                  strategy="fedavg", settings=_settings(clients=1, steps=1_000_000), rounds=1)
        final = tenant.wait(job.job_id, timeout_s=240)
    assert final.state == "done", final.error
    row = final.training.history[1]
    assert row["partial"] == 1 and 0 < row["steps"] < 1_000_000  # version 1 is the preempted share's steps
    assert final.training.partial_updates == 1
    stats = car.stats()
    assert stats["train_partial_updates"] == 1 and stats["preemptions"] >= 1
    assert list((car.state_dir / "train").rglob("shard-*.npz"))  # kept for the worker started after the trip
