"""``fleetgrid demo`` as a newcomer runs it: the reduced demo end to end, on a machine whose only core is shared
with a busy loop, and stopped with Ctrl-C. Real processes; no assertion on how long anything takes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REDUCED = ("demo", "--cars", "2", "--items", "96", "--train-rounds", "3")


def demo_env(tmp_path: Path) -> dict[str, str]:
    """Wide lines (one message per line) and the demo's temporary folder under ``tmp_path``."""
    return {**os.environ, "COLUMNS": "200", "TMPDIR": str(tmp_path)}


def run_demo(*args: str, env: dict[str, str], prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """The demo in a process group of its own, as a command typed in a terminal."""
    return subprocess.run([*prefix, sys.executable, "-m", "fleetgrid", *args], capture_output=True, text=True,
                          timeout=540, env=env, start_new_session=True)


def test_demo_json_summary_gives_each_job_its_own_rate_and_counts_training_per_car(tmp_path):
    proc = run_demo(*REDUCED, "--serve-replicas", "1", "--json", "--keep", str(tmp_path / "demo"),
                    env=demo_env(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    # One car served MiniLM to an openai client while the other ran the jobs: every request answered.
    assert summary["serve_requests"] > 0 and summary["serve_failed"] == 0, summary["serve_errors"]
    assert 0 < summary["serve_p50_ms"] <= summary["serve_p99_ms"]
    assert "requests through the openai client" in proc.stderr
    for key in ("items", "items_per_s", "embed_wall_s", "matches_local", "preemptions", "reissued_units",
                "cellular_bytes", "wifi_bytes", "train_accuracy", "train_rounds", "train_wall_s",
                "train_versions_per_min", "train_bytes_up", "train_bytes_down", "wall_s", "pace", "pids"):
        assert key in summary, key
    assert summary["items"] == 96 and summary["matches_local"] is True
    # items/s is the embedding job's own rate, not the items over the time both jobs took
    # (each figure is rounded on its own, so the ratio of the rounded ones may differ in the last digit)
    assert summary["items_per_s"] == pytest.approx(summary["items"] / summary["embed_wall_s"], abs=0.11)
    per_min = summary["train_rounds"] / summary["train_wall_s"] * 60
    assert summary["train_versions_per_min"] == pytest.approx(per_min, rel=0.01)
    assert summary["cellular_bytes"] + summary["wifi_bytes"] > 0
    assert summary["train_rounds"] == 3 and 0.0 <= summary["train_accuracy"] <= 1.0
    assert summary["train_bytes_up"] > 0 and summary["train_bytes_down"] > 0
    assert "training version  3: held-out accuracy" in proc.stderr  # shown live, version by version
    # the per-car table counts training as well as units, from each agent's own stats
    cars = summary["per_car"]
    assert sum(c["units"] for c in cars) >= summary["units"]
    assert sum(c["train_leases"] for c in cars) >= 3 and sum(c["train_updates"] for c in cars) >= 1
    assert all(c["leases_done"] >= c["units"] + c["train_updates"] for c in cars)
    assert "train leases" in proc.stderr
    pace = summary["pace"]
    assert pace["measured"] is True and pace["speed"] > 0 and f"pace x{pace['speed']:g} (measured" in proc.stderr


def test_demo_finishes_on_one_core_shared_with_a_busy_loop(tmp_path):
    if shutil.which("taskset") is None:
        pytest.skip("taskset (util-linux) is not installed, so the demo cannot be held to one core")
    core = str(min(os.sched_getaffinity(0)))
    busy = subprocess.Popen(["taskset", "-c", core, sys.executable, "-c", "while True: pass"])
    try:
        proc = run_demo(*REDUCED, "--json", env=demo_env(tmp_path), prefix=("taskset", "-c", core))
    finally:
        busy.kill()
        busy.wait()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["matches_local"] is True and summary["items"] == 96
    assert summary["train_rounds"] == 3 and len(summary["train_accuracy_curve"]) == 4
    for version in range(4):
        assert f"training version  {version}: held-out accuracy" in proc.stderr
    assert summary["pace"]["measured"] is True
    assert not list(tmp_path.glob("fleetgrid-demo-*"))  # its temporary folder is gone


def _live_processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every live process, from /proc (zombies left out)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        state, ppid, pgid = stat[stat.rindex(")") + 2:].split()[:3]  # the name, in parentheses, may hold spaces
        if state != "Z":
            found[int(entry.name)] = (int(ppid), int(pgid))
    return found


def _descendants(pid: int) -> set[int]:
    processes, found, todo = _live_processes(), set(), [pid]
    while todo:
        parent = todo.pop()
        children = {p for p, (ppid, _) in processes.items() if ppid == parent}
        found |= children
        todo += children
    return found


def test_ctrl_c_stops_every_process_removes_the_folder_and_exits_130(tmp_path):
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc to list the processes the demo started")
    # Far more training than the test waits for: on a starved machine the demo could otherwise finish its reduced
    # jobs before this process reads its first progress line, and Ctrl-C would come too late to test anything.
    endless = ("demo", "--cars", "2", "--items", "96", "--train-rounds", "100000")
    # Ctrl-C as a terminal delivers it: a test run started in the background (`make test &`) inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler in the demo at all.
    proc = subprocess.Popen([sys.executable, "-m", "fleetgrid", *endless], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=demo_env(tmp_path), start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    try:
        for line in proc.stdout:  # until its first progress line: by then every process is up and working
            lines.append(line)
            if "held-out accuracy" in line:
                break
        pattern = re.compile(r"\(pid (\d+)\).*\(pids ([\d ]+)\).* data (\S+)")
        started = next(filter(None, map(pattern.search, lines)), None)
        assert started, "".join(lines)
        coordinator, cars, data = int(started[1]), [int(p) for p in started[2].split()], Path(started[3])
        assert data.is_dir() and data.parent == tmp_path
        children = _descendants(proc.pid)  # the coordinator, the agents, their workers
        assert {coordinator, *cars} <= children
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        assert proc.wait(60) == 130, "".join(lines) + rest
    finally:
        if proc.poll() is None:  # the test failed before Ctrl-C: still let the demo stop its own children
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert "demo stopped (Ctrl-C)" in rest and f"removed {data}" in rest, rest
    assert not data.exists()
    # nothing it started is left, nor anything since in an agent's process group (a worker started after the look)
    left = {pid for pid, (_, pgid) in _live_processes().items() if pid in children or pgid in cars}
    assert not left, left
