"""The preemptable executor: one long-lived child process that runs work units and can be killed at any instant.

The child loads each model once and runs a unit batch by batch, writing the partial result to a checkpoint file
(atomic rename) after every batch; a training task likewise writes its local weights every few steps. That file is
the only recovery point, so :meth:`WorkerProcess.stop` may simply SIGKILL the child: the driver gets the computer
back in milliseconds, and the next unit starts a fresh process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fleetgrid import errors

__all__ = [
    "RunnerFactory",
    "TrainState",
    "TrainTask",
    "UnitTask",
    "WorkerProcess",
    "load_train_state",
    "save_atomic",
    "save_train_state",
]

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


@dataclass(frozen=True, slots=True)
class TrainTask:
    """A share of a training round for the child: train ``local['steps']`` steps from the global weights on the
    shard it builds itself, checkpointing as it goes. Every field is plain data, so the task pickles cheaply."""

    model_name: str
    """A built-in trainable model (``fleetgrid.workloads.training.tasks.MODELS``)."""
    global_path: Path
    """The global weights to start from: a flat float32 .npy."""
    model_digest: str
    """``params_digest`` of those weights."""
    data: dict[str, Any]
    """A ``DataSpec`` as JSON; with ``shard``, the key of the child's dataset cache."""
    shard: int
    local: dict[str, Any]
    """A ``LocalTrainingConfig`` as JSON."""
    seed: int
    round: int
    base_version: int
    checkpoint_path: Path
    """Rewritten (a :class:`TrainState`) every ``max(1, H // 10)`` steps and at least every 0.5 s of training."""
    result_path: Path


@dataclass(frozen=True, slots=True)
class TrainState:
    """Local weights after ``steps_done`` steps: a training task's checkpoint and its result have this form."""

    params: np.ndarray
    """(P,) float32: the local model, flat."""
    steps_done: int
    examples_seen: int
    loss_sum: float
    """Sum of the per-step mean losses; ``loss_sum / steps_done`` is the report's train loss."""
    num_examples: int
    """Size of the car's local dataset (FedAvg's weight)."""


def save_train_state(path: Path, state: TrainState) -> None:
    """Write ``state`` as one .npz by atomic rename, so a SIGKILL leaves the old file or the new one, whole."""
    tmp = path.with_name(path.name + ".tmp")
    counts = json.dumps([state.steps_done, state.examples_seen, state.num_examples])
    with open(tmp, "wb") as fh:
        np.savez(fh, params=state.params, loss_sum=np.float64(state.loss_sum), counts=counts)
    os.replace(tmp, path)


def load_train_state(path: Path) -> TrainState | None:
    """The state saved at ``path``, or None if none was written."""
    try:
        with np.load(path, allow_pickle=False) as data:
            steps_done, examples_seen, num_examples = json.loads(str(data["counts"]))
            return TrainState(data["params"], steps_done, examples_seen, float(data["loss_sum"]), num_examples)
    except FileNotFoundError:
        return None


def save_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as .npy so that a reader (or a SIGKILL) sees either the old file or the new one, whole."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
    os.replace(tmp, path)


class WorkerProcess:
    """Runs :class:`UnitTask`\\ s and :class:`TrainTask`\\ s in a child process started with the 'spawn' (default)
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

    def run(self, task: UnitTask | TrainTask, on_progress: Callable[[int], None] | None = None) -> Path:
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
        done = task.start if isinstance(task, UnitTask) else 0
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
                    f"worker stopped at {_progress(task, done)}; the checkpoint {task.checkpoint_path} holds that work"
                ) from exc
            raise errors.FleetgridError(
                f"worker process died running {task.model_name} at {_progress(task, done)} ({exc!r})"
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


def _progress(task: UnitTask | TrainTask, done: int) -> str:
    return f"{done} of {task.items} items" if isinstance(task, UnitTask) else f"step {done}"


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
    trainer = _TrainCache(threads)
    while (task := conn.recv()) is not None:
        try:
            if isinstance(task, TrainTask):
                _run_training(task, trainer, conn)
            else:
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


class _TrainCache:
    """The child's trainable models (one per name) and its last local dataset, kept across training tasks: a car
    trains round after round of one job, and regenerating its shard every round would cost seconds."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads
        self._models: dict[str, Any] = {}
        self._dataset: tuple[str, Any] | None = None

    def model(self, name: str) -> Any:
        if name not in self._models:
            import torch

            from fleetgrid.workloads.training import build_model

            if self.threads is not None:
                torch.set_num_threads(self.threads)  # as load_runner does for inference
            self._models[name] = build_model(name)
        return self._models[name]

    def dataset(self, data: dict[str, Any], shard: int) -> Any:
        from fleetgrid.workloads.training import DataSpec, build_local_dataset

        key = json.dumps([data, shard], sort_keys=True)
        if self._dataset is None or self._dataset[0] != key:
            try:
                spec = DataSpec(**data)
            except TypeError as exc:
                raise errors.InvalidInput(f"data spec {data} is not a DataSpec: {exc}") from exc
            self._dataset = None  # let the old shard go before the new one is built
            self._dataset = (key, build_local_dataset(spec, shard))
        return self._dataset[1]


def _run_training(task: TrainTask, cache: _TrainCache, conn: Connection) -> None:
    import torch

    from fleetgrid.workloads.training import (
        FlatLayout,
        LocalTrainingConfig,
        TrainInstructions,
        config_from_dict,
        train_locally,
    )

    local = config_from_dict(LocalTrainingConfig, task.local)
    model = cache.model(task.model_name)
    dataset = cache.dataset(task.data, task.shard)
    global_params = torch.from_numpy(np.load(task.global_path, allow_pickle=False))
    instructions = TrainInstructions(
        round=task.round, base_version=task.base_version, model_digest=task.model_digest, local=local, seed=task.seed
    )
    layout = FlatLayout.of(model)
    every = max(1, local.steps // 10)
    last_saved = time.monotonic()
    counts = (0, 0, 0.0)  # steps, examples, loss sum after the last step

    def save(path: Path) -> None:
        steps, examples, loss_sum = counts
        params = layout.flatten(model).numpy()  # (P,) the local weights so far
        save_train_state(path, TrainState(params, steps, examples, loss_sum, num_examples=len(dataset)))

    def on_step(steps: int, examples: int, loss_sum: float) -> None:
        nonlocal counts, last_saved
        counts = (steps, examples, loss_sum)
        if steps % every and time.monotonic() - last_saved < 0.5:
            return
        save(task.checkpoint_path)
        last_saved = time.monotonic()
        conn.send(("progress", steps))

    train_locally(model, global_params, dataset, instructions, client_id="car", on_step=on_step)
    save(task.result_path)
