"""The vehicle agent: leases work from the coordinator while the car is eligible and hands it back the instant the
driver needs the computer.

    config = AgentConfig(coordinator="https://grid.example", state_dir=Path("state"), enrollment_token="...")
    stats = run_agent(config, load_bus("synthetic:7", clock), clock)
"""

from fleetgrid.agent.config import AgentConfig
from fleetgrid.agent.runtime import Agent, run_agent
from fleetgrid.agent.statedir import AgentStats
from fleetgrid.agent.transport import CoordinatorClient
from fleetgrid.agent.worker import WorkerProcess

__all__ = ["Agent", "AgentConfig", "AgentStats", "CoordinatorClient", "WorkerProcess", "run_agent"]
