"""The worker side of serving: one forward pass over a batch of texts, the model kept loaded in the worker between
batches (the :class:`WorkerCache`), so only the first batch after a restart pays for loading it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fleetgrid import errors
from fleetgrid.workloads.base import WorkerCache, WorkerTask, save_atomic

__all__ = ["EmbedTask"]


@dataclass(frozen=True, slots=True)
class EmbedTask(WorkerTask):
    model_name: str
    texts: tuple[str, ...]
    result_path: Path

    def describe(self, done: int) -> str:
        return f"{self.model_name} on {len(self.texts)} texts"

    def execute(self, cache: WorkerCache, progress: Callable[[int], None]) -> None:
        from fleetgrid.models.registry import load_runner

        factory = cache.runner_factory or load_runner
        runner = cache.get(("runner", self.model_name, None),
                           lambda: factory(self.model_name, model_file=None, threads=cache.threads))
        out = np.asarray(runner(list(self.texts)), dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != len(self.texts):
            raise errors.InputShapeError(f"{self.model_name} returned shape {out.shape} for {len(self.texts)} texts")
        save_atomic(self.result_path, out)
        progress(len(self.texts))
