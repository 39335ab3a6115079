"""Fixtures for whole-system tests: real coordinator and agent processes on 127.0.0.1."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fleetgrid.localfleet import AgentProcess, CoordinatorProcess


class Fleet:
    """A coordinator and its agents, all stopped at the end of the test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.coordinator: CoordinatorProcess | None = None
        self.agents: list[AgentProcess] = []

    def start_coordinator(self, **kwargs) -> CoordinatorProcess:
        self.coordinator = CoordinatorProcess(self.root / "coordinator", **kwargs).start()
        return self.coordinator

    def start_agent(self, name: str, bus: str = "manual", extra_args: list[str] | None = None,
                    url: str | None = None) -> AgentProcess:
        """An agent process; ``url`` lets it dial something in between (a proxy) instead of the coordinator."""
        creds = self.coordinator.credentials()
        args = ["--heartbeat", "1", "--lease-wait", "1", "--progress-interval", "0.5", *(extra_args or [])]
        agent = AgentProcess(url or self.coordinator.url, self.root / name, creds.enroll, name=name, bus=bus,
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


def in_thread_car(tmp_path: Path, coordinator: CoordinatorProcess, name: str):
    """The real agent in this process (its worker still a process of its own) on a manual bus the test drives:
    ``(agent, bus, stop event, thread)``; set the event and join the thread to stop it."""
    import threading

    from fleetgrid.agent.config import AgentConfig
    from fleetgrid.agent.runtime import Agent
    from fleetgrid.clock import WallClock
    from fleetgrid.vehicle import ManualVehicleBus

    bus = ManualVehicleBus(clock=WallClock())
    config = AgentConfig(coordinator=coordinator.url, state_dir=tmp_path / name, name=name, threads=1,
                         enrollment_token=coordinator.credentials().enroll, heartbeat_interval_s=0.5,
                         lease_wait_s=1.0, poll_interval_s=0.1)
    agent = Agent(config, bus, WallClock())
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    return agent, bus, stop, thread
