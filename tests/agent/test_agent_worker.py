"""The worker process: runs units, checkpoints after every batch, caches models, and dies fast on stop()."""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fake_models import expected, npy, summax_factory

from fleetgrid import errors
from fleetgrid.agent.worker import WorkerProcess
from fleetgrid.workloads.batch_inference.task import UnitTask


def _task(tmp: Path, items: np.ndarray, *, batch: int = 4, start: int = 0, resume: np.ndarray | None = None,
          name: str = "fake-summax", count: int | None = None) -> UnitTask:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "input").write_bytes(npy(items))
    resume_path = None
    if resume is not None:
        resume_path = tmp / "resume.npy"
        resume_path.write_bytes(npy(resume))
    return UnitTask(
        model_name=name, model_file=None, model_digest=None, items_path=tmp / "input", items_format="npy",
        items=len(items) if count is None else count, batch_size=batch, checkpoint_path=tmp / "checkpoint.npy",
        result_path=tmp / "result.npy", start=start, resume_path=resume_path,
    )


@pytest.fixture
def items() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(22, 5)).astype(np.float32)


def test_a_unit_runs_to_a_result_with_a_checkpoint_after_every_batch(tmp_path, items):
    log = tmp_path / "loads.txt"
    worker = WorkerProcess(runner_factory=functools.partial(summax_factory, log=log))
    seen: list[int] = []
    try:
        path = worker.run(_task(tmp_path / "a", items), seen.append)
        pid = worker.pid
        worker.run(_task(tmp_path / "b", items[:7]))
        assert worker.pid == pid, "the second unit ran in the same long-lived process"
    finally:
        worker.close()
    np.testing.assert_array_equal(np.load(path), expected(items))
    assert seen == [4, 8, 12, 16, 20, 22]
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "checkpoint.npy"), expected(items))
    assert log.read_text().splitlines() == [f"fake-summax {pid}"], "the model was loaded once for both units"
    assert worker.pid is None


def test_a_resumed_unit_keeps_the_checkpoint_rows_and_computes_only_the_rest(tmp_path, items):
    head = np.full((8, 2), 7.0, dtype=np.float32)  # not what the model gives: proves the rows were not recomputed
    worker = WorkerProcess(runner_factory=summax_factory)
    seen: list[int] = []
    try:
        result = np.load(worker.run(_task(tmp_path, items, start=8, resume=head), seen.append))
    finally:
        worker.close()
    np.testing.assert_array_equal(result[:8], head)
    np.testing.assert_array_equal(result[8:], expected(items)[8:])
    assert seen == [12, 16, 20, 22]


def test_a_bad_unit_raises_the_childs_error_and_the_process_keeps_serving(tmp_path, items):
    worker = WorkerProcess(runner_factory=summax_factory)
    try:
        with pytest.raises(errors.InvalidInput, match="holds 22 items; the lease says 30"):
            worker.run(_task(tmp_path / "a", items, count=30))
        pid = worker.pid
        with pytest.raises(errors.InvalidInput, match="needs exactly that many"):
            worker.run(_task(tmp_path / "b", items, start=8, resume=np.zeros((3, 2), np.float32)))
        worker.run(_task(tmp_path / "c", items))
        assert worker.pid == pid
    finally:
        worker.close()


def test_a_raising_progress_callback_kills_the_child_and_the_next_unit_starts_clean(tmp_path, items):
    worker = WorkerProcess(runner_factory=summax_factory)

    def refuse(done: int) -> None:
        raise errors.LeaseExpired("lease gone")

    try:
        with pytest.raises(errors.LeaseExpired):
            worker.run(_task(tmp_path / "a", items), refuse)
        assert worker.pid is None
        np.testing.assert_array_equal(np.load(worker.run(_task(tmp_path / "b", items[:5]))), expected(items[:5]))
    finally:
        worker.close()


