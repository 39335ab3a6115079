"""Fake models for the agent's tests: a numpy model that may be slowed down, and the real registry's runner slowed.

The worker's spawned child imports the runner factories from here (tests/conftest.py puts this directory on
sys.path), so everything is module-level. ``fake-summax`` is registered with the model registry on import, so the
in-process coordinator plans jobs of it as it would of any registered model.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import numpy as np

from fleetgrid import errors
from fleetgrid.models.registry import register
from fleetgrid.models.spec import ModelSpec

ROW = 2  # output columns of the fake model
ITEM = 3  # input columns of the fake model


class SumMaxRunner:
    """Maps each item (a row of floats) to ``[sum, max]``, sleeping ``delay_s`` per batch so tests can preempt it."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.spec = SUMMAX

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.delay_s)
        x = np.asarray(batch, dtype=np.float32)
        return np.stack([x.sum(axis=1), x.max(axis=1)], axis=1).astype(np.float32)  # (B, 2)


SUMMAX = register(ModelSpec(
    name="fake-summax", description="test model: [sum, max] of each row", input_kind="array", item_shape=(ITEM,),
    input_dtype="float32", output_shape=(ROW,), default_batch_size=4, default_unit_items=8, needs_model_file=False,
    extra=None, loader=lambda _file: SumMaxRunner(0.0),
))


def summax_factory(
    name: str,
    model_file: Path | None = None,
    threads: int | None = None,
    delay_s: float = 0.0,
    log: Path | None = None,
):
    """A runner factory for :class:`WorkerProcess` (bind ``delay_s``/``log`` with functools.partial); each call
    appends ``name pid`` to ``log``, so tests can count model loads. A model file, if named, must exist."""
    if model_file is not None and not Path(model_file).is_file():
        raise errors.InvalidInput(f"model file {model_file} does not exist")
    if log is not None:
        with open(log, "a") as fh:
            fh.write(f"{name} {os.getpid()}\n")
    return SumMaxRunner(delay_s)


def slow_registry_factory(name: str, model_file: Path | None = None, threads: int | None = None, delay_s: float = 0.0):
    """The real registry's runner for ``name``, slowed by ``delay_s`` a batch so a test can preempt it mid-unit."""
    from fleetgrid.models.registry import load_runner

    runner = load_runner(name, model_file=model_file, threads=threads)

    def slow(batch):
        time.sleep(delay_s)
        return runner(batch)

    slow.spec = runner.spec
    return slow


def expected(items: np.ndarray) -> np.ndarray:
    return SumMaxRunner(0.0)(items)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
