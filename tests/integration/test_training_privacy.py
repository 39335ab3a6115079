"""A differentially private training job on a real agent process, submitted with the CLI's ``--dp-*`` flags: it
trains, reports its epsilon per version, and ``fleetgrid status`` shows it. Bad DP flags are one line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fleetgrid.workloads.training.privacy import epsilon_spent

pytestmark = pytest.mark.timeout(600)

WIDE = {**os.environ, "COLUMNS": "200"}
TRAIN = ["submit", "train", "--model", "mnist1d-cnn", "--strategy", "fedavg", "--shards", "2", "--steps", "3",
         "--clients", "1", "--set", "rounds.over_selection=1.0", "--set", "local.batch_size=16"]


def _fleetgrid(*args: str, coordinator=None) -> subprocess.CompletedProcess:
    where = ["--coordinator", coordinator.url, "--data-dir", str(coordinator.data_dir)] if coordinator else []
    return subprocess.run([sys.executable, "-m", "fleetgrid", *args, *where], capture_output=True, text=True,
                          timeout=300, env=WIDE)


def test_dp_jobs_on_a_real_agent_report_epsilon_and_the_agent_clips(fleet, tmp_path):
    coordinator = fleet.start_coordinator()
    fleet.start_agent("car-1")
    done = _fleetgrid(*TRAIN, "--rounds", "2", "--dp-mode", "central", "--dp-clip", "0.5", "--dp-noise", "1.0",
                      "--set", "privacy.population=100", "--wait", "--out", str(tmp_path / "m.safetensors"),
                      coordinator=coordinator)
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stdout.split("submitted ", 1)[1].split(":", 1)[0]
    with fleet.client() as client:
        training = client.job(job_id).training
    expected = [epsilon_spent([1.0] * k, q=1 / 100, delta=1e-5) for k in (1, 2)]
    assert [row["epsilon"] for row in training.history[1:]] == pytest.approx(expected, rel=1e-6)
    assert training.privacy is not None and training.privacy.epsilon == pytest.approx(expected[1], rel=1e-6)
    assert not training.privacy.stopped_on_budget and training.version == 2
    shown = _fleetgrid("status", job_id, coordinator=coordinator)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    last = shown.stdout.splitlines()[-1]
    assert last.startswith(f"privacy (central DP, per car): epsilon {expected[1]:.3g} at delta 1e-05  sigma 1  "
                           "clip 0.5  q 0.01  rdp"), shown.stdout

    # Distributed mode: the coordinator does not clip, it only checks the sum's norm, so the versions landing with
    # an update of norm ~clip (noise 1e-3 x clip per coordinate, norm ~1e-3) shows that the agent clipped its own.
    done = _fleetgrid(*TRAIN, "--rounds", "2", "--dp-mode", "distributed", "--dp-clip", "0.01", "--dp-noise",
                      "0.001", "--wait", "--out", str(tmp_path / "d.safetensors"), coordinator=coordinator)
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stdout.split("submitted ", 1)[1].split(":", 1)[0]
    with fleet.client() as client:
        training = client.job(job_id).training
    assert training.privacy is not None and training.privacy.mode == "distributed" and training.version == 2
    assert [row["pseudo_grad_norm"] for row in training.history[1:]] == pytest.approx([0.01, 0.01], abs=0.002)


BAD = [
    (["--dp-clip", "1"], "error: --dp-clip needs --dp-mode central or distributed"),
    (["--dp-mode", "central", "--dp-clip", "1"], "needs exactly one of noise_multiplier (sigma) or target_epsilon"),
    (["--dp-mode", "loud", "--dp-clip", "1", "--dp-noise", "1"], "privacy mode must be one of"),
    (["--dp-mode", "central", "--dp-clip", "-1", "--dp-noise", "1"], "clip must be a finite number > 0"),
    (["--dp-mode", "central", "--dp-clip", "1", "--dp-noise", "1", "--aggregator", "krum"],
     "aggregator 'krum' cannot run with differential privacy"),
    (["--aggregator", "krum", "--byzantine", "1"], "needs n >= 2f + 3 = 5 updates every round"),
]


def test_bad_dp_and_krum_flags_are_one_line_without_a_traceback(fleet):
    coordinator = fleet.start_coordinator()
    for flags, needle in BAD:
        r = _fleetgrid(*TRAIN, *flags, coordinator=coordinator)
        assert r.returncode == 2, (flags, r.stdout + r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr, (flags, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
