"""Fixtures for whole-system tests: real coordinator and agent processes on 127.0.0.1."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from fleetgrid.localfleet import AgentProcess, CoordinatorProcess


class SlowModel(torch.nn.Module):
    """A user model whose every batch costs a fixed amount of CPU, so a unit lasts long enough to interrupt."""

    def __init__(self, rounds: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(40, 40, generator=g) / 40**0.5, requires_grad=False)
        self.out = torch.nn.Parameter(torch.randn(40, 10, generator=g), requires_grad=False)
        self.rounds = rounds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for _ in range(self.rounds):
            h = torch.tanh(h @ self.w)
        return h @ self.out


def slow_model_file(path: Path, seconds_per_batch: float) -> Path:
    """Script a SlowModel calibrated on this machine to about ``seconds_per_batch`` per batch."""
    probe = torch.jit.script(SlowModel(200))
    x = torch.zeros(16, 40)
    probe(x)
    start = time.perf_counter()
    probe(x)
    per_round = (time.perf_counter() - start) / 200
    model = torch.jit.script(SlowModel(max(1, int(seconds_per_batch / per_round))))
    model.save(str(path))
    return path


class Fleet:
    """A coordinator and its agents, all stopped at the end of the test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.coordinator: CoordinatorProcess | None = None
        self.agents: list[AgentProcess] = []

    def start_coordinator(self, **kwargs) -> CoordinatorProcess:
        self.coordinator = CoordinatorProcess(self.root / "coordinator", **kwargs).start()
        return self.coordinator

    def start_agent(self, name: str, bus: str = "manual", extra_args: list[str] | None = None) -> AgentProcess:
        creds = self.coordinator.credentials()
        args = ["--heartbeat", "1", "--lease-wait", "1", "--progress-interval", "0.5", *(extra_args or [])]
        agent = AgentProcess(self.coordinator.url, self.root / name, creds.enroll, name=name, bus=bus,
                             extra_args=args).start()
        self.agents.append(agent)
        return agent

    def client(self):
        from fleetgrid.client import FleetgridClient

        return FleetgridClient(self.coordinator.url, self.coordinator.credentials().tenants["default"])

    def operator(self):
        from fleetgrid.client import FleetgridClient

        return FleetgridClient(self.coordinator.url, self.coordinator.credentials().operator)

    def stop(self) -> None:
        for agent in self.agents:
            agent.kill()
        if self.coordinator is not None:
            self.coordinator.stop()


@pytest.fixture
def fleet(tmp_path):
    f = Fleet(tmp_path)
    yield f
    f.stop()


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
