"""The preemptable executor: one long-lived child process that runs work units and can be killed at any instant.

The child loads each model once and runs a unit batch by batch, writing the partial result to a checkpoint file
(atomic rename) after every batch. That file is the only recovery point, so :meth:`WorkerProcess.stop` may simply
SIGKILL the child: the driver gets the computer back in milliseconds, and the next unit starts a fresh process.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fleetgrid import errors

__all__ = ["RunnerFactory", "UnitTask", "WorkerProcess", "save_atomic"]

RunnerFactory = Callable[..., Callable[[Any], np.ndarray]]
"""``factory(name, model_file=path_or_None, threads=n_or_None) -> runner``; must be picklable (a module-level
function), since the child process receives it. The default is :func:`fleetgrid.models.registry.load_runner`."""


@dataclass(frozen=True, slots=True)
class UnitTask:
    """One unit for the child: where its inputs are, where to resume from, and where to write."""

    model_name: str
    model_file: Path | None
    """The user's model file on disk, or None for a built-in model."""
    model_digest: str | None
    """sha256 of ``model_file``: with the name, the key of the child's runner cache."""
    items_path: Path
    items_format: str
    """``"npy"`` or ``"jsonl"``, as :func:`fleetgrid.workloads.inputs.decode_items` reads it."""
    items: int
    """Items in the shard; the result has this many rows."""
    batch_size: int
    checkpoint_path: Path
    """Rewritten after every batch with the result rows for items ``[0, done)``."""
    result_path: Path
    start: int = 0
    """Items already done; ``resume_path`` holds their result rows."""
    resume_path: Path | None = None


def save_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as .npy so that a reader (or a SIGKILL) sees either the old file or the new one, whole."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
    os.replace(tmp, path)


class WorkerProcess:
    """Runs :class:`UnitTask`\\ s in a child process started with the 'spawn' (default) or 'forkserver' context.

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
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # The server imports torch once; each worker is then forked from it in milliseconds, not ~1.5 s.
            self._ctx.set_forkserver_preload(["fleetgrid.agent.worker", "fleetgrid.workloads.inference"])
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

    def run(self, task: UnitTask, on_progress: Callable[[int], None] | None = None) -> Path:
        """Run ``task`` and return ``task.result_path``; ``on_progress(done_items)`` follows each checkpoint.

        Raises :class:`Preempted` if :meth:`stop` was called, the child's own errors.py error if the unit is bad
        (an unknown model, inputs of the wrong shape), and :class:`FleetgridError` if the child died otherwise.
        If ``on_progress`` raises, the child is killed and the exception propagates.
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
                    f"worker stopped at {done} of {task.items} items; the checkpoint {task.checkpoint_path} holds them"
                ) from exc
            raise errors.FleetgridError(
                f"worker process died running {task.model_name} at {done} of {task.items} items ({exc!r})"
            ) from exc
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
    """The child's loop: receive a task, run it, answer; a None task ends the loop.

    ``threads`` goes to the factory, which sets torch's intra-op threads for this process (``load_runner`` does).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides, not us
    if factory is None:
        from fleetgrid.models.registry import load_runner as factory
    runners: dict[tuple[str, str | None], Callable[[Any], np.ndarray]] = {}
    while (task := conn.recv()) is not None:
        try:
            key = (task.model_name, task.model_digest)
            if key not in runners:
                runners[key] = factory(task.model_name, model_file=task.model_file, threads=threads)
            _run_unit(task, runners[key], conn)
            conn.send(("done",))
        except errors.FleetgridError as exc:
            conn.send(("error", exc.code, exc.message))
        except Exception as exc:  # noqa: BLE001 - the unit's fault or a bug: report it, keep serving
            conn.send(("error", "internal", f"{type(exc).__name__}: {exc}"))


def _run_unit(task: UnitTask, runner: Callable[[Any], np.ndarray], conn: Connection) -> None:
    from fleetgrid.workloads.inference import run_items
    from fleetgrid.workloads.inputs import decode_items

    items = decode_items(task.items_path.read_bytes(), task.items_format)
    if len(items) != task.items:
        raise errors.InvalidInput(f"input shard {task.items_path} holds {len(items)} items; the lease says {task.items}")
    head = _load_resume(task)

    def on_batch(done: int, outputs: np.ndarray) -> None:
        save_atomic(task.checkpoint_path, _joined(head, outputs))
        conn.send(("progress", done))

    outputs = run_items(runner, items, task.batch_size, start=task.start, on_batch=on_batch)
    save_atomic(task.result_path, _joined(head, outputs))


def _load_resume(task: UnitTask) -> np.ndarray | None:
    if task.start == 0:
        return None
    if task.resume_path is None:
        raise errors.InvalidInput(f"unit resumes at item {task.start} but names no checkpoint to resume from")
    head = np.load(task.resume_path, allow_pickle=False)
    if head.shape[0] != task.start:
        raise errors.InvalidInput(
            f"checkpoint {task.resume_path} has {head.shape[0]} rows; resuming at item {task.start} needs exactly that many"
        )
    return head


def _joined(head: np.ndarray | None, outputs: np.ndarray) -> np.ndarray:
    tail = np.asarray(outputs, dtype=np.float32)
    return tail if head is None else np.concatenate([head.astype(np.float32, copy=False), tail])
