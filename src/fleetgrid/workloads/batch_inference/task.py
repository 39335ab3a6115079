"""The worker side of an inference unit: run the model over the unit's items batch by batch, writing the result
rows done so far to a checkpoint after every batch (atomic rename), so a SIGKILL loses at most one batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fleetgrid import errors
from fleetgrid.workloads.base import WorkerCache, WorkerTask, save_atomic

__all__ = ["UnitTask"]


@dataclass(frozen=True, slots=True)
class UnitTask(WorkerTask):
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

    def describe(self, done: int) -> str:
        return f"{self.model_name} at {done} of {self.items} items"

    def execute(self, cache: WorkerCache, progress: Callable[[int], None]) -> None:
        from fleetgrid.models.registry import load_runner
        from fleetgrid.workloads.inference import run_items
        from fleetgrid.workloads.inputs import decode_items

        factory = cache.runner_factory or load_runner
        runner = cache.get(("runner", self.model_name, self.model_digest),
                           lambda: factory(self.model_name, model_file=self.model_file, threads=cache.threads))
        items = decode_items(self.items_path.read_bytes(), self.items_format)
        if len(items) != self.items:
            raise errors.InvalidInput(
                f"input shard {self.items_path} holds {len(items)} items; the lease says {self.items}")
        head = self._load_resume()

        def on_batch(done: int, outputs: np.ndarray) -> None:
            save_atomic(self.checkpoint_path, _joined(head, outputs))
            progress(done)

        outputs = run_items(runner, items, self.batch_size, start=self.start, on_batch=on_batch)
        save_atomic(self.result_path, _joined(head, outputs))

    def _load_resume(self) -> np.ndarray | None:
        if self.start == 0:
            return None
        if self.resume_path is None:
            raise errors.InvalidInput(f"unit resumes at item {self.start} but names no checkpoint to resume from")
        head = np.load(self.resume_path, allow_pickle=False)
        if head.shape[0] != self.start:
            raise errors.InvalidInput(
                f"checkpoint {self.resume_path} has {head.shape[0]} rows; resuming at item {self.start} needs "
                "exactly that many"
            )
        return head


def _joined(head: np.ndarray | None, outputs: np.ndarray) -> np.ndarray:
    tail = np.asarray(outputs, dtype=np.float32)
    return tail if head is None else np.concatenate([head.astype(np.float32, copy=False), tail])
