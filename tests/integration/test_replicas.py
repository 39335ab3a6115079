"""Three coordinator replicas on one real PostgreSQL, real agents spread over them, and the replica driving a
training job SIGKILLed mid-job: the inference result equals a local run, the training job completes with no
version done twice, and no unit is leased to two cars at once."""

from __future__ import annotations

import numpy as np
import pytest
from harness import ENROLL, OPERATOR, TENANT
from sqlalchemy import create_engine, text

from fleetgrid.client import FleetgridClient
from fleetgrid.coordinator.store.sql import engine_url
from fleetgrid.localfleet import AgentProcess, CoordinatorProcess

from .conftest import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(480)]

DATA = {"dataset": "mnist1d", "num_vehicles": 2, "alpha": 1.0, "num_samples": 800, "seed": 5}
SETTINGS = {"local": {"steps": 10, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "compression": {"bits": 8}},
            "rounds": {"clients_per_round": 2, "over_selection": 1.0, "min_reports": 1, "deadline_s": 60}}
ROUNDS = 6


def test_replicas_share_the_work_and_survive_one_killed(tmp_path, postgres_url):
    from fleetgrid.workloads.inference import run_local

    shared = tmp_path / "coordinator"  # the replicas' common artifact directory
    tokens = ["--enroll-token", ENROLL, "--operator-token", OPERATOR, "--tenant", f"default={TENANT}",
              "--lease-ttl", "20"]
    replicas = [CoordinatorProcess(shared, db=postgres_url, extra_args=tokens, log_file=tmp_path / f"r{i}.log")
                for i in range(3)]
    agents: list[AgentProcess] = []
    try:
        for replica in replicas:
            replica.start()
        for i, replica in enumerate(replicas):  # one car per replica
            agents.append(AgentProcess(replica.url, tmp_path / f"car{i}", ENROLL, name=f"car{i}",
                                       extra_args=["--heartbeat", "1", "--lease-wait", "1"]).start())
        x = np.random.default_rng(11).normal(size=(400, 40)).astype(np.float32)
        with FleetgridClient(replicas[0].url, TENANT) as first, FleetgridClient(replicas[1].url, TENANT) as second:
            train = first.submit_train("mnist1d-cnn", data=DATA, strategy="fedavg", settings=SETTINGS, rounds=ROUNDS)
            infer = second.submit("mnist1d-cnn", x, unit_items=10, batch_size=10)
            wait_for(lambda: second.job(train.job_id).units_done >= 2, 240, "two versions of the training job")
            before = second.job(train.job_id)
            replicas[0].kill()  # it took the submission, so it drove the job
            final = second.wait(train.job_id, timeout_s=300)
            assert final.state == "done", final.error
            history = final.training.history
            assert [h["version"] for h in history] == list(range(ROUNDS + 1))  # none lost, none done twice
            assert history[: before.units_done + 1] == before.training.history[: before.units_done + 1]
            done = second.wait(infer.job_id, timeout_s=240)
            assert done.state == "done", done.error
            np.testing.assert_allclose(second.result(infer.job_id), run_local("mnist1d-cnn", x, batch_size=10),
                                       rtol=1e-5, atol=1e-6)
        assert "Traceback" not in replicas[1].log() + replicas[2].log()

        engine = create_engine(engine_url(postgres_url))
        with engine.connect() as c:
            twice = c.execute(text(
                "SELECT count(*) FROM leases a JOIN leases b ON a.unit_id = b.unit_id AND a.lease_id < b.lease_id "
                "WHERE (a.state = 'completed' AND b.state = 'completed') "
                "OR (a.issued_at < COALESCE(b.closed_at, 1e18) AND b.issued_at < COALESCE(a.closed_at, 1e18))"
            )).scalar()
            leases = c.execute(text("SELECT count(*) FROM leases")).scalar()
        engine.dispose()
        assert leases > 40 and twice == 0
    finally:
        for agent in agents:
            agent.kill()
        for replica in replicas:
            replica.stop()
