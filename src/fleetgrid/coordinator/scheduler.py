"""Jobs into work units, units onto cars, results back into jobs, for every workload planned into units.

The scheduler owns the lifecycle every such workload shares: storing a job's plan, leasing units to cars, renewal,
expiry and re-issue, checkpoints, replicas and quorums, metering every closed lease, and assembling the result once
every unit is accepted. What a unit *is* belongs to the workload's driver (:mod:`fleetgrid.coordinator.drivers`),
found by the job's ``kind``; so does how its units are placed (:class:`~fleetgrid.core.Placement`), which this
module applies: a resident lease is renewed by its car's heartbeats while the car is eligible, cannot complete,
and fails over to another car the moment it ends early; a gang's units are leased to k cars all at once, and
restarted together when one of them leaves. The store makes each step atomic. Everything here is
synchronous: the HTTP layer runs it off the event loop and adds the long-poll wait
(:class:`~fleetgrid.coordinator.longpoll.LongPolls`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from ..clock import Clock, WallClock
from ..core import LeaseState, Placement, UnitState, Usage, held_s
from ..errors import Conflict, Forbidden, HashMismatch, InvalidInput, LeaseExpired, NotFound
from ..protocol import CompleteRequest, FailRequest, Grant, JobState, JobStatus, LeaseAck, ProgressReport
from .artifacts import ArtifactStore, sha256_hex
from .config import CoordinatorConfig
from .drivers import UnitDriver
from .longpoll import LongPolls
from .metering import Implausible, Seen, check_compute_s, computed_items
from .reports import ReportCheck, fastest_s
from .store import JobRecord, LeaseRecord, LedgerRecord, Store, UnitRecord, VehicleRecord
from .verification import Verifier

__all__ = ["Scheduler"]

log = logging.getLogger("fleetgrid.coordinator.scheduler")

_FINISHED = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)
_GANG_LOOK_S = 1.0
"""How often (clock seconds) a process asks the store whether any gang is live, for the lease path to know
whether to look for gang seats at all (a gang job submitted through this process is known at once)."""


@dataclass(slots=True)
class _Owned:
    lease: LeaseRecord
    unit: UnitRecord
    job: JobRecord


class Scheduler:
    def __init__(self, store: Store, artifacts: ArtifactStore, config: CoordinatorConfig,
                 clock: Clock | None = None, drivers: Mapping[str, UnitDriver] | None = None) -> None:
        self.store = store
        self.artifacts = artifacts
        self.config = config
        self.clock = clock or WallClock()
        self.drivers: dict[str, UnitDriver] = dict(drivers or {})
        self.offers_possible: Callable[[], bool] = lambda: True
        """Whether units may be offered to particular cars now (a training job is live): if not, leasing skips
        the look-up for them, one query per lease cycle."""
        self.polls = LongPolls()
        """Cars long-polling for work; the app binds it to its event loop. Wakes are safe from any thread."""
        self.vehicle_eligible: Callable[[str], bool | None] = lambda _vehicle_id: None
        """Whether a car last said it was eligible, as this process heard (None: it heard nothing, ask the store).
        A resident lease is renewed only while its car is."""
        self.lease_granted: Callable[[str, int], None] = lambda kind, n: None
        self.lease_closed: Callable[[str, str], None] = lambda kind, outcome: None
        """Told (workload kind, leases made / outcome) once a grant or a close committed: the metrics."""
        self.vehicle_plugged_in: Callable[[str], bool | None] = lambda _vehicle_id: None
        """Whether a car last said it was plugged in (None: not known); each usage row records it (billing)."""
        self.reports = ReportCheck(store, self.clock.now)
        """Cars' reports held to what this coordinator saw; an implausible one lowers the car's reputation."""
        self.verifier: Verifier | None = None
        """With ``config.verify_results``: results are verified before they are accepted (see verification.py)."""
        if config.verify_results:
            self.verifier = Verifier(store, artifacts, self.drivers, config.trust, self.clock.now)
            self.verifier.vehicle_suspended = self.release_vehicle
        self._specs: dict[str, JobRecord] = {}
        self._gangs = False
        self._gangs_looked: float | None = None

    def _wake(self, units: int = 1) -> None:
        """``units`` new units anyone may take: wake that many waiting cars (not all of them), once the
        transaction that made them is committed."""
        self.store.after_commit(lambda: self.polls.wake(units))

    def driver(self, kind: str) -> UnitDriver:
        driver = self.drivers.get(kind)
        if driver is None:
            raise InvalidInput(f"job kind {kind!r} is not planned into units here; unit workloads: "
                               f"{', '.join(sorted(self.drivers))}")
        return driver

    def _placement(self, job: JobRecord) -> Placement:
        driver = self.drivers.get(job.kind)
        return driver.placement if driver is not None else Placement.SINGLE

    # --- tenants ------------------------------------------------------------------------------------------------
    def submit(self, tenant: str, request: BaseModel) -> JobRecord:
        """Plan a validated submission with its workload's driver and store the job with all its units in one
        transaction; if that fails, the files the planning created are removed again."""
        driver = self.driver(getattr(request, "kind", "inference"))
        plan = driver.plan(tenant, request, "job-" + uuid.uuid4().hex[:12])
        try:
            driver.check_placement(plan.units)
            self.store.create_job(plan.job, plan.units, artifacts=plan.artifacts)
        except BaseException:
            self._discard_unrecorded(plan.new_files)
            raise
        if driver.placement is Placement.GANG:
            self._gangs = True
        self._wake(len(plan.units))
        return plan.job

    def _discard_unrecorded(self, digests: list[str]) -> None:
        """Remove files a failed submission created, unless the store knows them (another job shares them)."""
        try:
            self.artifacts.discard([d for d in digests if self.store.get_artifact(d) is None])
        except Exception:  # noqa: BLE001 - the submission's own error is the one to report
            log.exception("could not remove the files of a failed submission: %s", digests)

    def job_for(self, tenant: str, job_id: str) -> JobRecord:
        job = self.store.get_job(job_id)
        if job is None or job.tenant != tenant:
            raise NotFound(f"job {job_id!r} does not exist for tenant {tenant!r}; GET /v1/jobs lists yours")
        return job

    def status(self, job: JobRecord) -> JobStatus:
        in_flight = self.store.count_units(job.job_id, UnitState.LEASED) if job.state == JobState.RUNNING else 0
        driver = self.drivers.get(job.kind)
        return JobStatus(
            job_id=job.job_id, name=job.name, kind=job.kind, model=job.model, state=JobState(job.state),
            items=job.items, units_total=job.units_total, units_done=job.units_done, units_in_flight=in_flight,
            reissued_units=job.reissued_units, preemptions=job.preemptions, created_at=job.created_at,
            finished_at=job.finished_at, result=job.result_digest, error=job.error,
            progress=driver.progress(job) if driver is not None else None,
        )

    def cancel(self, tenant: str, job_id: str) -> JobRecord:
        job = self.job_for(tenant, job_id)
        if job.state in _FINISHED:
            raise Conflict(f"job {job_id} is already {job.state}; only queued or running jobs can be cancelled")
        self._finish(job, JobState.CANCELLED, error="cancelled by tenant")
        return self.job_for(tenant, job_id)

    def _finish(self, job: JobRecord, state: str, *, result_digest: str | None = None,
                error: str | None = None) -> bool:
        """Close the job; leases it cancels are metered for the time they were held, unless its units are placed
        one per car (such a lease ends with its report, and one cut short by the job is not)."""
        now = self.clock.now()
        placement = self._placement(job)
        meter = None
        if placement is not Placement.SINGLE:
            def meter(lease: LeaseRecord) -> LedgerRecord:
                return self._held_row(lease, job, now, accepted=placement is Placement.RESIDENT)
        return self.store.finish_job(job.job_id, state, now, result_digest=result_digest, error=error, meter=meter)

    def _row(self, lease: LeaseRecord, job: JobRecord, usage: Usage, now: float, *, accepted: bool) -> LedgerRecord:
        return _ledger_row(lease, job, usage, now, accepted=accepted,
                           plugged_in=self.vehicle_plugged_in(lease.vehicle_id))

    def _held_row(self, lease: LeaseRecord, job: JobRecord, now: float, *, accepted: bool,
                  report: LedgerRecord | None = None) -> LedgerRecord:
        """The usage row of a lease worth the time it was held: that time as its accelerator-seconds, with the
        bytes its car ``report``-ed."""
        seconds = held_s(lease.issued_at, lease.deadline, now, self.config.lease_ttl_s)
        driver = self.drivers.get(job.kind)
        served = driver.held_usage(lease) if driver is not None else Usage()
        if report is not None:
            return dataclasses.replace(report, compute_s=seconds, accepted=accepted, at=now,
                                       items=report.items + served.items, tokens=report.tokens + served.tokens)
        return self._row(lease, job, dataclasses.replace(served, accelerator_s=seconds), now, accepted=accepted)

    def retire(self, job: JobRecord, unit_id: str) -> bool:
        """Cancel one live unit of a RESIDENT job (a replica no longer needed), its lease metered for the time held
        and what it served; False if the unit was no longer live."""
        now = self.clock.now()
        return self.store.retire_unit(unit_id, now, lambda lease: self._held_row(lease, job, now, accepted=True))

    def result(self, tenant: str, job_id: str) -> tuple[bytes, str]:
        """The job's result and its file suffix."""
        job = self.job_for(tenant, job_id)
        if job.state != JobState.DONE or job.result_digest is None:
            raise Conflict(f"job {job_id} is {job.state}, not done; results exist once state is 'done'")
        driver = self.drivers.get(job.kind)
        suffix = driver.result_suffix if driver is not None else "safetensors"
        return self.artifacts.read_bytes(job.result_digest), suffix

    # --- vehicles -----------------------------------------------------------------------------------------------
    def lease(self, vehicle: VehicleRecord) -> Grant | None:
        """The car's next lease: one of a gang that filled since it last asked, else a unit of its own (the lease
        cycle), else a seat in a forming gang, which it waits in (None) unless its seat was the last one."""
        now = self.clock.now()
        vehicle_id = vehicle.vehicle_id
        gangs = self._gangs_live(now)
        seat = self.store.gang_seat(vehicle_id, now) if gangs else None
        if seat is not None and seat.lease is not None:
            return self._grant(seat.lease, seat.unit)
        offers = self.offers_possible()
        if self.verifier is not None and self.verifier.probe(vehicle_id, now, self.config.lease_ttl_s):
            offers = True  # a known-answer unit is on offer to this car
        got = self.store.acquire(vehicle_id, now, now + self.config.lease_ttl_s, _lease_id(), offers=offers)
        if got is not None:
            if seat is not None:  # it took other work: its seat goes to another car
                self.store.drop_holds(vehicle_id)
            return self._grant(*got, issued=1)
        if not gangs:
            return None
        joined = self.store.join_gang(vehicle_id, now, now + self.config.gang_hold_s, now + self.config.lease_ttl_s,
                                      _lease_id)
        if joined is None or joined.lease is None:
            return None
        others = joined.others
        self.store.after_commit(lambda: self.polls.wake(0, others))  # their leases wait for them to ask
        return self._grant(joined.lease, joined.unit, issued=1 + len(others))  # the last member makes every lease

    def _gangs_live(self, now: float) -> bool:
        looked = self._gangs_looked
        if looked is None or abs(now - looked) >= _GANG_LOOK_S:
            self._gangs, self._gangs_looked = self.store.gangs_live(), now
        return self._gangs

    def _grant(self, lease: LeaseRecord, unit: UnitRecord, *, issued: int = 0) -> Grant:
        job = self._job_spec(unit.job_id)
        if job.state == JobState.QUEUED:
            self.store.start_job(job.job_id)
            job.state = JobState.RUNNING
        if issued:
            self.store.after_commit(functools.partial(self.lease_granted, job.kind, issued))
        grant = self.driver(job.kind).grant(job, unit, lease)
        if self.verifier is not None and unit.replica and self.verifier.applies(job):
            # A car must not tell a check (a verifying copy, a known answer) from any other unit.
            grant = grant.model_copy(update={"replica": 0})
        return grant

    def _job_spec(self, job_id: str) -> JobRecord:
        """A job's immutable part (kind, model, spec), cached: every lease needs it. Its counters here are stale."""
        job = self._specs.get(job_id)
        if job is None:
            job = self.store.get_job(job_id)
            if job is None:
                raise NotFound(f"job {job_id!r} does not exist")
            self._specs[job_id] = job
        return job

    def _owned(self, vehicle: VehicleRecord, lease_id: str, *, active: bool = True) -> _Owned:
        """The lease with its unit and job, if it is this vehicle's (and, with ``active``, still open)."""
        context = self.store.lease_context(lease_id)
        if context is None:
            raise NotFound(f"lease {lease_id!r} does not exist")
        owned = _Owned(*context)
        if owned.lease.vehicle_id != vehicle.vehicle_id:
            raise Forbidden(f"lease {lease_id} belongs to another vehicle; a vehicle may touch only its own leases")
        if active:
            self._require_active(owned)
        return owned

    def _require_active(self, owned: _Owned, *, at: float | None = None) -> None:
        lease = owned.lease
        if lease.state == LeaseState.ACTIVE and lease.deadline < (self.clock.now() if at is None else at):
            self._expire(lease, owned.unit)
            lease.state = LeaseState.EXPIRED
        if lease.state == LeaseState.EXPIRED:
            raise LeaseExpired(f"lease {lease.lease_id} expired at its deadline and its unit was re-issued; "
                               "lease new work with POST /v1/leases")
        if lease.state != LeaseState.ACTIVE:
            raise Conflict(f"lease {lease.lease_id} is {lease.state}, not active; lease new work with POST /v1/leases")

    def renew(self, vehicle: VehicleRecord, lease_id: str) -> LeaseAck:
        owned = self._owned(vehicle, lease_id)
        if self._placement(owned.job) is Placement.RESIDENT and not self._eligible(vehicle.vehicle_id):
            self._release(owned.lease, LeaseState.HANDED_BACK, preempted=True)
            raise Conflict(f"lease {lease_id} is resident, renewed only while its car is eligible, and vehicle "
                           f"{vehicle.vehicle_id} last reported itself ineligible: the lease was handed back and "
                           "its unit goes to another car; lease again with POST /v1/leases once eligible")
        deadline = self.clock.now() + self.config.lease_ttl_s
        self.store.renew(lease_id, deadline)
        return LeaseAck(lease_id=lease_id, state=LeaseState.ACTIVE, deadline=deadline)

    def _eligible(self, vehicle_id: str) -> bool:
        known = self.vehicle_eligible(vehicle_id)
        if known is None:  # its reports reached another replica: what they wrote to the store
            record = self.store.get_vehicle(vehicle_id)
            known = record is not None and record.eligible and not record.revoked
        return known

    def heartbeat(self, vehicle: VehicleRecord, eligible: bool) -> list[str]:
        """A car's heartbeat: its resident leases are renewed while it is ``eligible``; once it is not, they are
        handed back (to fail over to another car) and it gives up any seat it holds in a forming gang. Returns the
        ids of its leases still open."""
        now = self.clock.now()
        if not eligible and self._gangs_live(now):
            self.store.drop_holds(vehicle.vehicle_id)
        still_open = []
        for lease in self.store.active_leases(vehicle.vehicle_id):
            if self._placement(self._job_spec(lease.job_id)) is Placement.RESIDENT:
                if lease.deadline < now:
                    self._expire(lease, None)
                    continue
                if not eligible:
                    self._release(lease, LeaseState.HANDED_BACK, preempted=True)
                    continue
                self.store.renew(lease.lease_id, now + self.config.lease_ttl_s)
            still_open.append(lease.lease_id)
        return still_open

    def _check_route(self, owned: _Owned) -> None:
        route = self.driver(owned.job.kind).reports_with
        if route is not None:
            raise Conflict(f"lease {owned.lease.lease_id} is a {owned.job.kind} lease; it reports with POST "
                           + route.replace("{lease_id}", owned.lease.lease_id))

    def _vehicle_artifact(self, vehicle: VehicleRecord, digest: str, what: str) -> bytes:
        """An artifact this vehicle uploaded, whole."""
        if not self.store.owns(f"vehicle:{vehicle.vehicle_id}", digest):
            raise NotFound(f"{what} artifact {digest} was not uploaded by this vehicle; PUT it to "
                           f"/v1/artifacts/{digest} first")
        return self.artifacts.read_bytes(digest)

    def _check_compute(self, lease: LeaseRecord, compute_s: float) -> None:
        check_compute_s(compute_s, lease_id=lease.lease_id, issued_at=lease.issued_at, now=self.clock.now(),
                        slack_s=self.config.compute_slack_s)

    def progress(self, vehicle: VehicleRecord, lease_id: str, report: ProgressReport) -> LeaseAck:
        owned = self._owned(vehicle, lease_id)
        self._check_route(owned)
        if report.done_items > owned.unit.items:
            raise InvalidInput(f"done_items {report.done_items} exceeds the unit's {owned.unit.items} items")
        if report.checkpoint is not None:
            data = self._vehicle_artifact(vehicle, report.checkpoint, "checkpoint")
            self.driver(owned.job.kind).check_checkpoint(owned.job, owned.unit, data, report.done_items)
        self.store.record_progress(lease_id, report.done_items, report.checkpoint)
        deadline = self.clock.now() + self.config.lease_ttl_s
        self.store.renew(lease_id, deadline)
        return LeaseAck(lease_id=lease_id, state=LeaseState.ACTIVE, deadline=deadline)

    def complete(self, vehicle: VehicleRecord, lease_id: str, req: CompleteRequest,
                 inline: bytes | None = None) -> LeaseAck:
        """Accept a unit's result (see :meth:`record_completion`) and assemble the job's result if it was the
        last unit."""
        ack, job = self.record_completion(vehicle, lease_id, req, inline)
        self.assemble_if_done(job)
        return ack

    def record_completion(self, vehicle: VehicleRecord, lease_id: str, req: CompleteRequest,
                          inline: bytes | None = None, *, arrived: float | None = None) -> tuple[LeaseAck, JobRecord]:
        """Accept a unit's result: ``inline`` bytes sent with the request, else the artifact ``req.result`` the car
        uploaded. Nothing is written, inline bytes included, until the lease is found to be the car's and open and
        the workload's driver accepted the whole result; then the unit is done and metered in one transaction,
        which stores an inline result too. Returns the ack and the job after it, for :meth:`assemble_if_done`
        (left to the caller: it may run outside the batch this ran in). ``arrived``: when the report reached the
        coordinator; its lease's deadline is judged at that moment (default: now)."""
        owned = self._owned(vehicle, lease_id, active=False)
        self._check_route(owned)
        if self._placement(owned.job) is Placement.RESIDENT:
            raise Conflict(f"lease {lease_id} is a resident lease of job {owned.job.job_id}: it has no natural end "
                           "and is never completed. It ends when its car hands it back (POST "
                           f"/v1/leases/{lease_id}/fail with handback), when the car stops renewing it or turns "
                           "ineligible, or when the job is cancelled")
        if owned.lease.state == LeaseState.COMPLETED:
            if owned.lease.result_digest == req.result:
                # A retried completion counts once; one cut short before assembling has the caller finish it.
                return LeaseAck(lease_id=lease_id, state=LeaseState.COMPLETED), owned.job
            raise Conflict(f"lease {lease_id} was already completed with result {owned.lease.result_digest}; "
                           "a lease completes once")
        self._require_active(owned, at=arrived)
        self._check_compute(owned.lease, req.compute_s)
        job, unit = owned.job, owned.unit
        driver = self.driver(job.kind)
        if inline is not None:
            digest = sha256_hex(inline)
            if digest != req.result:
                raise HashMismatch(f"inline result hashes to {digest}, not to {req.result}; send the sha256 of "
                                   "exactly the bytes in `inline`")
            data = inline
        else:
            data = self._vehicle_artifact(vehicle, req.result, "result")
        driver.check_result(job, unit, data)
        now = self.clock.now()
        usage, implausible = self._checked(owned, vehicle, driver.usage(job, unit, req, data,
                                                                        owned.lease.resumed_items), len(data), now)
        entry = self._row(owned.lease, job, usage, now, accepted=True)
        quorum = (job.spec.get("redundancy") or {}).get("quorum", 1)
        verifier = self.verifier if self.verifier is not None and self.verifier.applies(job) else None
        accept = quorum <= 1 and (verifier is None or verifier.release_now(job, unit, vehicle.vehicle_id))
        after = self.store.complete(owned.lease, unit, req.result, entry, now, accept=accept, blob=inline)
        self.store.after_commit(functools.partial(self.lease_closed, job.kind, LeaseState.COMPLETED.value))
        self.reports.record(vehicle.vehicle_id, implausible)
        if quorum > 1 and self._quorum(after, unit.idx, quorum):
            after = self.store.get_job(job.job_id) or after
        elif verifier is not None and not accept:
            settled = verifier.settle(after, unit)
            if settled.replicas_added:
                self._wake(settled.replicas_added)
            elif not settled.accepted and verifier.exhausted(after, unit.idx):
                self._finish(after, JobState.FAILED, error=f"unit {unit.idx}: no two of its results agreed")
            after = self.store.get_job(job.job_id) or after
        return LeaseAck(lease_id=lease_id, state=LeaseState.COMPLETED), after

    def _checked(self, owned: _Owned, vehicle: VehicleRecord, usage: Usage, result_bytes: int,
                 now: float) -> tuple[Usage, list[Implausible]]:
        """``usage`` a car reported for a lease being closed, held to what this coordinator saw of it: how long it
        was held, the bytes it had to move (its unit's inputs, the job's model file, the unit's checkpoint: the one
        it resumed from or one it reported progress with; its result or checkpoint), and the least time the car's
        hardware needs for the items it claims."""
        sizes = [self._size(digest) for digest in (owned.unit.input_digest, owned.job.spec.get("model_file"),
                                                   owned.unit.checkpoint_digest)]
        read = sizes[0] * min(1.0, usage.items / owned.unit.items) if owned.unit.items else 0  # the part computed
        seen = Seen(held_s=max(0.0, now - owned.lease.issued_at), payload_bytes=sum(sizes) + result_bytes,
                    fastest_s=fastest_s(vehicle.hardware, usage, model=owned.job.model, input_bytes=int(read)))
        return self.reports.check(usage, seen)

    def _size(self, digest: str | None) -> int:
        try:
            return self.artifacts.size(digest) if digest else 0
        except NotFound:  # a small result's blob, or an input kept elsewhere: not served from a file
            return 0

    def fail(self, vehicle: VehicleRecord, lease_id: str, req: FailRequest) -> LeaseAck:
        owned = self._owned(vehicle, lease_id, active=False)
        target = LeaseState.HANDED_BACK if req.handback else LeaseState.FAILED
        if owned.lease.state == target:
            return LeaseAck(lease_id=lease_id, state=target)  # a retried fail counts once
        self._require_active(owned)
        self._check_compute(owned.lease, req.compute_s)
        job, unit = owned.job, owned.unit
        checkpoint = None
        if req.checkpoint is not None and req.done_items > 0:
            if req.done_items > unit.items:
                raise InvalidInput(f"done_items {req.done_items} exceeds the unit's {unit.items} items")
            data = self._vehicle_artifact(vehicle, req.checkpoint, "checkpoint")
            self.driver(job.kind).check_checkpoint(job, unit, data, req.done_items)
            checkpoint = (req.done_items, req.checkpoint)
        now = self.clock.now()
        # The unit keeps the larger of this checkpoint and the last one reported with progress; either way the
        # items beyond the checkpoint this lease resumed from are its own, and whoever resumes is not paid them.
        done = max(self._checkpointed(owned.lease, unit),
                   computed_items(req.done_items, owned.lease.resumed_items) if checkpoint else 0)
        usage, implausible = self._checked(
            owned, vehicle, Usage(items=done, accelerator_s=req.compute_s, cellular_bytes=req.cellular_bytes,
                                  wifi_bytes=req.wifi_bytes),
            self._size(req.checkpoint) if checkpoint is not None else 0, now)
        entry = self._row(owned.lease, job, usage, now, accepted=checkpoint is not None or done > 0)
        if self._release(owned.lease, target, preempted=req.handback, checkpoint=checkpoint, entry=entry):
            self.reports.record(vehicle.vehicle_id, implausible)
        if not req.handback and unit.attempts >= self.config.max_unit_attempts:
            self._finish(job, JobState.FAILED,
                         error=f"unit {unit.idx} failed {unit.attempts} times; last: {req.reason}")
        return LeaseAck(lease_id=lease_id, state=target)

    def _release(self, lease: LeaseRecord, state: str, *, preempted: bool,
                 checkpoint: tuple[int, str] | None = None, entry: LedgerRecord | None = None) -> bool:
        """False if the lease was closed meanwhile (by another request or coordinator): nothing changed."""
        job = self._job_spec(lease.job_id)
        driver = self.drivers.get(job.kind)
        now = self.clock.now()
        placement = self._placement(job)
        gang_usage = None
        if placement is Placement.RESIDENT:
            # Worth the time it was held, however it ends; an expiry is the car leaving, as a hand-back is.
            entry = self._held_row(lease, job, now, accepted=state != LeaseState.FAILED, report=entry)
            preempted = preempted or state == LeaseState.EXPIRED
        elif placement is Placement.GANG:
            # The gang restarts: its other members' leases are cancelled, each metered for the time it was held
            # (its work is lost with the gang), as is this one when its car did not say what it did.
            def gang_usage(other: LeaseRecord) -> LedgerRecord:
                return self._held_row(other, job, now, accepted=False)

            entry = entry or gang_usage(lease)
        released = self.store.release(lease.lease_id, state, now, preempted=preempted,
                                      checkpoint=checkpoint, ledger_entry=entry,
                                      requeue=driver.requeue if driver is not None else True, gang_usage=gang_usage)
        if released:
            self.store.after_commit(functools.partial(self.lease_closed, job.kind, str(state)))
            unit = self.store.get_unit(lease.unit_id) if placement is Placement.GANG else None
            self._wake(unit.gang_size if unit is not None and unit.gang_size else 1)  # a gang wakes its k cars
        return released

    @staticmethod
    def _checkpointed(lease: LeaseRecord, unit: UnitRecord | None) -> int:
        """Items the unit's checkpoint holds beyond the one ``lease`` resumed from: that lease's own work (only the
        lease holding a unit can advance its checkpoint)."""
        if unit is None or not unit.checkpoint_digest:
            return 0
        return computed_items(unit.checkpoint_items, lease.resumed_items)

    def _expire(self, lease: LeaseRecord, unit: UnitRecord | None) -> bool:
        """Close a lease past its deadline and re-issue its unit. The checkpoint it reported is metered to it, as
        the car that resumes from it is metered only for the rest: a unit's items are metered once in total."""
        items = self._checkpointed(lease, unit)
        entry = None
        if items > 0:
            job = self._job_spec(lease.job_id)
            entry = self._row(lease, job, Usage(items=items), self.clock.now(), accepted=True)
        return self._release(lease, LeaseState.EXPIRED, preempted=False, entry=entry)

    def release_vehicle(self, vehicle_id: str) -> None:
        """Re-issue every unit a (revoked) vehicle holds, without waiting for its leases to expire."""
        for lease in self.store.active_leases(vehicle_id):
            self._release(lease, LeaseState.FAILED, preempted=False)

    def expire_due(self, grace_s: float = 0.0) -> int:
        """Close every lease more than ``grace_s`` past its deadline and put its unit back in the queue; returns how
        many this call closed (another coordinator's sweep may close some of the same ones first)."""
        due = self.store.expired_leases(self.clock.now() - grace_s)
        return sum(self._expire(lease, self.store.get_unit(lease.unit_id)) for lease in due)

    # --- results ------------------------------------------------------------------------------------------------
    def _quorum(self, job: JobRecord, idx: int, quorum: int) -> bool:
        """Accept unit ``idx`` once ``quorum`` of its replicas agree; add a replica when those done disagree."""
        driver = self.driver(job.kind)
        replicas = self.store.units_of(job.job_id, idx)
        done = [(u, self.artifacts.read_bytes(u.result_digest)) for u in replicas
                if u.state == UnitState.DONE and u.result_digest]
        for unit, data in done:
            if sum(driver.agree(job, data, other) for _, other in done) >= quorum:
                assert unit.result_digest is not None
                # Replicas that disagree with the accepted result are not paid (again when a late one reports).
                self.store.reject_usage([u.unit_id for u, other in done if not driver.agree(job, data, other)],
                                        f"unit {idx}: the result disagreed with the quorum of {quorum}")
                return self.store.accept_unit(job.job_id, idx, unit.result_digest)
        if all(u.state in (UnitState.DONE, UnitState.CANCELLED) for u in replicas):
            if len(replicas) >= 2 * job.spec["redundancy"]["replicas"] + 1:
                self.store.reject_usage([u.unit_id for u, _ in done], f"unit {idx}: no {quorum} of "
                                        f"{len(done)} replicas agreed")
                self._finish(job, JobState.FAILED, error=f"unit {idx}: no {quorum} of {len(done)} replicas agreed")
                return False
            base = replicas[0]
            self.store.add_units([UnitRecord(
                unit_id=f"{job.job_id}:{idx}:{len(replicas)}", job_id=job.job_id, idx=idx, replica=len(replicas),
                start_item=base.start_item, end_item=base.end_item, input_digest=base.input_digest,
                input_format=base.input_format, replicas=base.replicas,
            )])
            self._wake()
        return False

    def assemble_if_done(self, job: JobRecord) -> None:
        """Assemble the job's result if every unit is accepted and nobody has yet (``job`` as a completion left
        it: a cheap test, so callers may ask after every completion)."""
        if job.units_done == job.units_total and job.state == JobState.RUNNING:
            self._assemble(job)

    def _assemble(self, job: JobRecord) -> None:
        units = {(u.idx, u.result_digest): u for u in self.store.units_of(job.job_id)}
        results = [(units[(idx, digest)], self.artifacts.read_bytes(digest))
                   for idx, digest in self.store.accepted_results(job.job_id)]
        data = self.driver(job.kind).assemble(job, results)
        digest = self.artifacts.put_bytes(data)
        now = self.clock.now()
        self.store.add_artifact(digest, len(data), f"tenant:{job.tenant}", now)
        self._finish(job, JobState.DONE, result_digest=digest)


def _lease_id() -> str:
    return "lease-" + uuid.uuid4().hex


def _ledger_row(lease: LeaseRecord, job: JobRecord, usage: Usage, now: float, *, accepted: bool,
                plugged_in: bool | None = None) -> LedgerRecord:
    """The usage row a closed lease writes."""
    return LedgerRecord(lease_id=lease.lease_id, vehicle_id=lease.vehicle_id, job_id=job.job_id, items=usage.items,
                        compute_s=usage.accelerator_s, cellular_bytes=usage.cellular_bytes,
                        wifi_bytes=usage.wifi_bytes, at=now, accepted=accepted, workload=job.kind,
                        examples=usage.examples, steps=usage.steps, tokens=usage.tokens, plugged_in=plugged_in)
