"""``fleetgrid submit train --wait`` as a user sees it: a line per global version, and Ctrl-C that stops following the
job, not the job. Real coordinator and agent processes; the CLI runs as its own process."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys

import pytest

from .conftest import wait_for

pytestmark = pytest.mark.timeout(600)

WIDE = {**os.environ, "COLUMNS": "200"}
# Python ignores Ctrl-C in a process started with SIGINT ignored (as a shell's background jobs are): the CLI
# process gets the interpreter's own handler back, as it has when a user runs it in a terminal.
RUN_CLI = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); sys.argv[0] = 'fleetgrid'; "
           "from fleetgrid.cli import main; main()")
TRAIN = ["submit", "train", "--model", "mnist1d-cnn", "--strategy", "fedavg", "--shards", "2", "--steps", "5",
         "--clients", "1", "--set", "rounds.over_selection=1.0", "--set", "local.batch_size=16"]


def _where(coordinator) -> list[str]:
    return ["--coordinator", coordinator.url, "--data-dir", str(coordinator.data_dir)]


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN_CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=WIDE)


def test_wait_prints_a_line_per_version_with_accuracy_cars_and_bytes(fleet, tmp_path):
    coordinator = fleet.start_coordinator()
    fleet.start_agent("car-1")
    proc = _cli(*TRAIN, "--rounds", "3", "--wait", "--out", str(tmp_path / "m.safetensors"), *_where(coordinator))
    out, err = proc.communicate(timeout=500)
    assert proc.returncode == 0, out + err
    job_id = out.split("submitted ", 1)[1].split(":", 1)[0]
    with fleet.client() as client:
        history = client.job(job_id).training.history
    lines = [line for line in out.splitlines() if line.startswith("version ")]
    assert len(lines) == len(history) == 4, out
    initial, *versions = zip(lines, history, strict=True)
    assert initial[0] == (f"version 0/3: accuracy {history[0]['accuracy']:.3f}  loss {history[0]['loss']:.3f}  "
                          "(the initial model)"), initial[0]
    for line, row in versions:
        assert line.startswith(f"version {row['version']}/3: accuracy {row['accuracy']:.3f}  loss "), line
        assert "  1 car, 1 update  up " in line and " down " in line and line.endswith(" so far"), line
    assert (tmp_path / "m.safetensors").stat().st_size > 0
    # `status JOB` ends with the latest version, as --wait showed it, and the job's preemptions (none: never driven).
    shown = subprocess.run([sys.executable, "-m", "fleetgrid", "status", job_id, *_where(coordinator)],
                           capture_output=True, text=True, timeout=120, env=WIDE)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    latest, preemptions = shown.stdout.splitlines()[-2:]
    assert latest.split("  up ")[0] == lines[-1].split("  up ")[0], shown.stdout  # the bytes are the job's now
    assert preemptions == "preemptions: 0 (0 partial updates in the versions so far, 0 shares handed back)"


def test_ctrl_c_stops_following_says_the_job_goes_on_and_how_to_cancel_it(fleet, tmp_path):
    coordinator = fleet.start_coordinator()
    fleet.start_agent("car-1")
    out_path = tmp_path / "m.safetensors"
    proc = _cli(*TRAIN, "--rounds", "500", "--wait", "--out", str(out_path), *_where(coordinator))
    try:
        seen = []
        while not any(line.startswith("version 1/500:") for line in seen):  # following: a version has landed
            line = proc.stdout.readline()
            assert line, "the CLI exited before version 1:\n" + "".join(seen) + proc.stderr.read()
            seen.append(line)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Aborted" not in err, err
    job_id = "".join(seen).split("submitted ", 1)[1].split(":", 1)[0]
    where = shlex.join(_where(coordinator))
    assert f"stopped following {job_id}; the job goes on running on the coordinator." in err, err
    assert f"fleetgrid status {job_id} {where}" in err, err
    assert f"fleetgrid result {job_id} --out {out_path} {where}" in err, err
    cancel = next(line.split("cancel it:", 1)[1].strip() for line in err.splitlines() if "cancel it:" in line)
    assert cancel == f"fleetgrid cancel {job_id} {where}", err
    with fleet.client() as client:
        assert client.job(job_id).state == "running"  # Ctrl-C left the job alone
        # The printed command does what it says.
        done = subprocess.run([sys.executable, "-m", "fleetgrid", *shlex.split(cancel)[1:]], capture_output=True,
                              text=True, timeout=120, env=WIDE)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for(lambda: client.job(job_id).state == "cancelled", 60, "the job cancelled")
    status = subprocess.run([sys.executable, "-m", "fleetgrid", "status", job_id, "--json", *_where(coordinator)],
                            capture_output=True, text=True, timeout=120, env=WIDE)
    assert json.loads(status.stdout)[0]["state"] == "cancelled", status.stdout + status.stderr
