"""``python -m fleetgrid.sim``: the simulator without the rest of the fleetgrid CLI."""

from __future__ import annotations

import typer

from fleetgrid.sim.cli import simulate


def main() -> None:
    app = typer.Typer(add_completion=False)
    app.command()(simulate)
    app()


if __name__ == "__main__":
    main()
