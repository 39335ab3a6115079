"""Jobs into work units, units onto cars, results back into jobs.

The scheduler owns the policy: how inputs are sharded, which unit a car gets, when a lease is over, how replicas are
reconciled and when a job is assembled. The store only makes each step atomic. Everything here is synchronous and
fast; the HTTP layer adds the long-poll wait on :attr:`Scheduler.work_available`.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from dataclasses import dataclass

import numpy as np

from ..clock import Clock, WallClock
from ..errors import Conflict, Forbidden, InvalidInput, LeaseExpired, NotFound
from ..models.registry import get_model_spec, inspect_model_file, load_runner, refine_spec
from ..protocol import (
    ArtifactRef,
    CheckpointRef,
    CompleteRequest,
    FailRequest,
    JobState,
    JobStatus,
    JobSubmit,
    LeaseAck,
    LeaseGrant,
    ModelRef,
    ProgressReport,
)
from ..workloads.inputs import assemble, decode_result, encode_items, encode_result, parse_inputs, shard
from .artifacts import ArtifactStore
from .config import CoordinatorConfig
from .store import JobRecord, LeaseRecord, LedgerRecord, Store, UnitRecord, VehicleRecord

__all__ = ["Scheduler", "npy_shape"]


def npy_shape(data: bytes) -> tuple[tuple[int, ...], str]:
    """Shape and dtype of a .npy payload, from its header alone; InvalidInput if it is not one."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            raise ValueError(f"npy format version {version} (accepted: 1.0, 2.0)")
    except Exception as exc:  # numpy raises ValueError, SyntaxError and others on garbage
        raise InvalidInput(f"result is not a .npy array ({exc}); upload np.save() output of float32") from exc
    return tuple(shape), np.dtype(dtype).name


@dataclass(slots=True)
class _Owned:
    lease: LeaseRecord
    unit: UnitRecord
    job: JobRecord


