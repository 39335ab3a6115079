"""A whole fleet on one machine: a coordinator process and N agent processes, for the demo, benchmarks and tests.

Everything runs as real processes talking HTTP on 127.0.0.1, exactly as in a deployment; only the vehicles' buses
are simulated.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .coordinator.config import Credentials

__all__ = ["AgentProcess", "CoordinatorProcess", "free_port", "stop_fleet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env(threads: int | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


@dataclass
class CoordinatorProcess:
    """``fleetgrid serve`` in a child process. ``extra_args`` are further ``serve`` options."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    db: str | None = None
    extra_args: list[str] = field(default_factory=list)
    tls: tuple[Path, Path] | None = None
    """(certificate, key) PEM files: serve HTTPS."""
    log_file: Path | None = None
    """Where its output goes (default DATA_DIR/coordinator.log); replicas sharing a data dir need one each."""
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_file or self.data_dir / "coordinator.log"

    def start(self, timeout_s: float = 60.0, *, wait: bool = True) -> CoordinatorProcess:
        """Start it and, with ``wait``, return once it answers /healthz (else call :meth:`wait_healthy`)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "fleetgrid", "serve", "--data-dir", str(self.data_dir), "--port", str(self.port),
                *self.extra_args]
        if self.db:
            args += ["--db", self.db]
        if self.tls:
            args += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=_child_env())
        if wait:
            self.wait_healthy(timeout_s)
        return self

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        wait_healthy(self.url, timeout_s, self.proc, self.log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def credentials(self) -> Credentials:
        return Credentials.load(self.data_dir / "credentials.json")

    def kill(self) -> None:
        """SIGKILL, as in a crash."""
        _signal(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        _signal(self.proc, signal.SIGTERM)


@dataclass
class AgentProcess:
    """``fleetgrid agent`` in a child process, on a simulated vehicle bus."""

    coordinator: str
    state_dir: Path
    enroll_token: str
    name: str
    bus: str = "manual"
    hardware: str = "ai4"
    threads: int = 1
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> AgentProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "fleetgrid", "agent", "--coordinator", self.coordinator,
                "--state-dir", str(self.state_dir), "--enroll-token", self.enroll_token, "--name", self.name,
                "--bus", self.bus, "--hardware", self.hardware, "--threads", str(self.threads), *self.extra_args]
        with open(self.state_dir / "agent.log", "ab") as log:
            # Its own process group: a crash (kill) takes the agent's worker process with it, as in a real car.
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=_child_env(self.threads),
                                         start_new_session=True)
        return self

    def stats(self) -> dict:
        path = self.state_dir / "stats.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the agent and its worker at once, as when the car's computer loses power."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        _signal(self.proc, signal.SIGTERM)


def stop_fleet(coordinator: CoordinatorProcess | None, agents: list[AgentProcess], grace_s: float = 15.0, *,
               at_once: bool = False) -> None:
    """Stop the agents and the coordinator: SIGTERM to every agent together, then to the coordinator (so the agents
    can hand their leases back first; ``at_once``: to all of them together), and SIGKILL whatever still runs after
    ``grace_s``, agents with their whole process group (their workers). Returns within about ``grace_s`` plus a
    second whatever the children do."""
    coordinator_proc = coordinator.proc if coordinator is not None else None
    running = [a.proc for a in agents if a.proc is not None and a.alive()]
    if at_once and coordinator_proc is not None and coordinator_proc.poll() is None:
        running.append(coordinator_proc)
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in running:
        _wait_until(proc, deadline)
    if coordinator_proc is not None and coordinator_proc.poll() is None and not at_once:
        coordinator_proc.send_signal(signal.SIGTERM)
        _wait_until(coordinator_proc, time.monotonic() + min(grace_s, 5.0))
    for agent in agents:
        if agent.proc is not None:
            try:  # the group outlives the agent when its worker does not exit with it
                os.killpg(agent.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    if coordinator_proc is not None and coordinator_proc.poll() is None:
        coordinator_proc.kill()
    procs = [a.proc for a in agents if a.proc is not None]
    if coordinator_proc is not None:
        procs.append(coordinator_proc)
    for proc in procs:
        _wait_until(proc, time.monotonic() + 1.0)


def _wait_until(proc: subprocess.Popen, deadline: float) -> None:
    try:
        proc.wait(max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        pass


def wait_healthy(url: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None,
                 verify: bool | str = False) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"coordinator exited with code {proc.returncode}:\n{tail}")
        try:
            if httpx.get(url + "/healthz", timeout=1.0, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"coordinator at {url} did not answer /healthz within {timeout_s:.0f} s")


def _signal(proc: subprocess.Popen | None, sig: int, wait_s: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
