"""The coordinator side of batch inference: a job's inputs sharded into units of items, each unit's result checked
row by row (float32 of the model's output shape, every value finite), replicas compared within tolerance, and the
accepted results concatenated in input order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from fleetgrid.coordinator.drivers import Plan, UnitDriver
from fleetgrid.coordinator.store import JobRecord, LeaseRecord, UnitRecord
from fleetgrid.core import Usage
from fleetgrid.errors import InvalidInput, NotFound
from fleetgrid.models.registry import get_model_spec, inspect_model_file, load_runner, refine_spec
from fleetgrid.protocol import (
    ArtifactRef,
    CheckpointRef,
    CompleteRequest,
    JobSubmit,
    LeaseGrant,
    ModelRef,
)
from fleetgrid.workloads.inputs import (
    assemble,
    check_result,
    decode_result,
    encode_items,
    encode_result,
    parse_inputs,
    shard,
)

__all__ = ["InferenceDriver"]


class InferenceDriver(UnitDriver):
    kind = "inference"
    submit_model = JobSubmit
    result_suffix = "npy"
    verifiable = True

    # --- planning ---------------------------------------------------------------------------------------------
    def plan(self, tenant: str, request: JobSubmit, job_id: str) -> Plan:
        spec = get_model_spec(request.model)
        model_file = None
        if spec.needs_model_file:
            if request.model_file is None:
                raise InvalidInput(f"model {spec.name!r} runs a file you upload; set model_file to its sha256")
            model_file = self._tenant_artifact(tenant, request.model_file, "model_file")
            spec = refine_spec(spec, inspect_model_file(model_file))  # exported files declare their shapes
        elif request.model_file is not None:
            raise InvalidInput(f"model {spec.name!r} is built in and takes no model_file; "
                               "use model 'torchscript' or 'torch-export' for your own file")
        items = parse_inputs(self._tenant_artifact(tenant, request.inputs, "inputs"), request.input_format, spec)
        job_spec = request.model_dump(mode="json")
        if request.model_file is not None:
            # Every result is later held to this tail, so a car's result never fails the job's assembly.
            job_spec["output_shape"] = list(self._trial_run(spec.name, request.model_file, items))
        ranges = shard(items, request.unit_items or spec.default_unit_items)
        formats: list[str] = []

        def shard_bytes() -> Iterator[bytes]:
            for start, end in ranges:
                data, fmt = encode_items(items[start:end])
                formats.append(fmt)
                yield data

        shards = self.ctx.artifacts.put_many(shard_bytes())  # durable before the job that needs them is committed
        replicas = request.redundancy.replicas
        units = [
            UnitRecord(unit_id=f"{job_id}:{idx}:{replica}", job_id=job_id, idx=idx, replica=replica, start_item=start,
                       end_item=end, input_digest=digest, input_format=fmt, replicas=replicas)
            for idx, ((start, end), (digest, _, _), fmt) in enumerate(zip(ranges, shards, formats, strict=True))
            for replica in range(replicas)
        ]
        job = JobRecord(job_id=job_id, tenant=tenant, name=request.name or job_id, kind=self.kind, model=spec.name,
                        spec=job_spec, items=len(items), units_total=len(ranges), created_at=self.ctx.clock.now())
        return Plan(job, units, artifacts=[(digest, size) for digest, size, _ in shards],
                    new_files=[digest for digest, _, created in shards if created])

    def _tenant_artifact(self, tenant: str, digest: str, what: str) -> bytes:
        record = self.ctx.store.get_artifact(digest)
        if record is None or f"tenant:{tenant}" not in record.owners:
            raise NotFound(f"{what} artifact {digest} was not uploaded by tenant {tenant!r}; "
                           f"PUT it to /v1/artifacts/{digest} first")
        return self.ctx.artifacts.read_bytes(digest)

    def _trial_run(self, name: str, digest: str, items: Any) -> tuple[int, ...]:
        """Run a user's model on one item, so a wrong input shape fails at submission, not on every car; returns
        the shape of one item's output."""
        path = self.ctx.artifacts.path(digest)
        try:
            out = np.asarray(load_runner(name, model_file=path, threads=1)(items[:1]))
        except Exception as exc:
            raise InvalidInput(f"model file {digest[:12]}... does not accept inputs of item shape "
                               f"{tuple(np.shape(items)[1:])}: {exc}") from exc
        if out.shape[:1] != (1,):
            raise InvalidInput(f"model file {digest[:12]}... returned shape {out.shape} for one item; "
                               "it must return one output row per input item")
        return tuple(int(d) for d in out.shape[1:])

    # --- leases -----------------------------------------------------------------------------------------------
    def grant(self, job: JobRecord, unit: UnitRecord, lease: LeaseRecord) -> LeaseGrant:
        artifacts = self.ctx.artifacts
        file_digest = job.spec.get("model_file")
        model_file = ArtifactRef(digest=file_digest, size=artifacts.size(file_digest)) if file_digest else None
        checkpoint = None
        if unit.checkpoint_digest and unit.checkpoint_items > 0:
            checkpoint = CheckpointRef(done_items=unit.checkpoint_items, digest=unit.checkpoint_digest)
        return LeaseGrant(
            lease_id=lease.lease_id, job_id=job.job_id, unit_index=unit.idx, replica=unit.replica,
            model=ModelRef(name=job.model, file=model_file),
            input=ArtifactRef(digest=unit.input_digest, size=artifacts.size(unit.input_digest),
                              format=unit.input_format),
            items=unit.items, batch_size=job.spec.get("batch_size") or get_model_spec(job.model).default_batch_size,
            checkpoint=checkpoint, deadline=lease.deadline, renew_every_s=self.ctx.config.lease_ttl_s / 3,
        )

    def check_result(self, job: JobRecord, unit: UnitRecord, data: bytes) -> None:
        check_result(data, unit.items, _output_tail(job), "result")

    def check_checkpoint(self, job: JobRecord, unit: UnitRecord, data: bytes, done: int) -> None:
        check_result(data, done, _output_tail(job), "checkpoint")

    def usage(self, job: JobRecord, unit: UnitRecord, report: CompleteRequest, data: bytes, resumed: int) -> Usage:
        return Usage(items=max(0, unit.items - resumed), accelerator_s=report.compute_s,
                     cellular_bytes=report.cellular_bytes, wifi_bytes=report.wifi_bytes)

    def agree(self, job: JobRecord, a: bytes, b: bytes) -> bool:
        redundancy = job.spec.get("redundancy") or {}
        return bool(np.allclose(decode_result(a), decode_result(b), atol=redundancy.get("atol", 1e-4),
                                rtol=redundancy.get("rtol", 1e-3)))

    def assemble(self, job: JobRecord, results: list[tuple[UnitRecord, bytes]]) -> bytes:
        return encode_result(assemble([decode_result(data) for _, data in results]))


def _output_tail(job: JobRecord) -> tuple[int, ...] | None:
    """One item's output shape: the model's, or for a user's model what its trial run returned."""
    tail = get_model_spec(job.model).output_shape
    if tail is None:
        tail = job.spec.get("output_shape")
    return tuple(tail) if tail is not None else None
