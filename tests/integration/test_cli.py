"""The README's commands, run as a user types them, against real coordinator and agent processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest

from fleetgrid.localfleet import free_port
from fleetgrid.workloads.inference import run_local

pytestmark = pytest.mark.timeout(300)


def fleetgrid(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "fleetgrid", *args], capture_output=True, text=True, timeout=240)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_quickstart_submit_status_result_fleet(fleet, tmp_path):
    coordinator = fleet.start_coordinator()
    fleet.start_agent("car-1")
    x = np.random.default_rng(1).normal(size=(300, 40)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    where = ["--coordinator", coordinator.url, "--data-dir", str(coordinator.data_dir)]
    out = fleetgrid("submit", "infer", "--model", "mnist1d-cnn", "--inputs", str(tmp_path / "x.npy"),
                    "--unit-items", "100", "--wait", "--out", str(tmp_path / "r.npy"), *where)
    assert "submitted job-" in out.stdout
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), run_local("mnist1d-cnn", x, threads=1), atol=1e-5)
    jobs = json.loads(fleetgrid("status", "--json", *where).stdout)
    assert [j["state"] for j in jobs] == ["done"] and jobs[0]["units_total"] == 3
    overview = json.loads(fleetgrid("fleet", "--json", *where).stdout)
    assert overview["vehicles"] == 1 and overview["jobs"] == {"done": 1}
    bad = fleetgrid("submit", "infer", "--model", "nope", "--inputs", str(tmp_path / "x.npy"), *where, check=False)
    assert bad.returncode == 2 and "registered models" in bad.stderr
    missing = fleetgrid("status", "job-missing", *where, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_demo_json_summary(tmp_path):
    proc = fleetgrid("demo", "--cars", "2", "--items", "96", "--train-rounds", "3", "--json",
                     "--keep", str(tmp_path / "demo"))
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("items", "items_per_s", "matches_local", "preemptions", "reissued_units", "cellular_bytes",
                "wifi_bytes", "train_accuracy", "train_rounds", "train_bytes_up", "train_bytes_down"):
        assert key in summary, key
    assert summary["items"] == 96 and summary["matches_local"] is True
    assert summary["cellular_bytes"] + summary["wifi_bytes"] > 0
    assert summary["train_rounds"] == 3 and 0.0 <= summary["train_accuracy"] <= 1.0
    assert summary["train_bytes_up"] > 0 and summary["train_bytes_down"] > 0
    assert "training version  3: held-out accuracy" in proc.stderr  # shown live, version by version


def test_demo_refuses_bad_settings_with_exit_code_2():
    proc = fleetgrid("demo", "--cars", "0", check=False)
    assert proc.returncode == 2 and "1 to 64 cars" in proc.stdout + proc.stderr


def test_a_second_coordinator_on_one_sqlite_file_exits_2_naming_the_first(fleet, tmp_path):
    coordinator = fleet.start_coordinator()
    db = coordinator.data_dir / "coordinator.db"
    env = {**os.environ, "COLUMNS": "500"}  # one line per message, paths unbroken
    for where in (["--data-dir", str(coordinator.data_dir)],
                  ["--data-dir", str(tmp_path / "elsewhere"), "--db", f"sqlite:///{db}"]):
        second = subprocess.run([sys.executable, "-m", "fleetgrid", "serve", *where, "--port", str(free_port())],
                                capture_output=True, text=True, timeout=120, env=env)
        assert second.returncode == 2, second.stdout + second.stderr
        assert (f"database {db} is in use by another coordinator (pid {coordinator.proc.pid}); run one coordinator "
                "per SQLite file, or use PostgreSQL") in second.stderr
        assert "Traceback" not in second.stderr
    assert httpx.get(coordinator.url + "/healthz").status_code == 200  # the first one serves on, untouched
