"""Giving the computer back: runs worker tasks so that the monitor can kill them the instant the car must stop, and
measures how long that took.

The monitor thread calls :meth:`Preemption.on_reading` after every bus read; while a task runs and the car is no
longer eligible (or the agent is stopping), it SIGKILLs the worker, and the pending :meth:`Preemption.compute`
raises :class:`fleetgrid.errors.Preempted` on the lease's thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from fleetgrid import errors

if TYPE_CHECKING:
    from fleetgrid.agent.link import Link
    from fleetgrid.agent.monitor import Reading
    from fleetgrid.agent.statedir import AgentStats
    from fleetgrid.agent.worker import WorkerProcess
    from fleetgrid.workloads.base import WorkerTask

__all__ = ["Preemption"]


class Preemption:
    def __init__(self, worker: WorkerProcess, stats: AgentStats, link: Link) -> None:
        self.worker, self.stats, self.link = worker, stats, link
        self._lock = threading.Lock()
        self._computing_since: float | None = None  # perf_counter when the worker began the current task
        self._kill: tuple[float, float | None] | None = None  # (perf_counter gone, ineligible_since) of the last stop

    def compute(self, task: WorkerTask, on_progress: Callable[[int], None] | None = None) -> None:
        """Run ``task`` in the worker, which :meth:`on_reading` kills (raising Preempted here) once the car must
        stop. A car that turned ineligible meanwhile does not start the task at all."""
        self.link.check_preempted()
        with self._lock:
            self._computing_since, self._kill = time.perf_counter(), None
        try:
            self.worker.run(task, on_progress)
        except errors.Preempted:
            self._record_latency()
            raise
        finally:
            with self._lock:
                self._computing_since = None

    def on_reading(self, reading: Reading) -> None:
        """Runs on the monitor thread after every bus read: stop the worker the moment it must not run."""
        with self._lock:
            computing = self._computing_since is not None
        if not computing or (reading.eligible and not self.link.stop.is_set()):
            return
        if self.worker.stop():
            gone = time.perf_counter()
            with self._lock:
                self._kill = (gone, reading.ineligible_since)

    def _record_latency(self) -> None:
        """Preemption latency: the first ineligible bus read (or the task's start, if later) to the worker gone.

        Taken from the monitor's last kill, which is the one that ended this task's process, so a kill that raced
        the process start is neither counted twice nor counted short.
        """
        with self._lock:
            kill, started = self._kill, self._computing_since
        if kill is None or started is None:
            return
        gone, since = kill
        if since is None:
            return  # stopped for shutdown or a lost lease: not a preemption
        self.stats.preemption_latencies_ms.append((gone - max(since, started)) * 1000.0)
