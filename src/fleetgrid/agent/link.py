"""The car's link to the coordinator as workloads see it: metered, resumable transfers that wait for a link the
owner allows, and the checks a handler makes between steps.

:class:`Link` is the agent-wide part (one per agent): every byte it moves is charged to the data plan and counted
in the agent's stats; a transfer starts only once the current link may carry it, restarts where it left off when
the link or the network drops, and raises :class:`Preempted` the moment the car must stop. :class:`CarLink` is the
public API one lease's handler receives (see :class:`fleetgrid.workloads.base.CarHandler`): the link bound to that
lease's traffic counters, plus running worker tasks and reporting back. Handlers never see the agent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import tenacity

from fleetgrid import errors, retry
from fleetgrid.protocol import FailRequest, LeaseRequest
from fleetgrid.vehicle.state import Network

if TYPE_CHECKING:
    from fleetgrid.agent.config import AgentConfig
    from fleetgrid.agent.monitor import EligibilityMonitor, Reading
    from fleetgrid.agent.statedir import AgentStats, StateDir
    from fleetgrid.agent.transport import CoordinatorClient
    from fleetgrid.vehicle.dataplan import DataPlan
    from fleetgrid.workloads.base import WorkerTask

__all__ = ["ATTEMPTS", "CarLink", "Link", "Traffic"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
ATTEMPTS = 4
"""Tries of one call or transfer before a network error goes up to the main loop's back-off."""
BACKOFF_CAP = 16
"""The longest wait between tries, in poll intervals."""


class _WaitForLink(Exception):
    """Mid-transfer, the link changed to one the data plan does not allow for the remaining bytes."""


@dataclass
class Traffic:
    """Bytes one lease moved, per link, for its report."""
    cellular: int = 0
    wifi: int = 0



