"""Secure aggregation on the whole system: a coordinator process and five agent processes train MNIST-1D with every
update masked, and a car frozen (SIGSTOP) right after sending its masked input does not stop its round: the
coordinator waits out the unmasking phase, rebuilds the frozen car's self-mask from its neighbours' shares, and the
job goes on with the cars left."""

from __future__ import annotations

import os
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


def test_secure_training_on_real_cars_survives_a_car_stopped_after_masking(fleet):
    fleet.start_coordinator()
    agents = [fleet.start_agent(f"car-{i}") for i in range(CARS)]

    def masked():
        return next((a for a in agents if b"masked input of secure round" in (a.state_dir / "agent.log").read_bytes()),
                    None)

    with fleet.client() as client:
        job = client.submit_train("mnist1d-cnn", data=DATA, strategy="fedavg", settings=SETTINGS, rounds=3)
        frozen = wait_for(masked, 180, "a car's masked input")
        os.killpg(frozen.proc.pid, signal.SIGSTOP)  # after masking, before unmasking (killed at teardown)
        final = client.wait(job.job_id, timeout_s=240)
    assert final.state == "done", final.error
    t = final.training
    assert t.secure_aggregation is True
    rounds = t.history[1:]
    assert [h["version"] for h in rounds] == [1, 2, 3]
    assert all(h["secagg_asked"] == 4 and h["cars"] >= 3 for h in rounds), rounds
    assert sum(h["secagg_dropped"] for h in rounds) >= 1, rounds  # the frozen car, at least
    assert t.history[-1]["accuracy"] > max(0.15, t.history[0]["accuracy"])  # chance is 0.1
    assert t.bytes_up > 0 and t.bytes_down > 0
