"""The vehicle agent: takes work from the coordinator only while the car is eligible, and gives the computer back
the instant it is not.

Three threads share one :class:`Agent`. The main thread leases a unit, fetches its files (charging every byte to
the data plan), runs it in the worker process and delivers the result. The monitor reads the vehicle bus every
few milliseconds and kills the worker the moment the car turns ineligible; the main thread then hands the lease
back with the last checkpoint. The pacemaker heartbeats and renews the lease before its deadline. What one lease
does is in :mod:`fleetgrid.agent.inference` (a unit) and :mod:`fleetgrid.agent.training` (a share of a round);
this module holds the loop, the link helpers both use, preemption and renewal.

Calls to the coordinator are paced in wall seconds (its clock is the wall); the injected clock is the car's: it
stamps state reports and decides the data plan's month, so a demo can play a day of driving in a minute.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fleetgrid import errors
from fleetgrid.agent.config import AgentConfig
from fleetgrid.agent.inference import UnitLease
from fleetgrid.agent.monitor import EligibilityMonitor, Reading
from fleetgrid.agent.statedir import AgentStats, Enrollment, StateDir
from fleetgrid.agent.training import TrainLease
from fleetgrid.agent.transport import CoordinatorClient
from fleetgrid.agent.worker import TrainTask, UnitTask, WorkerProcess
from fleetgrid.clock import Clock
from fleetgrid.protocol import (
    EnrollRequest,
    FailRequest,
    Grant,
    LeaseRequest,
    StateReport,
    TrainGrant,
)
from fleetgrid.vehicle.bus import VehicleBus
from fleetgrid.vehicle.state import Network

__all__ = ["Agent", "run_agent"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_LEASE_GONE = (errors.LeaseExpired, errors.Conflict, errors.NotFound)
_ATTEMPTS = 4  # tries of one call or transfer before a network error goes up to the main loop's back-off


class _WaitForLink(Exception):
    """Mid-transfer, the link changed to one the data plan does not allow for the remaining bytes."""


@dataclass
class _Traffic:
    """Bytes one lease moved, per link, for its complete or fail report."""

    cellular: int = 0
    wifi: int = 0


class Agent:
    """One car's agent. ``client`` and ``worker`` are injectable so tests can fake the coordinator and the model."""

    def __init__(
        self,
        config: AgentConfig,
        bus: VehicleBus,
        clock: Clock,
        *,
        client: CoordinatorClient | None = None,
        worker: WorkerProcess | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.dir = StateDir(config.state_dir)
        self.plan = self.dir.load_plan(config.policy, clock)
        self.stats = AgentStats()
        self.client = client or CoordinatorClient(config.coordinator, verify=config.verify, timeout_s=config.timeout_s)
        self.worker = worker or WorkerProcess(threads=config.threads)
        self.monitor = EligibilityMonitor(bus, config.policy, config.monitor_interval_s, self._on_reading)
        self.vehicle_id: str | None = None
        self._stop = threading.Event()
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._lease: Grant | None = None
        self._next_grant: Grant | None = None  # granted along with the last completion or update
        self._next_renew = 0.0
        self._lease_lost = threading.Event()
        self._computing_since: float | None = None  # perf_counter when the worker began the current unit
        self._kill: tuple[float, float | None] | None = None  # (perf_counter gone, ineligible_since) of the last stop

    # --- the main loop -----------------------------------------------------------------------------------------

    def run(self, stop_event: threading.Event | None = None) -> AgentStats:
        """Work until ``stop_event`` is set (or ``config.max_units`` units or training updates are done); returns
        this run's stats.

        Raises :class:`AuthError` when the credential is refused: a revoked car must not keep retrying.
        """
        self._stop = stop_event or threading.Event()
        self._halt.clear()
        self.monitor.start()
        pacemaker = threading.Thread(target=self._pacemaker, name="fleetgrid-pacemaker", daemon=True)
        try:
            try:
                self._enroll()
            except errors.TransportError:
                if self._stop.is_set():
                    return self.stats
                raise
            pacemaker.start()
            failures = 0
            while not self._stop.is_set() and not self._enough():
                try:
                    self._step()
                    failures = 0
                except errors.TransportError as exc:
                    failures += 1
                    self.stats.transport_errors += 1
                    log.warning("coordinator unreachable (%s); retrying", exc)
                    self._sleep(self.config.poll_interval_s * min(2**failures, 16))
        finally:
            self._return_unstarted()
            self._halt.set()
            if pacemaker.is_alive():
                pacemaker.join()
            self.monitor.stop()
            self.worker.close()
            self._save()
        return self.stats

    def _enough(self) -> bool:
        return self.config.max_units is not None and self._work_done() >= self.config.max_units

    def _work_done(self) -> int:
        """Units completed and finished training updates accepted: what ``config.max_units`` counts."""
        return self.stats.units_done + self.stats.train_updates

    def _enroll(self) -> None:
        enrollment = self.dir.load_enrollment()
        if enrollment is None:
            if self.config.enrollment_token is None:
                raise errors.AuthError(
                    f"{self.dir.root} holds no credential and no enrollment token was given; pass --enroll-token"
                )
            request = EnrollRequest(
                enrollment_token=self.config.enrollment_token, name=self.config.name, hardware=self.config.hardware
            )
            response = self._retrying(lambda: self.client.enroll(request), until_stopped=True)
            enrollment = Enrollment(response.vehicle_id, response.credential, self.config.coordinator)
            self.dir.save_enrollment(enrollment)
            log.info("enrolled as vehicle %s", enrollment.vehicle_id)
        elif enrollment.coordinator != self.config.coordinator:
            log.warning("credential in %s was issued by %s", self.dir.root, enrollment.coordinator)
        self.client.credential = enrollment.credential
        self.vehicle_id = enrollment.vehicle_id

    def _step(self) -> None:
        if self._next_grant is not None:  # the coordinator granted it with the last completion
            grant, self._next_grant = self._next_grant, None
            self._work(grant)
            return
        reading = self.monitor.reading()
        if not reading.eligible:
            self._sleep(self.config.poll_interval_s, until=lambda: self.monitor.reading().eligible)
            return
        request = LeaseRequest(
            state=self._report(reading), wait_s=self.config.lease_wait_s, cached_models=self.dir.cached_models()[-64:]
        )
        asked = time.monotonic()
        grant = self.client.request_lease(request)
        if grant is not None:
            self._work(grant)
            return
        held = self.config.lease_wait_s > 0 and time.monotonic() - asked >= self.config.lease_wait_s / 2
        if not held:  # the coordinator answered "no work" at once: pause rather than hammer it
            self._sleep(self.config.poll_interval_s)

    # --- one unit ----------------------------------------------------------------------------------------------

    def _work(self, grant: Grant) -> None:
        """Run one lease, an inference unit or a share of a training round, and report it however it ends."""
        self.stats.leases += 1
        traffic = _Traffic()
        unit = self.dir.unit_dir(grant.lease_id)
        kind = TrainLease if isinstance(grant, TrainGrant) else UnitLease
        lease = kind(self, grant, unit, traffic)
        run, hand_back = lease.run, lease.hand_back
        with self._lock:
            self._lease, self._next_renew = grant, time.monotonic() + grant.renew_every_s
            self._lease_lost.clear()
        try:
            run()
        except errors.Preempted as exc:
            if self._lease_lost.is_set():
                self.stats.leases_lost += 1
            else:
                hand_back(str(exc))
        except _LEASE_GONE as exc:
            self.worker.stop()
            self.stats.leases_lost += 1
            log.warning("lease %s is gone on the coordinator: %s", grant.lease_id, exc)
        except (errors.TransportError, errors.AuthError):
            self.worker.stop()
            raise  # the coordinator will reissue the unit when the lease expires
        except errors.FleetgridError as exc:
            if self._stop.is_set():  # e.g. a SIGTERM to the whole process group killed the worker first
                hand_back(str(exc))
                return
            self.stats.unit_failures += 1
            log.warning("lease %s failed: %s", grant.lease_id, exc)
            self._report_failure(grant, FailRequest(reason=str(exc)[:1000], **_bytes(traffic)))
        finally:
            with self._lock:
                self._lease = None
            self.dir.discard_unit(grant.lease_id)
            self._save()

    def _compute(self, task: UnitTask | TrainTask, on_progress: Callable[[int], None] | None = None) -> None:
        """Run ``task`` in the worker, which the monitor kills (raising Preempted here) once the car must stop."""
        self._check_preempted()
        with self._lock:
            self._computing_since, self._kill = time.perf_counter(), None
        try:
            self.worker.run(task, on_progress)
        except errors.Preempted:
            self._record_latency()
            raise
        finally:
            with self._lock:
                self._computing_since = None

    def _record_latency(self) -> None:
        """Preemption latency: the first ineligible bus read (or the unit's start, if later) to the worker gone.

        Taken from the monitor's last kill, which is the one that ended this unit's process, so a kill that raced
        the process start is neither counted twice nor counted short.
        """
        with self._lock:
            kill, started = self._kill, self._computing_since
        if kill is None or kill[1] is None or started is None:
            return  # stopped for shutdown or a lost lease: not a preemption
        gone, since = kill
        self.stats.preemption_latencies_ms.append((gone - max(since, started)) * 1000.0)

    def _follow_on_request(self) -> LeaseRequest | None:
        """The lease request to send with a completion, if this car should take another unit right away."""
        reading = self.monitor.reading()
        last = self.config.max_units is not None and self._work_done() + 1 >= self.config.max_units
        if self._stop.is_set() or last or not reading.eligible:
            return None
        return LeaseRequest(state=self._report(reading), wait_s=0.0, cached_models=self.dir.cached_models()[-64:])

    def _return_unstarted(self) -> None:
        """Hand back a unit granted with the last completion that this run will not start."""
        grant, self._next_grant = self._next_grant, None
        if grant is not None:
            self._report_failure(grant, FailRequest(reason="agent stopping", handback=True))

    def _report_failure(self, grant: Grant, request: FailRequest) -> None:
        try:
            self.client.fail(grant.lease_id, request)
        except (errors.TransportError, *_LEASE_GONE) as exc:
            log.warning("could not report lease %s back (%s); it will expire on its own", grant.lease_id, exc)

    # --- bytes over the link -----------------------------------------------------------------------------------

    def _fetch(self, digest: str, size: int, dest: Path, traffic: _Traffic) -> None:
        """Download an artifact, waiting for a link the data plan allows and resuming after any interruption."""
        if dest.exists():
            return
        part = dest.with_name(dest.name + ".part")

        def remaining() -> int:
            return max(size - (part.stat().st_size if part.exists() else 0), 0)

        self._receive(lambda on_bytes: self.client.download(digest, dest, on_bytes=on_bytes), remaining, traffic)

    def _receive(
        self, get: Callable[[Callable[[int], None]], _T], remaining: Callable[[], int], traffic: _Traffic
    ) -> _T:
        """``get(on_bytes)``: a download that reports every chunk to ``on_bytes`` as it arrives.

        It starts once the data plan allows ``remaining()`` bytes on the link and starts again when the link turns
        to one that may not carry the rest, or after a network error (``_ATTEMPTS`` in all); every byte is charged
        as it arrives, and Preempted raised the moment the car must stop.
        """
        attempts = 0
        while True:
            left = remaining()
            self._wait_for_link(left, preemptible=True)
            try:
                return get(self._metered(left, traffic))
            except _WaitForLink:
                continue
            except errors.TransportError:
                attempts += 1
                if attempts >= _ATTEMPTS:
                    raise
                self._sleep(self.config.poll_interval_s)

    def _metered(self, left: int, traffic: _Traffic) -> Callable[[int], None]:
        """An ``on_bytes`` for a transfer of ``left`` bytes: charges each chunk, raises Preempted when the car must
        stop and _WaitForLink when the link turns to cellular that may not carry the rest."""
        moved = 0

        def charge(n: int) -> None:
            nonlocal moved
            moved += n
            link = self._charge(n, traffic)
            self._check_preempted()
            if link is Network.CELLULAR and not self.plan.allows(max(left - moved, 0), link):
                raise _WaitForLink()

        return charge

    def _upload(self, data: bytes, traffic: _Traffic, *, attempts: int = _ATTEMPTS, until_stopped: bool = False) -> str:
        def once() -> str:
            self._charge(len(data), traffic)  # charged per attempt: a broken upload spent its bytes too
            return self.client.upload(data)

        return self._retrying(once, attempts=attempts, until_stopped=until_stopped)

    def _charge(self, nbytes: int, traffic: _Traffic) -> Network:
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

    def _wait_for_link(self, nbytes: int, *, preemptible: bool) -> None:
        """Return once the current link may carry ``nbytes``: Wi-Fi, or cellular within the owner's cap."""
        def allowed() -> bool:
            state = self.monitor.reading().state
            return state is not None and self.plan.allows(nbytes, state.network)

        waited = False
        while not allowed():
            if not waited:
                waited = True
                self.stats.wifi_waits += 1
                log.info("%d bytes wait for Wi-Fi (cellular used %d this month)", nbytes, self.plan.cellular_used)
            if preemptible:
                self._check_preempted()
            elif self._stop.is_set() or self._lease_lost.is_set():
                raise errors.Preempted("the agent stopped while a result waited for a link to upload it")
            self._sleep(
                self.config.poll_interval_s,
                until=lambda: allowed() or (preemptible and not self.monitor.reading().eligible),
            )

    # --- preemption, heartbeat, renewal ------------------------------------------------------------------------

    def _check_preempted(self) -> None:
        reading = self.monitor.reading()
        if not reading.eligible:
            raise errors.Preempted("the car became ineligible: " + "; ".join(reading.eligibility.reasons))
        if self._stop.is_set():
            raise errors.Preempted("the agent was told to stop")
        if self._lease_lost.is_set():
            raise errors.Preempted("the coordinator no longer holds the lease")

    def _on_reading(self, reading: Reading) -> None:
        """Runs on the monitor thread after every bus read: stop the worker the moment it must not run."""
        with self._lock:
            computing = self._computing_since is not None
        if not computing or (reading.eligible and not self._stop.is_set()):
            return
        if self.worker.stop():
            gone = time.perf_counter()
            with self._lock:
                self._kill = (gone, reading.ineligible_since)

    def _pacemaker(self) -> None:
        next_heartbeat = time.monotonic()
        while not self._halt.is_set():
            now = time.monotonic()
            if now >= next_heartbeat:
                next_heartbeat = now + self.config.heartbeat_interval_s
                self._heartbeat()
            with self._lock:
                lease, due = self._lease, self._next_renew
            if lease is not None and now >= due:
                self._renew(lease)
            # Wake for the next heartbeat, and at least every 50 ms to see a new lease's renewal schedule.
            self._halt.wait(min(max(next_heartbeat - time.monotonic(), 0.001), 0.05))

    def _heartbeat(self) -> None:
        try:
            self.client.heartbeat(self._report(self.monitor.reading()))
        except errors.FleetgridError as exc:
            log.info("heartbeat failed: %s", exc)

    def _renew(self, lease: Grant) -> None:
        try:
            self.client.renew(lease.lease_id)
            delay = lease.renew_every_s
        except _LEASE_GONE as exc:
            log.warning("lease %s could not be renewed: %s", lease.lease_id, exc)
            self._lease_lost.set()
            self.worker.stop()
            delay = lease.renew_every_s
        except errors.FleetgridError as exc:
            log.info("renewing lease %s failed (%s); trying again soon", lease.lease_id, exc)
            delay = lease.renew_every_s / 4
        with self._lock:
            if self._lease is lease:
                self._next_renew = time.monotonic() + delay

    # --- small helpers -----------------------------------------------------------------------------------------

    def _report(self, reading: Reading) -> StateReport:
        state = reading.state
        return StateReport(
            drive=state.drive.value if state else "parked",
            soc=state.soc if state else 0.0,
            network=state.network.value if state else "offline",
            plugged_in=state.plugged_in if state else False,
            eligible=reading.eligible,
            reasons=list(reading.eligibility.reasons)[:16],
            cellular_used_bytes=self.plan.cellular_used,
            at=state.at if state else self.clock.now(),
        )

    def _retrying(self, call: Callable[[], _T], *, attempts: int = _ATTEMPTS, until_stopped: bool = False) -> _T:
        """``call()``, tried again after a network error (``attempts`` times, or until stopped)."""
        tries = 0
        while True:
            try:
                return call()
            except errors.TransportError:
                tries += 1
                self.stats.transport_errors += 1
                if (tries >= attempts and not until_stopped) or self._stop.is_set():
                    raise
                self._sleep(self.config.poll_interval_s * min(2**tries, 16))

    def _sleep(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Wait ``seconds`` (wall), waking at once when told to stop or, checked every 10 ms, when ``until()``."""
        if until is None:
            self._stop.wait(seconds)
            return
        deadline = time.monotonic() + seconds
        while not until() and not self._stop.wait(min(0.01, max(deadline - time.monotonic(), 0))):
            if time.monotonic() >= deadline:
                return

    def _save(self) -> None:
        self.dir.save_plan(self.plan)
        self.dir.save_stats(self.stats)


def _bytes(traffic: _Traffic) -> dict[str, int]:
    return {"cellular_bytes": traffic.cellular, "wifi_bytes": traffic.wifi}


def run_agent(
    config: AgentConfig,
    bus: VehicleBus,
    clock: Clock,
    *,
    stop_event: threading.Event | None = None,
    client: CoordinatorClient | None = None,
) -> AgentStats:
    """Run one car's agent until SIGINT/SIGTERM (or ``stop_event``); what the ``fleetgrid agent`` command calls."""
    stop = stop_event or threading.Event()
    agent = Agent(config, bus, clock, client=client)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        return agent.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if client is None:
            agent.client.close()
