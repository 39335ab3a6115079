"""The preemptable executor: one long-lived child process that runs worker tasks and can be killed at any instant.

The child runs any :class:`fleetgrid.workloads.base.WorkerTask` (it knows no workload: each task executes itself)
and keeps what tasks cache (loaded models, built datasets) between them. A task writes its recovery point to a
file by atomic rename as it goes (an inference unit after every batch, training every few steps). That file is the
only recovery point, so :meth:`WorkerProcess.stop` may simply SIGKILL the child: the driver gets the computer back
in milliseconds, and the next task starts a fresh process.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fleetgrid import errors

if TYPE_CHECKING:
    from fleetgrid.workloads.base import WorkerTask

__all__ = ["RunnerFactory", "WorkerProcess"]

RunnerFactory = Callable[..., Callable[[Any], np.ndarray]]
"""``factory(name, model_file=path_or_None, threads=n_or_None) -> runner``; must be picklable (a module-level
function), since the child process receives it. The default is :func:`fleetgrid.models.registry.load_runner`."""


class WorkerProcess:
    """Runs worker tasks in a child process started with the 'spawn' (default)
    or 'forkserver' context.

    ``run`` blocks the calling thread until the unit is done; ``stop`` (from any other thread) kills the child at
    once and makes the pending ``run`` raise :class:`Preempted`. ``threads`` caps torch's intra-op threads in the
    child, so work leaves cores for the car's own tasks. Neither start method forks the agent's threaded process:
    'forkserver' forks from a clean server that has imported torch once, so a worker restarted after a preemption
    is ready at once instead of re-importing torch.
    """

    def __init__(
        self,
        *,
        threads: int | None = None,
        runner_factory: RunnerFactory | None = None,
        start_method: Literal["spawn", "forkserver"] = "spawn",
    ) -> None:
        if threads is not None and threads < 1:
            raise errors.InvalidInput(f"worker threads must be >= 1 (or None for torch's default), got {threads}")
        if start_method not in ("spawn", "forkserver"):
            raise errors.InvalidInput(f"worker start_method {start_method!r}; expected 'spawn' or 'forkserver'")
        self.threads = threads
        self._factory = runner_factory
        # Torch's OpenMP threads spin while they wait for work by default. On cores shared with anything else (a
        # car's own tasks, a busy laptop) that makes a small model 10-40x slower: 100 training steps of the
        # MNIST-1D CNN on 2 threads took 7-17 s spinning and 0.5 s sleeping on a busy 2-core machine. The child
        # inherits this (set before it, or the fork server, imports torch); an owner's own setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self._ctx: SpawnContext | ForkServerContext = (
            multiprocessing.get_context("forkserver") if start_method == "forkserver"
            else multiprocessing.get_context("spawn"))
        if start_method == "forkserver":
            # The server imports torch once; each worker is then forked from it in milliseconds, not ~1.5 s.
            self._ctx.set_forkserver_preload(["fleetgrid.agent.worker", "fleetgrid.workloads.inference",
                                              "fleetgrid.workloads.batch_inference.task"])
        self._lock = threading.Lock()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._stopped = False

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    def start(self) -> None:
        """Start the child if none is running (``run`` does this itself; calling it early hides the start-up)."""
        with self._lock:
            if self._process is not None and self._process.is_alive():
                return
            if self._conn is not None:
                self._conn.close()  # the pipe of a child that stop() killed between units
            parent, child = self._ctx.Pipe()
            process = self._ctx.Process(
                target=_serve, args=(child, self._factory, self.threads), name="fleetgrid-worker", daemon=True
            )
            process.start()
            child.close()  # so the parent's end sees EOF the moment the child dies
            self._process, self._conn, self._stopped = process, parent, False

    def run(self, task: WorkerTask, on_progress: Callable[[int], None] | None = None) -> Path:
        """Run ``task`` and return ``task.result_path``; ``on_progress(done)`` follows each checkpoint, with the
        items done of a unit or the steps done of a training task.

        Raises :class:`Preempted` if :meth:`stop` was called, the child's own errors.py error if the unit is bad
        (an unknown model, inputs of the wrong shape, a data spec this car cannot build), and
        :class:`FleetgridError` if the child died otherwise. If ``on_progress`` raises, the child is killed and
        the exception propagates.
        """
        self.start()
        conn = self._conn
        assert conn is not None
        done = task.start
        try:
            conn.send(task)
            while True:
                kind, *payload = conn.recv()
                if kind == "progress":
                    done = payload[0]
                    if on_progress is not None:
                        on_progress(done)
                elif kind == "done":
                    return task.result_path
                else:
                    break  # the child refused the unit and is ready for the next one
        except (EOFError, OSError) as exc:
            self._reap()
            if self._stopped:
                raise errors.Preempted(
                    f"worker stopped running {task.describe(done)}; its checkpoint holds that work"
                ) from exc
            raise errors.FleetgridError(f"worker process died running {task.describe(done)} ({exc!r})") from exc
        except BaseException:
            # on_progress raised (or we were interrupted) with the child mid-unit: never leave it running a unit
            # whose answer nobody will read, or its messages would be taken for the next unit's.
            self.stop()
            self._reap()
            raise
        raise _child_error(*payload)

    def stop(self) -> bool:
        """Kill the child now and return once it is gone; True if this call killed one. Safe from any thread."""
        with self._lock:
            process = self._process
            if process is None or self._stopped:
                return False
            self._stopped = True
            process.kill()
            process.join(timeout=5.0)
            if process.is_alive():
                raise errors.FleetgridError(f"worker process {process.pid} survived SIGKILL for 5 s")
            return True

    def close(self) -> None:
        """Ask an idle child to exit, killing it if it does not within a second."""
        with self._lock:
            process, conn = self._process, self._conn
            if process is None or conn is None:
                return
            try:
                conn.send(None)
            except OSError:
                pass
            process.join(timeout=1.0)
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()
            self._process = self._conn = None

    def _reap(self) -> None:
        with self._lock:
            if self._process is not None:
                self._process.join(timeout=5.0)
            if self._conn is not None:
                self._conn.close()
            self._process = self._conn = None


def _child_error(code: str, message: str) -> errors.FleetgridError:
    for name in errors.__all__:
        cls = getattr(errors, name)
        if issubclass(cls, errors.FleetgridError) and cls.code == code:
            return cls(message)
    return errors.FleetgridError(message)


# --- the child process -----------------------------------------------------------------------------------------


def _serve(conn: Connection, factory: RunnerFactory | None, threads: int | None) -> None:
    """The child's loop: receive a task, execute it, answer; a None task ends the loop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides, not us
    _keep_tqdm_in_process()
    from fleetgrid.workloads.base import WorkerCache

    cache = WorkerCache(threads, factory)

    def progress(done: int) -> None:
        conn.send(("progress", done))

    while (task := conn.recv()) is not None:
        try:
            task.execute(cache, progress)
            conn.send(("done",))
        except errors.FleetgridError as exc:
            conn.send(("error", exc.code, exc.message))
        except Exception as exc:  # noqa: BLE001 - the task's fault or a bug: report it, keep serving
            conn.send(("error", "internal", f"{type(exc).__name__}: {exc}"))


def _keep_tqdm_in_process() -> None:
    """Give tqdm a thread lock before any model library draws a bar with it.

    By default tqdm's first bar creates a ``multiprocessing.RLock``: a named semaphore, registered with the
    resource tracker this process shares with the agent. Loading MiniLM (transformers, sentence-transformers) makes
    such a bar, and this process is SIGKILLed by design, so it never unlinks it; the tracker then cleans up after
    every killed worker and warns "leaked semaphore objects" when the agent exits. Nothing shares tqdm's lock with
    another process here, so a thread lock is enough.
    """
    try:
        from tqdm import tqdm
    except ImportError:
        return
    tqdm.set_lock(threading.RLock())