class Link:
    """Transfers and waits shared by every lease of one agent."""

    def __init__(self, config: AgentConfig, client: CoordinatorClient, plan: DataPlan, monitor: EligibilityMonitor,
                 stats: AgentStats) -> None:
        self.config, self.client, self.plan, self.monitor, self.stats = config, client, plan, monitor, stats
        self.stop = threading.Event()
        """Set when the agent is told to stop."""
        self.lease_lost = threading.Event()
        """Set when the coordinator no longer holds the current lease."""
        self.backoff = retry.backoff(config.poll_interval_s, BACKOFF_CAP * config.poll_interval_s)
        """The wait between tries of a call to the coordinator: exponential, with full jitter."""

    # --- checks and waits --------------------------------------------------------------------------------------
    def check_preempted(self) -> None:
        """Raise :class:`Preempted` if the car must stop working now."""
        reading = self.monitor.reading()
        if not reading.eligible:
            raise errors.Preempted("the car became ineligible: " + "; ".join(reading.eligibility.reasons))
        if self.stop.is_set():
            raise errors.Preempted("the agent was told to stop")
        if self.lease_lost.is_set():
            raise errors.Preempted("the coordinator no longer holds the lease")

    def sleep(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Wait ``seconds`` (wall), waking at once when told to stop or, checked every 10 ms, when ``until()``."""
        if until is None:
            self.stop.wait(seconds)
            return
        deadline = time.monotonic() + seconds
        while not until() and not self.stop.wait(min(0.01, max(deadline - time.monotonic(), 0))):
            if time.monotonic() >= deadline:
                return

    def backoff_s(self, failures: int) -> float:
        """Seconds to wait after ``failures`` network errors in a row (a random draw: see :mod:`fleetgrid.retry`)."""
        return retry.delay_s(self.backoff, failures)

    def retrying(self, call: Callable[[], _T], *, attempts: int = ATTEMPTS, until_stopped: bool = False) -> _T:
        """``call()``, tried again after a network error or a 429 (``attempts`` times, or until stopped), with
        jittered exponential back-off between tries (at least the 429's ``Retry-After``). Setting the stop event
        cuts a wait short and raises the next failure."""
        stop: tenacity.stop.stop_base = tenacity.stop_when_event_set(self.stop)
        if not until_stopped:
            stop = stop | tenacity.stop_after_attempt(attempts)
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((errors.TransportError, errors.Overloaded)), stop=stop,
            wait=self._wait,
            sleep=self.sleep, after=self._count_failure, before_sleep=_log_retry, reraise=True,
        )
        return retrying(call)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        failed = state.outcome.exception() if state.outcome is not None else None
        return max(self.backoff(state), getattr(failed, "retry_after_s", 0.0))

    def _count_failure(self, _state: tenacity.RetryCallState) -> None:
        self.stats.transport_errors += 1

    def current_link(self) -> Network:
        state = self.monitor.reading().state
        return state.network if state is not None else Network.OFFLINE

    def allows_now(self, nbytes: int) -> bool:
        """Whether the owner's data plan lets ``nbytes`` go over the current link right now."""
        return self.plan.allows(nbytes, self.current_link())

    def wait_for_link(self, nbytes: int, *, preemptible: bool) -> None:
        """Return once the current link may carry ``nbytes``: Wi-Fi, or cellular within the owner's cap."""
        def allowed() -> bool:
            state = self.monitor.reading().state
            return state is not None and self.plan.allows(nbytes, state.network)

        waited = False
        while not allowed():
            if not waited:
                waited = True
                self.stats.wifi_waits += 1
                self._log_wait(nbytes)
            if preemptible:
                self.check_preempted()
            elif self.stop.is_set() or self.lease_lost.is_set():
                raise errors.Preempted("the agent stopped while a result waited for a link to upload it")
            self.sleep(
                self.config.poll_interval_s,
                until=lambda: allowed() or (preemptible and not self.monitor.reading().eligible),
            )

    def _log_wait(self, nbytes: int) -> None:
        log.info("%d bytes wait for Wi-Fi (cellular used %d this month)", nbytes, self.plan.cellular_used)

    # --- bytes ------------------------------------------------------------------------------------------------
    def charge(self, nbytes: int, traffic: Traffic) -> Network:
        """Charge ``nbytes`` to the data plan on the current link (cellular when offline: the worst case)."""
        state = self.monitor.reading().state
        link = state.network if state is not None and state.network is not Network.OFFLINE else Network.CELLULAR
        self.plan.record(nbytes, link)
        if link is Network.WIFI:
            traffic.wifi += nbytes
            self.stats.wifi_bytes += nbytes
        else:
            traffic.cellular += nbytes
            self.stats.cellular_bytes += nbytes
        return link

    def fetch(self, digest: str, size: int, dest: Path, traffic: Traffic) -> None:
        """Download an artifact, waiting for a link the data plan allows and resuming after any interruption."""
        if dest.exists():
            return
        part = dest.with_name(dest.name + ".part")

        def remaining() -> int:
            return max(size - (part.stat().st_size if part.exists() else 0), 0)

        self.receive(lambda on_bytes: self.client.download(digest, dest, on_bytes=on_bytes), remaining, traffic)

    def receive(self, get: Callable[[Callable[[int], None]], _T], remaining: Callable[[], int],
                traffic: Traffic) -> _T:
        """``get(on_bytes)``: a download that reports every chunk to ``on_bytes`` as it arrives.

        It starts once the data plan allows ``remaining()`` bytes on the link and starts again when the link turns
        to one that may not carry the rest, or after a network error (``ATTEMPTS`` in all); every byte is charged
        as it arrives, and Preempted raised the moment the car must stop.
        """
        attempts = 0
        while True:
            left = remaining()
            self.wait_for_link(left, preemptible=True)
            try:
                return get(self._metered(left, traffic))
            except _WaitForLink:
                continue
            except errors.TransportError as exc:
                attempts += 1
                if attempts >= ATTEMPTS:
                    raise
                delay = self.backoff_s(attempts)
                log.info("transfer broke (%s); resuming in %.1f s", exc, delay)
                self.sleep(delay)

    def _metered(self, left: int, traffic: Traffic) -> Callable[[int], None]:
        moved = 0

        def charge(n: int) -> None:
            nonlocal moved
            moved += n
            link = self.charge(n, traffic)
            self.check_preempted()
            if link is Network.CELLULAR and not self.plan.allows(max(left - moved, 0), link):
                raise _WaitForLink()

        return charge

    def upload(self, data: bytes, traffic: Traffic, *, attempts: int = ATTEMPTS, until_stopped: bool = False) -> str:
        """Upload ``data`` as an artifact; returns its digest. Charged per attempt: a broken upload spent its bytes."""
        def once() -> str:
            self.charge(len(data), traffic)
            return self.client.upload(data)

        return self.retrying(once, attempts=attempts, until_stopped=until_stopped)


def _log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    what = "coordinator refused for now" if isinstance(exc, errors.Overloaded) else "coordinator unreachable"
    log.warning("%s (%s); trying again in %.1f s, at %s", what, exc, wait,
                time.strftime("%H:%M:%S", time.localtime(time.time() + wait)))


class CarLink:
    """What one lease's handler may do. Built by the agent for each lease; every byte lands in :attr:`traffic`."""

    def __init__(self, link: Link, grant: Any, *, state_dir: StateDir,
                 compute: Callable[[WorkerTask, Callable[[int], None] | None], None],
                 follow_on: Callable[[], LeaseRequest | None], grant_next: Callable[[Any], None]) -> None:
        self._link, self.grant = link, grant
        self.traffic = Traffic()
        self.state_dir = state_dir
        """The agent's folder: ``state_dir.model_path(digest)`` and ``state_dir.train_dir(job)`` persist across
        leases (caches, residuals); a lease's scratch folder is the handler's ``folder``."""
        self._compute, self._follow_on, self._grant_next = compute, follow_on, grant_next

    # --- the car and the agent's state ------------------------------------------------------------------------
    @property
    def config(self) -> AgentConfig:
        return self._link.config

    @property
    def stats(self) -> AgentStats:
        return self._link.stats

    @property
    def client(self) -> CoordinatorClient:
        return self._link.client

    def reading(self) -> Reading:
        return self._link.monitor.reading()

    def check_preempted(self) -> None:
        self._link.check_preempted()

    def handback_reason(self, why: str) -> str:
        """The reason to give when handing the lease back: a preemption (counted) or the agent stopping."""
        reading = self.reading()
        if reading.eligible:
            return f"handback: the agent is stopping ({why})"
        self.stats.preemptions += 1
        return "preempted: " + "; ".join(reading.eligibility.reasons)

    # --- compute ---------------------------------------------------------------------------------------------
    def compute(self, task: WorkerTask, on_progress: Callable[[int], None] | None = None) -> None:
        """Run ``task`` in the preemptable worker; raises Preempted the moment the car must stop."""
        self._compute(task, on_progress)

    # --- bytes -----------------------------------------------------------------------------------------------
    def fetch(self, digest: str, size: int, dest: Path) -> None:
        self._link.fetch(digest, size, dest, self.traffic)

    def receive(self, get: Callable[[Callable[[int], None]], _T], remaining: Callable[[], int]) -> _T:
        return self._link.receive(get, remaining, self.traffic)

    def upload(self, data: bytes, *, attempts: int = ATTEMPTS, until_stopped: bool = False) -> str:
        return self._link.upload(data, self.traffic, attempts=attempts, until_stopped=until_stopped)

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, waking at once if the agent is told to stop."""
        self._link.sleep(seconds)

    def charge(self, nbytes: int) -> Network:
        return self._link.charge(nbytes, self.traffic)

    def allows_now(self, nbytes: int) -> bool:
        return self._link.allows_now(nbytes)

    def wait_for_link(self, nbytes: int, *, preemptible: bool) -> None:
        self._link.wait_for_link(nbytes, preemptible=preemptible)

    def retrying(self, call: Callable[[], _T], *, attempts: int = ATTEMPTS, until_stopped: bool = False) -> _T:
        return self._link.retrying(call, attempts=attempts, until_stopped=until_stopped)

    # --- reporting -------------------------------------------------------------------------------------------
    def follow_on_request(self) -> LeaseRequest | None:
        """The lease request to send with this lease's report, if the car should take more work right away."""
        return self._follow_on()

    def grant_next(self, grant: Any) -> None:
        """Work the coordinator granted along with this lease's report; the agent runs it next."""
        self._grant_next(grant)

    def report_failure(self, request: FailRequest) -> None:
        """Fail or hand back this lease; a lost answer is logged (the lease then expires on its own)."""
        try:
            self.client.fail(self.grant.lease_id, request)
        except (errors.TransportError, errors.LeaseExpired, errors.Conflict, errors.NotFound) as exc:
            log.warning("could not report lease %s back (%s); it will expire on its own", self.grant.lease_id, exc)
