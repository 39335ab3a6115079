"""``fleetgrid agent`` as a user meets it: bad settings end with exit code 2 and a message before any network; a
running agent prints one line per event, says when the coordinator is unreachable, and Ctrl-C ends it cleanly."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import typer
from harness import ENROLL, TENANT, start_coordinator
from typer.testing import CliRunner

from fleetgrid import errors
from fleetgrid.agent.cli import agent_command, configure_logging, parse_hours
from fleetgrid.client import FleetgridClient
from fleetgrid.localfleet import free_port

app = typer.Typer()
app.command()(agent_command)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hours", "25-3"], "allowed_hours"),
        (["--min-soc", "1.5"], "min_soc"),
        (["--bus", "carrier-pigeon"], "vehicle bus spec"),
        (["--hardware", "hw9"], "unknown hardware profile"),
        (["--coordinator", "grid.example"], "must start with http"),
        (["--clock-speed", "0", "--clock-start", "0"], "clock speed must be > 0"),
    ],
)
def test_bad_settings_exit_2_with_a_message(tmp_path, args, message):
    result = CliRunner().invoke(app, ["--state-dir", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output


def test_hours_parse_as_start_dash_end():
    assert parse_hours("22-7") == (22, 7)
    with pytest.raises(errors.InvalidInput, match="START-END"):
        parse_hours("night")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[22, 7]", "holds a JSON list; expected a JSON object"),
        ('{"colour": "red"}', "unknown owner policy keys ['colour']"),
        ('{"min_soc": 2}', "min_soc"),
    ],
)
def test_a_bad_policy_file_is_named_with_what_it_should_hold(tmp_path, content, message):
    policy = tmp_path / "policy.json"
    policy.write_text(content)
    result = CliRunner().invoke(app, ["--state-dir", str(tmp_path / "car"), "--policy", str(policy)])
    assert result.exit_code == 2 and message in result.output and f"policy file {policy}" in result.output


def test_a_missing_policy_file_and_a_bad_log_level_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["--state-dir", str(tmp_path), "--policy", str(tmp_path / "none.json")])
    assert result.exit_code == 2 and f"policy file {tmp_path / 'none.json'} cannot be read" in result.output
    result = CliRunner().invoke(app, ["--state-dir", str(tmp_path), "--log-level", "loud"])
    assert result.exit_code == 2 and "DEBUG, INFO, WARNING, ERROR" in result.output


def _agent(coordinator: str, state_dir, *extra: str) -> subprocess.Popen:
    """``fleetgrid agent`` as a user starts it: default log level, its own process group (a terminal's Ctrl-C
    reaches the whole group)."""
    args = [sys.executable, "-m", "fleetgrid", "agent", "--coordinator", coordinator, "--state-dir", str(state_dir),
            "--enroll-token", ENROLL, "--bus", "manual", "--threads", "1", "--heartbeat", "0.5", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _ctrl_c(proc: subprocess.Popen) -> tuple[str, str]:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.communicate(timeout=60)
    finally:
        proc.kill()


def _wait_for(predicate, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.timeout(300)
def test_the_agent_prints_events_not_requests_and_ctrl_c_mid_unit_ends_in_a_summary(tmp_path):
    """MiniLM in the worker makes a tqdm bar, whose process-shared lock leaked a semaphore when the worker was
    killed; Ctrl-C mid-unit kills it."""
    coordinator = start_coordinator(tmp_path / "coord")
    try:
        with FleetgridClient(coordinator.url, TENANT) as tenant:
            tenant.submit("minilm-l6-v2", [f"sentence number {i}" for i in range(512)], unit_items=512,
                          batch_size=8)
        agent = _agent(coordinator.url, tmp_path / "car")
        try:
            _wait_for(lambda: any((tmp_path / "car" / "work").rglob("checkpoint.npy")), "a first checkpoint")
        finally:
            out, err = _ctrl_c(agent)
    finally:
        coordinator.stop()
    assert agent.returncode == 0, err[-3000:]
    assert "enrolled as vehicle" in err and "lease " in err, err
    for noise in ("httpx", "HTTP Request", "leaked semaphore", "Traceback"):
        assert noise not in err, err[-3000:]
    assert out.startswith("agent stopped: 1 lease (0 done") and "{" not in out, out
    assert json.loads((tmp_path / "car" / "stats.json").read_text())["leases"] == 1  # the details stay on disk


@pytest.mark.timeout(120)
def test_with_the_coordinator_down_the_agent_says_so_and_when_it_tries_again(tmp_path):
    agent = _agent(f"http://127.0.0.1:{free_port()}", tmp_path / "car")
    lines: list[str] = []
    try:
        while not any("coordinator unreachable" in line for line in lines):
            line = agent.stderr.readline()
            assert line, "the agent exited: " + "".join(lines)
            lines.append(line)
    finally:
        out, err = _ctrl_c(agent)
    said = next(line for line in lines if "coordinator unreachable" in line)
    assert re.search(r"trying again in \d+\.\d s, at \d\d:\d\d:\d\d", said), said
    assert agent.returncode == 0 and out.startswith("agent stopped: 0 leases"), out + err


def test_debug_turns_the_per_request_lines_back_on():
    configure_logging("debug")
    try:
        assert logging.getLogger("httpx").isEnabledFor(logging.INFO)
        configure_logging("INFO")
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
        assert logging.getLogger("fleetgrid.agent").isEnabledFor(logging.INFO)
    finally:
        logging.getLogger().handlers.clear()
        logging.getLogger("httpx").setLevel(logging.NOTSET)
