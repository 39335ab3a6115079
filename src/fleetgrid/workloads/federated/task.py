"""The worker side of a share of a training round: train the global weights for ``local['steps']`` steps on the
shard the car builds itself, writing the local weights after the first step and every few steps after (atomic
rename) so that a preempted car can still send the steps it did.

A preemption kills the worker, and the next share starts a fresh one; the car's shard is therefore kept on its
disk once built, so a restarted worker is training again in the time it takes to import torch, not to regenerate
its data (MNIST-1D took seconds to tens of seconds on a busy car, long enough for the next trip to catch the share
before its first step, leaving no partial update to send)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fleetgrid import errors
from fleetgrid.workloads.base import WorkerCache, WorkerTask

__all__ = ["TrainState", "TrainTask", "load_train_state", "save_train_state"]


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


@dataclass(frozen=True, slots=True)
class TrainTask(WorkerTask):
    """A share of a training round for the child. Every field is plain data, so the task pickles cheaply."""

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
    shard_cache: Path | None = None
    """A folder that outlives the worker, where the car's shard is kept once built (None: rebuilt per worker)."""

    def describe(self, done: int) -> str:
        return f"{self.model_name} at step {done}"

    def execute(self, cache: WorkerCache, progress: Callable[[int], None]) -> None:
        import torch

        from fleetgrid.workloads.training import (
            FlatLayout,
            LocalTrainingConfig,
            TrainInstructions,
            config_from_dict,
            train_locally,
        )

        local = config_from_dict(LocalTrainingConfig, self.local)
        model = cache.get(("train-model", self.model_name), lambda: _build_model(self.model_name, cache.threads))
        dataset = local_dataset(cache, self.data, self.shard, self.shard_cache)
        global_params = torch.from_numpy(np.load(self.global_path, allow_pickle=False))
        instructions = TrainInstructions(round=self.round, base_version=self.base_version,
                                         model_digest=self.model_digest, local=local, seed=self.seed)
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
            if steps > 1 and steps % every and time.monotonic() - last_saved < 0.5:
                return
            save(self.checkpoint_path)
            last_saved = time.monotonic()
            progress(steps)

        train_locally(model, global_params, dataset, instructions, client_id="car", on_step=on_step)
        save(self.result_path)


def _build_model(name: str, threads: int | None) -> Any:
    import torch

    from fleetgrid.workloads.training import build_model

    if threads is not None:
        torch.set_num_threads(threads)  # as load_runner does for inference
    return build_model(name)


def local_dataset(cache: WorkerCache, data: dict[str, Any], shard: int, folder: Path | None = None) -> Any:
    """The car's own shard of ``data``, kept in the worker across tasks (one at a time: a car trains round after
    round of one job, and regenerating its shard every round would cost seconds), and, given a ``folder``, on disk
    for the next worker (in-memory arrays only: a text shard is rebuilt from its files)."""
    from fleetgrid.workloads.training import ArrayDataset, DataSpec, build_local_dataset

    key = json.dumps([data, shard], sort_keys=True)
    path = None if folder is None else folder / f"shard-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"

    def build() -> Any:
        if path is not None and path.exists():
            try:
                with np.load(path, allow_pickle=False) as saved:
                    return ArrayDataset(saved["x"], saved["y"])
            except (OSError, ValueError, KeyError, errors.InvalidInput):
                path.unlink(missing_ok=True)  # a torn or foreign file: build it again
        try:
            spec = DataSpec(**data)
        except TypeError as exc:
            raise errors.InvalidInput(f"data spec {data} is not a DataSpec: {exc}") from exc
        dataset = build_local_dataset(spec, shard)
        if path is not None and isinstance(dataset, ArrayDataset):
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as fh:
                np.savez(fh, x=dataset.x.numpy(), y=dataset.y.numpy())
            os.replace(tmp, path)
        return dataset

    return cache.replace("local-dataset", key, build)
