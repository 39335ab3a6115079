"""Secure aggregation on the whole system: a coordinator process and five agent processes train MNIST-1D with every
update masked, and a car frozen (SIGSTOP) right after sending its masked input does not stop its round: the
coordinator waits out the unmasking phase, rebuilds the frozen car's self-mask from its neighbours' shares, and the
job goes on (the car, thawed once its round closed, with it)."""

from __future__ import annotations

import os
import re
import signal

import pytest

from .conftest import wait_for

pytestmark = pytest.mark.timeout(300)

CARS = 5
DATA = {"dataset": "mnist1d", "num_vehicles": CARS, "alpha": 1.0, "num_samples": 1000, "seed": 3}
SETTINGS = {"local": {"steps": 20, "batch_size": 32, "lr": 0.05, "momentum": 0.9},
            "secure_aggregation": True, "robust": {"norm_bound": "fixed", "max_norm": 5.0},
            "rounds": {"clients_per_round": 4, "over_selection": 1.0, "min_reports": 3, "deadline_s": 60,
                       "secagg_phase_s": 5.0, "max_retries": 2}}
MASKED = re.compile(r"masked input of secure round (\S+) sent")


def log_of(agent) -> str:
    return (agent.state_dir / "agent.log").read_text(errors="replace")


def test_secure_training_on_real_cars_survives_a_car_stopped_after_masking(fleet):
    fleet.start_coordinator()
    agents = [fleet.start_agent(f"car-{i}") for i in range(CARS)]
    tried: set[str] = set()

    def first_masked():
        """The first car seen to have sent its masked input in a round not tried yet: (agent, round id)."""
        for agent in agents:
            for round_id in MASKED.findall(log_of(agent)):
                if round_id not in tried:
                    return agent, round_id
        return None

    dropped_round = None
    with fleet.client() as client:
        job = client.submit_train("mnist1d-cnn", data=DATA, strategy="fedavg", settings=SETTINGS, rounds=3)
        while dropped_round is None and len(tried) < 3:
            frozen, round_id = wait_for(first_masked, 180, "a car's masked input", poll_s=0.01)
            tried.add(round_id)
            os.killpg(frozen.proc.pid, signal.SIGSTOP)  # after masking; unmasking needs every masked input first
            version = client.job(job.job_id).training.version
            wait_for(lambda v=version: client.job(job.job_id).training.version > v
                     or client.job(job.job_id).state != "running", 120, "the round to close without the car")
            if f"secure round {round_id} unmasking answered" not in log_of(frozen):
                dropped_round = int(round_id.split(":r")[1].split(":")[0])
            os.killpg(frozen.proc.pid, signal.SIGCONT)  # it finds its round closed and goes on with the job
        final = client.wait(job.job_id, timeout_s=240)
    assert final.state == "done", final.error
    assert dropped_round is not None, "every freeze came after the car had answered; nothing was dropped"
    t = final.training
    assert t.secure_aggregation is True
    rounds = t.history[1:]
    assert [h["version"] for h in rounds] == [1, 2, 3]
    assert all(h["secagg_asked"] == 4 and h["cars"] >= 3 for h in rounds), rounds
    row = next(h for h in rounds if h["round"] == dropped_round)
    assert row["secagg_dropped"] == 1 and row["cars"] == 4, row  # lost before unmasking, still in the sum
    assert t.history[-1]["accuracy"] > max(0.15, t.history[0]["accuracy"])  # chance is 0.1
    assert t.bytes_up > 0 and t.bytes_down > 0
