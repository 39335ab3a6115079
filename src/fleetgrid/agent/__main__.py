"""``python -m fleetgrid.agent``: the vehicle agent on its own, same options as ``fleetgrid agent``."""

import typer

from fleetgrid.agent.cli import agent_command

if __name__ == "__main__":
    typer.run(agent_command)