class Scheduler:
    def __init__(self, store: Store, artifacts: ArtifactStore, config: CoordinatorConfig,
                 clock: Clock | None = None) -> None:
        self.store = store
        self.artifacts = artifacts
        self.config = config
        self.clock = clock or WallClock()
        self.work_available = asyncio.Event()
        self._specs: dict[str, JobRecord] = {}

    def _wake(self) -> None:
        """Wake long-polling cars: there may be work. Each waiter re-checks, so a spurious wake is harmless."""
        self.work_available.set()
        self.work_available = asyncio.Event()

    # --- tenants ------------------------------------------------------------------------------------------------
    def _tenant_artifact(self, tenant: str, digest: str, what: str) -> bytes:
        record = self.store.get_artifact(digest)
        if record is None or f"tenant:{tenant}" not in record.owners:
            raise NotFound(f"{what} artifact {digest} was not uploaded by tenant {tenant!r}; "
                           f"PUT it to /v1/artifacts/{digest} first")
        return self.artifacts.read_bytes(digest)

    def submit(self, tenant: str, req: JobSubmit) -> JobRecord:
        spec = get_model_spec(req.model)
        model_file = None
        if spec.needs_model_file:
            if req.model_file is None:
                raise InvalidInput(f"model {spec.name!r} runs a file you upload; set model_file to its sha256")
            model_file = self._tenant_artifact(tenant, req.model_file, "model_file")
            spec = refine_spec(spec, inspect_model_file(model_file))  # exported files declare their shapes
        elif req.model_file is not None:
            raise InvalidInput(f"model {spec.name!r} is built in and takes no model_file; "
                               "use model 'torchscript' or 'torch-export' for your own file")
        items = parse_inputs(self._tenant_artifact(tenant, req.inputs, "inputs"), req.input_format, spec)
        if model_file is not None:
            self._trial_run(spec.name, req.model_file, items)
        unit_items = req.unit_items or spec.default_unit_items
        job_id = "job-" + uuid.uuid4().hex[:12]
        now = self.clock.now()
        unit_list: list[UnitRecord] = []
        shards: list[tuple[str, int]] = []
        for idx, (start, end) in enumerate(shard(items, unit_items)):
            data, fmt = encode_items(items[start:end])
            digest = self.artifacts.put_bytes(data, sync=False)
            shards.append((digest, len(data)))
            for replica in range(req.redundancy.replicas):
                unit_list.append(UnitRecord(
                    unit_id=f"{job_id}:{idx}:{replica}", job_id=job_id, idx=idx, replica=replica,
                    start_item=start, end_item=end, input_digest=digest, input_format=fmt,
                    replicas=req.redundancy.replicas,
                ))
        job = JobRecord(
            job_id=job_id, tenant=tenant, name=req.name or job_id, kind=req.kind, model=spec.name,
            spec=req.model_dump(mode="json"), items=len(items), units_total=len(unit_list) // req.redundancy.replicas,
            created_at=now,
        )
        self.artifacts.sync()  # one flush for all shards, before the job that needs them is committed
        self.store.add_artifacts(shards, f"tenant:{tenant}", now)
        self.store.create_job(job, unit_list)
        self._wake()
        return job

    def _trial_run(self, name: str, digest: str, items) -> None:
        """Run a user's model on one item, so a wrong input shape fails at submission, not on every car."""
        path = self.artifacts.path(digest)
        try:
            out = np.asarray(load_runner(name, model_file=path, threads=1)(items[:1]))
        except Exception as exc:
            raise InvalidInput(f"model file {digest[:12]}... does not accept inputs of item shape "
                               f"{tuple(np.shape(items)[1:])}: {exc}") from exc
        if out.shape[:1] != (1,):
            raise InvalidInput(f"model file {digest[:12]}... returned shape {out.shape} for one item; "
                               "it must return one output row per input item")

    def job_for(self, tenant: str, job_id: str) -> JobRecord:
        job = self.store.get_job(job_id)
        if job is None or job.tenant != tenant:
            raise NotFound(f"job {job_id!r} does not exist for tenant {tenant!r}; GET /v1/jobs lists yours")
        return job

    def status(self, job: JobRecord) -> JobStatus:
        in_flight = self.store.count_units(job.job_id, "leased") if job.state == JobState.RUNNING else 0
        return JobStatus(
            job_id=job.job_id, name=job.name, kind=job.kind, model=job.model, state=JobState(job.state),
            items=job.items, units_total=job.units_total, units_done=job.units_done, units_in_flight=in_flight,
            reissued_units=job.reissued_units, preemptions=job.preemptions, created_at=job.created_at,
            finished_at=job.finished_at, result=job.result_digest, error=job.error,
        )

    def cancel(self, tenant: str, job_id: str) -> JobRecord:
        job = self.job_for(tenant, job_id)
        if job.state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED):
            raise Conflict(f"job {job_id} is already {job.state}; only queued or running jobs can be cancelled")
        self.store.finish_job(job_id, JobState.CANCELLED, self.clock.now(), error="cancelled by tenant")
        return self.store.get_job(job_id)

    def result(self, tenant: str, job_id: str) -> bytes:
        job = self.job_for(tenant, job_id)
        if job.state != JobState.DONE or job.result_digest is None:
            raise Conflict(f"job {job_id} is {job.state}, not done; results exist once state is 'done'")
        return self.artifacts.read_bytes(job.result_digest)

    # --- vehicles -----------------------------------------------------------------------------------------------
    def lease(self, vehicle: VehicleRecord) -> LeaseGrant | None:
        now = self.clock.now()
        got = self.store.acquire(vehicle.vehicle_id, now, now + self.config.lease_ttl_s, "lease-" + uuid.uuid4().hex)
        if got is None:
            return None
        lease, unit = got
        job = self._job_spec(unit.job_id)
        if job.state == JobState.QUEUED:
            self.store.start_job(job.job_id)
            job.state = JobState.RUNNING
        spec = get_model_spec(job.model)
        file_digest = job.spec.get("model_file")
        model_file = ArtifactRef(digest=file_digest, size=self.artifacts.size(file_digest)) if file_digest else None
        checkpoint = None
        if unit.checkpoint_digest and unit.checkpoint_items > 0:
            checkpoint = CheckpointRef(done_items=unit.checkpoint_items, digest=unit.checkpoint_digest)
        return LeaseGrant(
            lease_id=lease.lease_id, job_id=job.job_id, unit_index=unit.idx, replica=unit.replica,
            model=ModelRef(name=job.model, file=model_file),
            input=ArtifactRef(digest=unit.input_digest, size=self.artifacts.size(unit.input_digest),
                              format=unit.input_format),
            items=unit.items, batch_size=job.spec.get("batch_size") or spec.default_batch_size,
            checkpoint=checkpoint, deadline=lease.deadline, renew_every_s=self.config.lease_ttl_s / 3,
        )

    def _job_spec(self, job_id: str) -> JobRecord:
        """A job's immutable part (model, spec), cached: every lease needs it. Its counters here are stale."""
        job = self._specs.get(job_id)
        if job is None:
            job = self._specs[job_id] = self.store.get_job(job_id)
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

    def _require_active(self, owned: _Owned) -> None:
        lease = owned.lease
        if lease.state == "active" and lease.deadline < self.clock.now():
            self._release(lease, "expired", preempted=False)
            lease.state = "expired"
        if lease.state == "expired":
            raise LeaseExpired(f"lease {lease.lease_id} expired at its deadline and its unit was re-issued; "
                               "lease new work with POST /v1/leases")
        if lease.state != "active":
            raise Conflict(f"lease {lease.lease_id} is {lease.state}, not active; lease new work with POST /v1/leases")

    def renew(self, vehicle: VehicleRecord, lease_id: str) -> LeaseAck:
        self._owned(vehicle, lease_id)
        deadline = self.clock.now() + self.config.lease_ttl_s
        self.store.renew(lease_id, deadline)
        return LeaseAck(lease_id=lease_id, state="active", deadline=deadline)

    def _vehicle_npy(self, vehicle: VehicleRecord, digest: str, what: str) -> bytes:
        """The first bytes (enough for the .npy header) of an artifact this vehicle uploaded."""
        if not self.store.owns(f"vehicle:{vehicle.vehicle_id}", digest):
            raise NotFound(f"{what} artifact {digest} was not uploaded by this vehicle; PUT it to "
                           f"/v1/artifacts/{digest} first")
        return self.artifacts.read_head(digest, 4096)

    def _check_rows(self, owned: _Owned, data: bytes, rows: int, what: str) -> None:
        shape, dtype = npy_shape(data)
        spec = get_model_spec(owned.job.model)
        expected = (rows, *spec.output_shape) if spec.output_shape else None
        if dtype != "float32" or not shape or shape[0] != rows or (expected and shape != expected):
            want = expected or (rows, "...")
            raise InvalidInput(f"{what} has shape {shape} and dtype {dtype}; expected float32 of shape {want}")

    def progress(self, vehicle: VehicleRecord, lease_id: str, report: ProgressReport) -> LeaseAck:
        owned = self._owned(vehicle, lease_id)
        if report.done_items > owned.unit.items:
            raise InvalidInput(f"done_items {report.done_items} exceeds the unit's {owned.unit.items} items")
        if report.checkpoint is not None:
            data = self._vehicle_npy(vehicle, report.checkpoint, "checkpoint")
            self._check_rows(owned, data, report.done_items, "checkpoint")
        self.store.record_progress(lease_id, report.done_items, report.checkpoint)
        deadline = self.clock.now() + self.config.lease_ttl_s
        self.store.renew(lease_id, deadline)
        return LeaseAck(lease_id=lease_id, state="active", deadline=deadline)

    def complete(self, vehicle: VehicleRecord, lease_id: str, req: CompleteRequest,
                 inline: bytes | None = None) -> LeaseAck:
        """Accept a unit's result. ``inline``: the result's bytes, already stored under ``req.result``."""
        owned = self._owned(vehicle, lease_id, active=False)
        if owned.lease.state == "completed":
            if owned.lease.result_digest == req.result:
                return LeaseAck(lease_id=lease_id, state="completed")  # a retried completion counts once
            raise Conflict(f"lease {lease_id} was already completed with result {owned.lease.result_digest}; "
                           "a lease completes once")
        self._require_active(owned)
        head = inline[:4096] if inline is not None else self._vehicle_npy(vehicle, req.result, "result")
        self._check_rows(owned, head, owned.unit.items, "result")
        now = self.clock.now()
        entry = LedgerRecord(lease_id=lease_id, vehicle_id=vehicle.vehicle_id, job_id=owned.job.job_id,
                             items=owned.unit.items, compute_s=req.compute_s, cellular_bytes=req.cellular_bytes,
                             wifi_bytes=req.wifi_bytes, at=now)
        quorum = (owned.job.spec.get("redundancy") or {}).get("quorum", 1)
        artifact = (len(inline), f"vehicle:{vehicle.vehicle_id}") if inline is not None else None
        unit = owned.unit
        job = self.store.complete(owned.lease, unit, req.result, entry, now, accept=quorum <= 1, artifact=artifact)
        if quorum > 1 and self._quorum(job, unit.idx, quorum, job.spec["redundancy"]):
            job = self.store.get_job(job.job_id)
        if job.units_done == job.units_total and job.state == JobState.RUNNING:
            self._assemble(job)
        return LeaseAck(lease_id=lease_id, state="completed")

    def fail(self, vehicle: VehicleRecord, lease_id: str, req: FailRequest) -> LeaseAck:
        owned = self._owned(vehicle, lease_id, active=False)
        closed = {"handed_back", "failed"}
        if owned.lease.state in closed and (owned.lease.state == "handed_back") == req.handback:
            return LeaseAck(lease_id=lease_id, state=owned.lease.state)  # a retried fail counts once
        self._require_active(owned)
        checkpoint = None
        if req.checkpoint is not None and req.done_items > 0:
            if req.done_items > owned.unit.items:
                raise InvalidInput(f"done_items {req.done_items} exceeds the unit's {owned.unit.items} items")
            self._check_rows(owned, self._vehicle_npy(vehicle, req.checkpoint, "checkpoint"), req.done_items,
                             "checkpoint")
            checkpoint = (req.done_items, req.checkpoint)
        now = self.clock.now()
        entry = LedgerRecord(lease_id=lease_id, vehicle_id=vehicle.vehicle_id, job_id=owned.job.job_id,
                             items=req.done_items if checkpoint else 0, compute_s=req.compute_s,
                             cellular_bytes=req.cellular_bytes, wifi_bytes=req.wifi_bytes, at=now,
                             accepted=checkpoint is not None)
        state = "handed_back" if req.handback else "failed"
        self._release(owned.lease, state, preempted=req.handback, checkpoint=checkpoint, entry=entry)
        if not req.handback and owned.unit.attempts >= self.config.max_unit_attempts:
            self.store.finish_job(owned.job.job_id, JobState.FAILED, now,
                                  error=f"unit {owned.unit.idx} failed {owned.unit.attempts} times; last: {req.reason}")
        return LeaseAck(lease_id=lease_id, state=state)

    def _release(self, lease: LeaseRecord, state: str, *, preempted: bool,
                 checkpoint: tuple[int, str] | None = None, entry: LedgerRecord | None = None) -> bool:
        """False if the lease was closed meanwhile (by another request or coordinator): nothing changed."""
        released = self.store.release(lease.lease_id, state, self.clock.now(), preempted=preempted,
                                      checkpoint=checkpoint, ledger_entry=entry)
        if released:
            self._wake()
        return released

    def release_vehicle(self, vehicle_id: str) -> None:
        """Re-issue every unit a (revoked) vehicle holds, without waiting for its leases to expire."""
        for lease in self.store.active_leases(vehicle_id):
            self._release(lease, "failed", preempted=False)

    def expire_due(self) -> int:
        """Close every lease past its deadline and put its unit back in the queue; returns how many this call
        closed (another coordinator's sweep may close some of the same ones first)."""
        due = self.store.expired_leases(self.clock.now())
        return sum(self._release(lease, "expired", preempted=False) for lease in due)

    # --- results ------------------------------------------------------------------------------------------------
    def _quorum(self, job: JobRecord, idx: int, quorum: int, redundancy: dict) -> bool:
        replicas = self.store.units_of(job.job_id, idx)
        done = [u for u in replicas if u.state == "done"]
        arrays = [decode_result(self.artifacts.read_bytes(u.result_digest)) for u in done]
        atol, rtol = redundancy.get("atol", 1e-4), redundancy.get("rtol", 1e-3)
        for i, a in enumerate(arrays):
            agree = sum(np.allclose(a, b, atol=atol, rtol=rtol) for b in arrays)
            if agree >= quorum:
                return self.store.accept_unit(job.job_id, idx, done[i].result_digest)
        if all(u.state in ("done", "cancelled") for u in replicas):
            if len(replicas) >= 2 * job.spec["redundancy"]["replicas"] + 1:
                self.store.finish_job(job.job_id, JobState.FAILED, self.clock.now(),
                                      error=f"unit {idx}: no {quorum} of {len(done)} replicas agreed")
                return False
            base = replicas[0]
            self.store.add_units([UnitRecord(
                unit_id=f"{job.job_id}:{idx}:{len(replicas)}", job_id=job.job_id, idx=idx, replica=len(replicas),
                start_item=base.start_item, end_item=base.end_item, input_digest=base.input_digest,
                input_format=base.input_format, replicas=base.replicas,
            )])
            self._wake()
        return False

    def _assemble(self, job: JobRecord) -> None:
        parts = [decode_result(self.artifacts.read_bytes(d)) for _, d in self.store.accepted_results(job.job_id)]
        data = encode_result(assemble(parts))
        digest = self.artifacts.put_bytes(data)
        now = self.clock.now()
        self.store.add_artifact(digest, len(data), f"tenant:{job.tenant}", now)
        self.store.finish_job(job.job_id, JobState.DONE, now, result_digest=digest)
