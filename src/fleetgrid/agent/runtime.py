"""The vehicle agent: takes work from the coordinator only while the car is eligible, and gives the computer back
the instant it is not.

Three threads share one :class:`Agent`. The main thread leases work and runs each lease with its workload's
handler (found in :mod:`fleetgrid.workloads.base`'s registry by the grant's ``kind``; this module knows no
workload), which fetches files through the :class:`~fleetgrid.agent.link.CarLink` (charging every byte to the data
plan) and computes in the worker process. The monitor reads the vehicle bus every few milliseconds and kills the
worker the moment the car turns ineligible (:mod:`fleetgrid.agent.preemption`); the handler then hands the lease
back with what it has. The pacemaker heartbeats and renews the lease before its deadline.

Calls to the coordinator are paced in wall seconds (its clock is the wall); the injected clock is the car's: it
stamps state reports and decides the data plan's month, so a demo can play a day of driving in a minute.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from fleetgrid import errors
from fleetgrid.agent.config import AgentConfig
from fleetgrid.agent.link import CarLink, Link
from fleetgrid.agent.monitor import EligibilityMonitor, Reading
from fleetgrid.agent.preemption import Preemption
from fleetgrid.agent.statedir import AgentStats, Enrollment, StateDir
from fleetgrid.agent.transport import CoordinatorClient
from fleetgrid.agent.worker import WorkerProcess
from fleetgrid.clock import Clock
from fleetgrid.identity.signing import CarKey
from fleetgrid.protocol import (
    EnrollRequest,
    FailRequest,
    Grant,
    LeaseRequest,
    StateReport,
)
from fleetgrid.vehicle.bus import VehicleBus
from fleetgrid.vehicle.policy import OwnerPolicy
from fleetgrid.workloads.base import car_handler

__all__ = ["Agent", "run_agent"]

log = logging.getLogger(__name__)

_LEASE_GONE = (errors.LeaseExpired, errors.Conflict, errors.NotFound)


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
        self.link = Link(config, self.client, self.plan, self.monitor, self.stats)
        self.preemption = Preemption(self.worker, self.stats, self.link)
        self.vehicle_id: str | None = None
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._lease: Grant | None = None
        self._next_grant: Grant | None = None  # granted along with the last completion or update
        self._next_renew = 0.0

    # --- the main loop -----------------------------------------------------------------------------------------

    def run(self, stop_event: threading.Event | None = None) -> AgentStats:
        """Work until ``stop_event`` is set (or ``config.max_units`` leases are done); returns this run's stats.

        Raises :class:`AuthError` when the credential is refused: a revoked car must not keep retrying.
        """
        self.link.stop = stop = stop_event or threading.Event()
        self._halt.clear()
        self.monitor.start()
        pacemaker = threading.Thread(target=self._pacemaker, name="fleetgrid-pacemaker", daemon=True)
        try:
            try:
                self._enroll()
            except errors.TransportError:
                if stop.is_set():
                    return self.stats
                raise
            pacemaker.start()
            failures = 0
            while not stop.is_set() and not self._enough():
                try:
                    self._step()
                    failures = 0
                except errors.Overloaded as exc:  # e.g. rate-limited: refused for now, not for good
                    delay = max(exc.retry_after_s, self.link.backoff_s(1))
                    log.warning("coordinator refused for now (%s); trying again in %.1f s", exc, delay)
                    self.link.sleep(delay)
                except errors.TransportError as exc:
                    failures += 1
                    self.stats.transport_errors += 1
                    delay = self.link.backoff_s(failures)
                    log.warning("coordinator unreachable (%s); trying again in %.1f s, at %s", exc, delay,
                                time.strftime("%H:%M:%S", time.localtime(time.time() + delay)))
                    self.link.sleep(delay)
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
        return self.config.max_units is not None and self.stats.leases_done >= self.config.max_units

    def _enroll(self) -> None:
        enrollment = self.dir.load_enrollment()
        key = CarKey.load(self.dir.key_path)
        if enrollment is None:
            if self.config.enrollment_token is None:
                raise errors.AuthError(
                    f"{self.dir.root} holds no credential and no enrollment token was given; pass --enroll-token"
                )
            if key is None:  # saved before enrolling: a crash in between never leaves a car without its key
                key = CarKey.generate()
                key.save(self.dir.key_path)
            request = EnrollRequest(
                enrollment_token=self.config.enrollment_token, name=self.config.name, hardware=self.config.hardware,
                public_key=key.public_text,
            )
            response = self.link.retrying(lambda: self.client.enroll(request), until_stopped=True)
            enrollment = Enrollment(response.vehicle_id, response.credential, self.config.coordinator)
            self.dir.save_enrollment(enrollment)
            log.info("enrolled as vehicle %s", enrollment.vehicle_id)
        elif enrollment.coordinator != self.config.coordinator:
            log.warning("credential in %s was issued by %s", self.dir.root, enrollment.coordinator)
        if key is None:
            log.warning("vehicle %s enrolled before car keys: its requests are not signed. Delete %s and enroll "
                        "again to give it a key", enrollment.vehicle_id, self.dir.root / "enrollment.json")
        self.client.credential, self.client.key = enrollment.credential, key
        self.client.vehicle_id = enrollment.vehicle_id
        self.vehicle_id = enrollment.vehicle_id

    def _step(self) -> None:
        granted, self._next_grant = self._next_grant, None
        if granted is not None:  # the coordinator granted it with the last completion
            self._work(granted)
            return
        reading = self.monitor.reading()
        if not reading.eligible:
            self.link.sleep(self.config.poll_interval_s, until=lambda: self.monitor.reading().eligible)
            return
        request = LeaseRequest(
            state=self._report(reading), wait_s=self.config.lease_wait_s
        )
        asked = time.monotonic()
        grant = self.client.request_lease(request)
        if grant is not None:
            self._work(grant)
            return
        held = self.config.lease_wait_s > 0 and time.monotonic() - asked >= self.config.lease_wait_s / 2
        if not held:  # the coordinator answered "no work" at once: pause rather than hammer it
            self.link.sleep(self.config.poll_interval_s)

    # --- one lease ---------------------------------------------------------------------------------------------

    def _work(self, grant: Grant) -> None:
        """Run one lease with its workload's handler, and report it however it ends. The agent knows no workload:
        the registry finds the handler by the grant's ``kind``."""
        self.stats.leases += 1
        car = CarLink(self.link, grant, state_dir=self.dir, compute=self.preemption.compute,
                      follow_on=self._follow_on_request, grant_next=self._set_next_grant)
        handler = car_handler(grant.kind)(grant, car, self.dir.unit_dir(grant.lease_id))
        with self._lock:
            self._lease, self._next_renew = grant, time.monotonic() + grant.renew_every_s
            self.link.lease_lost.clear()
        try:
            handler.run()
            if handler.counts_as_done():
                self.stats.leases_done += 1
        except errors.Preempted as exc:
            if self.link.lease_lost.is_set():
                self.stats.leases_lost += 1
            else:
                handler.hand_back(str(exc))
        except _LEASE_GONE as exc:
            self.worker.stop()
            self.stats.leases_lost += 1
            log.warning("lease %s is gone on the coordinator: %s", grant.lease_id, exc)
        except (errors.TransportError, errors.AuthError, errors.Overloaded):
            self.worker.stop()
            raise  # the coordinator will reissue the unit when the lease expires
        except errors.FleetgridError as exc:
            if self.link.stop.is_set():  # e.g. a SIGTERM to the whole process group killed the worker first
                handler.hand_back(str(exc))
                return
            self.stats.unit_failures += 1
            log.warning("lease %s failed: %s", grant.lease_id, exc)
            car.report_failure(FailRequest(reason=str(exc)[:1000], cellular_bytes=car.traffic.cellular,
                                           wifi_bytes=car.traffic.wifi))
        finally:
            with self._lock:
                self._lease = None
            self.dir.discard_unit(grant.lease_id)
            self._save()

    def _set_next_grant(self, grant: Grant | None) -> None:
        self._next_grant = grant

    def _follow_on_request(self) -> LeaseRequest | None:
        """The lease request to send with a completion, if this car should take another lease right away."""
        reading = self.monitor.reading()
        last = self.config.max_units is not None and self.stats.leases_done + 1 >= self.config.max_units
        if self.link.stop.is_set() or last or not reading.eligible:
            return None
        return LeaseRequest(state=self._report(reading), wait_s=0.0)

    def _return_unstarted(self) -> None:
        """Hand back a lease granted with the last completion that this run will not start."""
        grant, self._next_grant = self._next_grant, None
        if grant is None:
            return
        try:
            self.client.fail(grant.lease_id, FailRequest(reason="agent stopping", handback=True))
        except (errors.TransportError, *_LEASE_GONE) as exc:
            log.warning("could not report lease %s back (%s); it will expire on its own", grant.lease_id, exc)

    def _on_reading(self, reading: Reading) -> None:
        self.preemption.on_reading(reading)

    # --- heartbeat and renewal ---------------------------------------------------------------------------------

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
        with self._lock:
            held = self._lease  # held since before the heartbeat was sent: its answer must list it
        try:
            answer = self.client.heartbeat(self._report(self.monitor.reading()))
        except errors.FleetgridError as exc:
            log.debug("heartbeat failed: %s", exc)  # the main loop says when the coordinator is unreachable
            return
        if answer.policy is not None:
            self._apply_policy(answer.policy)
        if held is not None and held.lease_id not in answer.active_leases:
            # Closed on the coordinator (a training round ended, the job was cancelled)? Renew now: its answer says
            # for sure, and a lease that is gone stops its work at once rather than at the next renewal.
            with self._lock:
                if self._lease is held:
                    self._next_renew = time.monotonic()

    def _apply_policy(self, data: dict[str, Any]) -> None:
        """The owner's policy from the coordinator: eligibility and the data plan follow it from the next reading
        on. One the car cannot accept (a newer field, a bad value) is logged and the current one kept."""
        try:
            policy = OwnerPolicy.from_json(data)
        except errors.InvalidInput as exc:
            log.warning("the coordinator sent an owner policy this agent cannot apply (%s); keeping the current one",
                        exc.message)
            return
        if policy != self.monitor.policy:
            log.info("owner policy updated from the coordinator: %s", policy.to_json())
            self.monitor.policy = self.plan.policy = policy

    def _renew(self, lease: Grant) -> None:
        try:
            self.client.renew(lease.lease_id)
            delay = lease.renew_every_s
        except _LEASE_GONE as exc:
            log.warning("lease %s could not be renewed: %s", lease.lease_id, exc)
            self.link.lease_lost.set()
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

    def _save(self) -> None:
        self.dir.save_plan(self.plan)
        self.dir.save_stats(self.stats)


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
