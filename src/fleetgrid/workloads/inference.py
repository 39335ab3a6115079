"""The compute side of batch inference: run a loaded model over a sequence of items in batches.

The same loop runs a work unit on a car (inside the worker process, checkpointing through ``on_batch``) and a
whole job locally (`run_local`), which is the reference a fleet result is compared with. Batches start at fixed
multiples of ``batch_size`` counted from item 0, whatever ``start`` is, so a unit resumed from a checkpoint sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from fleetgrid.errors import InvalidInput
from fleetgrid.models.registry import get_model_spec, load_runner
from fleetgrid.models.spec import Runner
from fleetgrid.workloads.inputs import Items

__all__ = ["run_items", "run_local"]

OnBatch = Callable[[int, np.ndarray], None]


def run_items(
    runner: Runner,
    items: Items,
    batch_size: int,
    start: int = 0,
    on_batch: OnBatch | None = None,
) -> np.ndarray:
    """Outputs for ``items[start:]``, float32 ``(len(items) - start, *output_shape)``.

    After each batch, ``on_batch(done, outputs)`` is called with ``done`` the number of items of ``items``
    finished so far (``start`` included: resume with ``start=done``) and ``outputs`` the rows computed by this
    call, ``(done - start, *output_shape)``. ``outputs`` is a view into the result being filled: copy it (or
    encode it) before the callback returns if it must outlive the call. A callback may raise to stop the run
    (e.g. `Preempted`); the exception propagates unchanged.
    """
    n = len(items)
    if batch_size < 1:
        raise InvalidInput(f"batch_size {batch_size}; expected a positive integer")
    if not 0 <= start <= n:
        raise InvalidInput(f"start {start} is outside the {n} items; expected 0 <= start <= {n}")
    name = runner.spec.name
    out: np.ndarray | None = None
    lo = start
    while lo < n:
        hi = min((lo // batch_size + 1) * batch_size, n)  # next multiple of batch_size: fixed boundaries
        y = runner(items[lo:hi])
        if not isinstance(y, np.ndarray) or y.ndim < 1 or len(y) != hi - lo:
            got = f"shape {y.shape}" if isinstance(y, np.ndarray) else type(y).__name__
            raise InvalidInput(f"model {name!r} returned {got} for {hi - lo} items; expected one row per item")
        if out is None:
            # Allocated once the first batch reveals the output shape, so the loop never re-copies rows.
            out = np.empty((n - start, *y.shape[1:]), dtype=np.float32)  # (n - start, *out)
        elif y.shape[1:] != out.shape[1:]:
            raise InvalidInput(
                f"model {name!r} returned rows of shape {y.shape[1:]} for items {lo}..{hi - 1} after "
                f"{out.shape[1:]} earlier; expected the same output shape for every batch"
            )
        out[lo - start : hi - start] = y
        lo = hi
        if on_batch is not None:
            on_batch(hi, out[: hi - start])
    if out is None:  # start == n: nothing left to run
        return np.empty((0, *(runner.spec.output_shape or ())), dtype=np.float32)
    return out


def run_local(
    name: str,
    items: Items,
    batch_size: int | None = None,
    model_file: str | Path | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Run model ``name`` over all ``items`` in this process: the reference a fleet result must match.

    Fleet units of ``spec.default_unit_items`` (a multiple of the default batch size) see the same batches as
    this loop does with the default ``batch_size``, so even for a model whose outputs depend on how a batch is
    padded (MiniLM) the fleet's rows come from the same batches as these.
    """
    spec = get_model_spec(name)
    runner = load_runner(name, model_file=model_file, threads=threads)
    return run_items(runner, items, batch_size or spec.default_batch_size)
