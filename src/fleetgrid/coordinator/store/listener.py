"""The thread in each coordinator replica on PostgreSQL that LISTENs for the work other replicas announce
(:mod:`fleetgrid.coordinator.store.notify`) and hands it to the replica's waiting cars."""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg
import tenacity

from ...retry import backoff
from .base import OnWork
from .notify import CHANNEL, decode

__all__ = ["APPLICATION_NAME", "WorkListener"]

log = logging.getLogger("fleetgrid.coordinator.store.listener")

APPLICATION_NAME = "fleetgrid-listener"
"""How the listening connection shows in ``pg_stat_activity``."""


class WorkListener:
    """One dedicated connection LISTENing for work other stores announce, on a daemon thread, reconnecting with
    jittered exponential back-off when it is lost. After a reconnect it asks every waiting car to look once:
    notifications sent while it was away are not delivered later."""

    POLL_S = 0.5
    """How long one wait for notifications lasts: the longest :meth:`stop` waits for the thread."""

    def __init__(self, connect_args: dict[str, Any], origin: str, on_work: OnWork) -> None:
        # Keep-alives notice a connection that died without a word (a partition), which would otherwise wait forever;
        # a connect timeout keeps stop() from waiting on an unreachable server.
        self._connect_args = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                              "keepalives_count": 3, "connect_timeout": 10, **connect_args, "autocommit": True,
                              "application_name": APPLICATION_NAME}
        self._origin, self._on_work = origin, on_work
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetgrid-work-listener", daemon=True)
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(psycopg.Error),
            stop=tenacity.stop_when_event_set(self._halt), wait=backoff(0.2, 10.0), sleep=self._pause,
            before_sleep=_log_retry, reraise=True,
        )

    def start(self) -> WorkListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(timeout=10 * self.POLL_S)

    def _pause(self, seconds: float) -> None:
        self._halt.wait(seconds)  # stopping cuts a back-off short

    def _run(self) -> None:
        sessions = 0
        while not self._halt.is_set():
            try:
                conn = self._retrying(self._connect)
            except psycopg.Error:  # stopped while still failing to connect
                return
            try:
                with conn:
                    if sessions:
                        log.info("listening for work notifications again; every waiting car looks once")
                        self._deliver(None, ())
                    sessions += 1
                    self._listen(conn)
            except psycopg.Error as exc:
                log.warning("work notifications lost their database connection (%s); reconnecting", exc)

    def _connect(self) -> psycopg.Connection:
        conn = psycopg.connect(**self._connect_args)
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _listen(self, conn: psycopg.Connection) -> None:
        while not self._halt.is_set():
            for note in conn.notifies(timeout=self.POLL_S):
                origin, units, vehicles = decode(note.payload)
                if origin != self._origin:
                    self._deliver(units, vehicles)

    def _deliver(self, units: int | None, vehicles: tuple[str, ...]) -> None:
        try:
            self._on_work(units, vehicles)
        except Exception:  # noqa: BLE001 - a failed wake must not stop the listening; the re-check covers it
            log.exception("waking cars for work announced by another coordinator failed")


def _log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning("cannot listen for work notifications (%s); try %d in %.1f s", exc, state.attempt_number + 1, wait)
