"""Progress on stderr while ``fleetgrid simulate`` runs, so a long pitch shows what it is doing within a second.

A command announces how many vehicle-days it will simulate in how many runs; each run then names itself
(:meth:`FleetProgress.run`) and gets the ``progress(done, total)`` callback the runner calls. In a terminal this is
one rich progress bar, cleared when the command finishes; elsewhere (a pipe, a log, a test) one plain line per run.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Column

__all__ = ["FleetProgress", "OnRun"]

OnRun = Callable[[str], Callable[[int, int], None]]  # a run's description -> its (done, total) callback


class FleetProgress:
    """One bar over every simulation a command runs; use as a context manager, then call :meth:`run` per run."""

    def __init__(self, runs: int, vehicle_days: int, console: Console | None = None) -> None:
        self.runs, self.vehicle_days = runs, vehicle_days
        self.started = 0  # runs announced so far
        self.done = 0  # vehicle-days simulated so far, over all runs
        self.console = console or Console(stderr=True)
        self._bar: Progress | None = None
        self._task = TaskID(0)

    def __enter__(self) -> Self:
        if self.console.is_terminal:
            self._bar = Progress(  # the bar first and fixed, the description last and cut to the terminal
                TextColumn("[bold]simulating[/] {task.fields[run]}"),
                BarColumn(bar_width=24),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                TextColumn(
                    "{task.description}", markup=False, table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)
                ),
                console=self.console,
                transient=True,
                expand=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("", total=self.vehicle_days, run="")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def run(self, description: str) -> Callable[[int, int], None]:
        """Announce the next run; returns the callback that reports its vehicle-days as they are simulated."""
        self.started += 1
        counter = f"{self.started}/{self.runs}"
        if self._bar is None:
            self.console.print(f"simulating {counter}: {description}", markup=False, highlight=False, soft_wrap=True)
        else:
            self._bar.update(self._task, description=description, run=counter, completed=self.done)
        base = self.done

        def progress(done: int, total: int) -> None:
            self.done = base + done
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done)

        return progress
