"""Group commit: one thread applies the lease cycles of many cars in one database transaction each.

A lease cycle (a car's completion and its next lease) is a handful of small statements; committing each on its own
costs more than running them, and on SQLite every writer waits for the single write lock in turn. Here callers
queue their work as functions; one thread takes everything queued, opens one transaction, runs each function
inside its own savepoint (a refused report rolls back only its own statements) and commits once. Each caller's
future resolves only after that commit: what is acknowledged is durable, as it would be with a commit per call.

While a batch runs, the store's own write transactions on that thread join it (``SQLStore._write`` looks up
:attr:`GroupCommit.bound`), so code written against the store runs unchanged inside a batch. Work that must wait
for the commit (waking long-polls, assembling a finished job) is registered with :meth:`after_commit`.

On SQLite, other threads' write transactions take turns with the batches (:meth:`turn`): first come, first served,
so neither the lease cycles nor the rare writes beside them (a submission, the sweeper) starve.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

__all__ = ["GroupCommit"]

log = logging.getLogger("fleetgrid.coordinator.store")

T = TypeVar("T")

MAX_BATCH = 256
"""Operations per transaction at most: enough to amortise a commit, few enough that one batch is quick."""


class _Turn:
    """Another thread's request to run one write transaction of its own between two batches."""

    def __init__(self) -> None:
        self.granted = threading.Event()
        self.done = threading.Event()


class _Op:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[], Any], future: Future) -> None:
        self.fn, self.future = fn, future


class GroupCommit:
    """The batching thread of one store.

    ``begin`` opens the batch's transaction (a context manager yielding the connection);
    ``savepoint(conn)`` opens a nested one around each operation.
    """

    def __init__(self, begin: Callable[[], AbstractContextManager[Any]],
                 savepoint: Callable[[Any], AbstractContextManager[Any]], *, name: str = "group-commit") -> None:
        self._begin, self._savepoint = begin, savepoint
        self._queue: queue.SimpleQueue[_Op | _Turn | None] = queue.SimpleQueue()
        self._local = threading.local()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- what callers use ---------------------------------------------------------------------------------------
    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` in the next batch; the future holds its result (or what it raised) once that batch committed
        (or failed to commit: then every operation of the batch fails with the commit's error)."""
        future: Future[T] = Future()
        if self.bound is not None:  # already inside a batch (an operation submitting more): run it in place
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                future.set_exception(exc)
            return future
        self._queue.put(_Op(fn, future))
        return future

    @property
    def bound(self) -> Any | None:
        """The batch's connection, on the batching thread while a batch runs; None elsewhere."""
        return getattr(self._local, "conn", None)

    def after_commit(self, fn: Callable[[], None]) -> bool:
        """Inside a batch: run ``fn`` once the batch has committed (dropped if it does not) and return True.
        Outside one: return False, and the caller runs it itself."""
        pending = getattr(self._local, "after", None)
        if pending is None:
            return False
        pending.append(fn)
        return True

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the batching thread between two batches while the caller writes on a connection of its own."""
        turn = _Turn()
        self._queue.put(turn)
        turn.granted.wait()
        try:
            yield
        finally:
            turn.done.set()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    # --- the batching thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        carried: _Op | _Turn | None = None
        while True:
            item = carried or self._queue.get()
            carried = None
            if item is None:
                return
            if isinstance(item, _Turn):
                self._give_turn(item)
                continue
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(nxt, _Op):  # a turn or the stop: after this batch, in the order asked
                    if nxt is None:
                        self._queue.put(None)
                    else:
                        carried = nxt
                    break
                batch.append(nxt)
            self._apply(batch)

    @staticmethod
    def _give_turn(turn: _Turn) -> None:
        turn.granted.set()
        turn.done.wait()

    def _apply(self, batch: list[_Op]) -> None:
        # As an executor does: an operation whose caller gave up (cancelled its future) is not run, and one that
        # runs can no longer be cancelled, so its outcome is always delivered.
        batch = [op for op in batch if op.future.set_running_or_notify_cancel()]
        if not batch:
            return
        outcomes: list[tuple[_Op, bool, Any]] = []
        after: list[Callable[[], None]] = []
        try:
            with self._begin() as conn:
                self._local.conn, self._local.after = conn, after
                try:
                    for op in batch:
                        mark = len(after)
                        try:
                            with self._savepoint(conn):
                                value = op.fn()
                        except BaseException as exc:  # noqa: BLE001 - this operation's own failure, its caller's
                            del after[mark:]  # what it registered belonged to statements rolled back
                            outcomes.append((op, False, exc))
                        else:
                            outcomes.append((op, True, value))
                finally:
                    self._local.conn = self._local.after = None
        except BaseException as exc:  # noqa: BLE001 - the commit failed: nothing of the batch was written
            log.warning("a batch of %d lease operations failed to commit: %s", len(batch), exc)
            for op in batch:
                op.future.set_exception(exc)
            return
        for fn in after:
            try:
                fn()
            except Exception:  # noqa: BLE001 - the batch is committed; one follow-up failing must not undo it
                log.exception("a follow-up of a committed batch failed")
        for op, ok, value in outcomes:
            if ok:
                op.future.set_result(value)
            else:
                op.future.set_exception(value)