def _run_until_stopped(worker: WorkerProcess, task: UnitTask, batches: int) -> tuple[float, int, Exception | None]:
    """Start ``task``, stop the worker from this thread once ``batches`` batches are done; (stop ms, last done, error)."""
    progressed = threading.Event()
    last = [0]

    def on_progress(done: int) -> None:
        last[0] = done
        if done >= batches * task.batch_size:
            progressed.set()

    outcome: list[Exception | None] = [None]

    def target() -> None:
        try:
            worker.run(task, on_progress)
        except Exception as exc:  # noqa: BLE001 - handed to the asserting thread
            outcome[0] = exc

    runner = threading.Thread(target=target)
    runner.start()
    assert progressed.wait(60), "the unit never reached the batch to stop at"
    t0 = time.perf_counter()
    killed = worker.stop()
    stop_ms = (time.perf_counter() - t0) * 1000
    runner.join(10)
    assert killed and not runner.is_alive()
    return stop_ms, last[0], outcome[0]


def test_stop_kills_the_process_at_once_and_the_checkpoint_survives(tmp_path, items):
    worker = WorkerProcess(runner_factory=functools.partial(summax_factory, delay_s=0.05))
    task = _task(tmp_path, items, batch=2)
    pid_holder = []
    worker.start()
    pid_holder.append(worker.pid)
    _, last_done, error = _run_until_stopped(worker, task, batches=3)
    assert isinstance(error, errors.Preempted)
    assert worker.pid is None and not Path(f"/proc/{pid_holder[0]}").exists()
    checkpoint = np.load(task.checkpoint_path)
    assert len(checkpoint) >= last_done >= 6 and len(checkpoint) < len(items)
    np.testing.assert_array_equal(checkpoint, expected(items)[: len(checkpoint)])
    assert worker.stop() is False, "a second stop finds nothing to kill"
    # The next unit starts a fresh process and resumes from the surviving checkpoint.
    resumed = _task(tmp_path / "again", items, batch=2, start=len(checkpoint), resume=checkpoint)
    try:
        np.testing.assert_array_equal(np.load(worker.run(resumed)), expected(items))
    finally:
        worker.close()


def test_twenty_stops_in_a_row_each_end_their_worker_process(tmp_path, items):
    # 'forkserver' imports torch once, so twenty fresh (torch-loaded) workers cost seconds, not half a minute.
    # How fast a stop is belongs to bench/inference.py (preemption latency), not to a test on a shared machine.
    worker = WorkerProcess(runner_factory=functools.partial(summax_factory, delay_s=0.02), start_method="forkserver")
    pids: list[int] = []
    latencies: list[float] = []
    for i in range(20):
        worker.start()
        pids.append(worker.pid)
        stop_ms, _, error = _run_until_stopped(worker, _task(tmp_path / str(i), items, batch=1), batches=2)
        assert isinstance(error, errors.Preempted)
        assert worker.pid is None and not Path(f"/proc/{pids[-1]}").exists(), f"stop {i} left its worker alive"
        latencies.append(stop_ms)
    assert len(set(pids)) == 20, "every unit after a stop runs in a fresh process"
    p50, p99 = np.percentile(latencies, [50, 99])
    print(f"worker stop latency over {len(latencies)} stops: p50 {p50:.1f} ms, p99 {p99:.1f} ms")


def test_the_built_in_model_runs_in_the_worker_with_capped_threads(tmp_path):
    from fleetgrid.workloads.inference import run_local

    x = np.random.default_rng(1).normal(size=(40, 40)).astype(np.float32)
    worker = WorkerProcess(threads=1)
    try:
        result = np.load(worker.run(_task(tmp_path, x, batch=16, name="mnist1d-cnn")))
    finally:
        worker.close()
    assert result.shape == (40, 10) and result.dtype == np.float32
    np.testing.assert_allclose(result, run_local("mnist1d-cnn", x, batch_size=16), rtol=1e-5, atol=1e-5)


def test_bad_settings_are_refused():
    with pytest.raises(errors.InvalidInput, match="threads must be >= 1"):
        WorkerProcess(threads=0)
    with pytest.raises(errors.InvalidInput, match="expected 'spawn' or 'forkserver'"):
        WorkerProcess(start_method="fork")
