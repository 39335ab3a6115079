"""The coordinator side of federated evaluation: one unit per shard, each car's four numbers checked against what
its shard can hold, then weighted into per-car and fleet-wide metrics."""

from __future__ import annotations

import json
import math
from typing import Any

from fleetgrid.coordinator.drivers import Plan, UnitDriver
from fleetgrid.coordinator.store import JobRecord, LeaseRecord, UnitRecord
from fleetgrid.core import Usage
from fleetgrid.errors import InvalidInput
from fleetgrid.protocol import ArtifactRef, CompleteRequest, Grant, WorkGrant
from fleetgrid.workloads.evaluation.messages import MAX_REPORT_BYTES, EvalGrant, EvalReport, EvalSubmit

__all__ = ["EvalDriver"]


class EvalDriver(UnitDriver):
    kind = "evaluate"
    submit_model = EvalSubmit
    result_suffix = "json"

    def plan(self, tenant: str, request: EvalSubmit, job_id: str) -> Plan:
        from fleetgrid.workloads.training import DataSpec
        from fleetgrid.workloads.training.tasks import MODELS

        if request.model not in MODELS:
            raise InvalidInput(f"unknown model {request.model!r} to evaluate; accepted: {sorted(MODELS)}")
        unknown = sorted(set(request.data) - set(DataSpec.__dataclass_fields__))
        if unknown:
            raise InvalidInput(f"unknown data setting(s) {unknown}; accepted: {sorted(DataSpec.__dataclass_fields__)}")
        try:
            spec = DataSpec(**request.data)
        except TypeError as exc:
            raise InvalidInput(f"bad data spec {request.data}: {exc}") from exc
        shards = request.shards or spec.num_vehicles
        if shards > spec.num_vehicles:
            raise InvalidInput(f"shards {shards} exceeds the data spec's num_vehicles {spec.num_vehicles}; "
                               "evaluate on at most that many shards")
        weights, artifacts, new_files = self._weights(tenant, request)
        self._check_weights(request.model, weights)
        job = JobRecord(job_id=job_id, tenant=tenant, name=request.name or job_id, kind=self.kind,
                        model=request.model, spec=request.model_dump(mode="json") | {"weights": weights},
                        items=shards, units_total=shards, created_at=self.ctx.clock.now())
        units = [UnitRecord(unit_id=f"{job_id}:{i}:0", job_id=job_id, idx=i, replica=0, start_item=i,
                            end_item=i + 1, input_digest=weights, input_format="safetensors")
                 for i in range(shards)]
        return Plan(job, units, artifacts=artifacts, new_files=new_files)

    def _weights(self, tenant: str, request: EvalSubmit) -> tuple[str, list[tuple[str, int]], list[str]]:
        """The digest of the weights to evaluate, the artifacts to record for the job (the shipped weights), and
        the files this call created."""
        if request.weights is not None:
            record = self.ctx.store.get_artifact(request.weights)
            if record is None or f"tenant:{tenant}" not in record.owners:
                raise InvalidInput(f"weights artifact {request.weights} is not yours; upload it with PUT "
                                   f"/v1/artifacts/{request.weights} or name a training job's result")
            return request.weights, [], []
        data = _shipped_weights(request.model)
        [(digest, size, created)] = self.ctx.artifacts.put_many([data])
        return digest, [(digest, size)], [digest] if created else []

    def _check_weights(self, model: str, digest: str) -> None:
        from fleetgrid.workloads.training.tasks import load_weights

        load_weights(model, self.ctx.artifacts.read_bytes(digest))

    def grant(self, job: JobRecord, unit: UnitRecord, lease: LeaseRecord) -> Grant:
        weights = ArtifactRef(digest=unit.input_digest, size=self.ctx.artifacts.size(unit.input_digest))
        spec = EvalGrant(model=job.model, weights=weights, data=job.spec["data"], shard=unit.idx,
                         max_examples=job.spec["max_examples"])
        return WorkGrant(kind=self.kind, lease_id=lease.lease_id, job_id=job.job_id, unit_index=unit.idx,
                         spec=spec.model_dump(mode="json"), deadline=lease.deadline,
                         renew_every_s=self.ctx.config.lease_ttl_s / 3)

    def check_result(self, job: JobRecord, unit: UnitRecord, data: bytes) -> None:
        report = self._report(data)
        limit = job.spec["max_examples"]
        if report.examples > limit:
            raise InvalidInput(f"report scores {report.examples} examples; the grant allowed at most {limit}")
        per_example = job.spec["data"].get("block_size", 64) if job.model == "charlm" else 1
        if report.targets > report.examples * per_example:
            raise InvalidInput(f"report scores {report.targets} targets for {report.examples} examples; at most "
                               f"{per_example} per example for model {job.model!r}")

    @staticmethod
    def _report(data: bytes) -> EvalReport:
        if len(data) > MAX_REPORT_BYTES:
            raise InvalidInput(f"evaluation report is {len(data)} bytes; at most {MAX_REPORT_BYTES} "
                               "(examples, targets, loss, accuracy as JSON)")
        try:
            return EvalReport.model_validate_json(data)
        except ValueError as exc:
            raise InvalidInput(f"evaluation report is not an EvalReport ({exc}); send JSON with examples, "
                               "targets, loss and accuracy") from exc

    def usage(self, job: JobRecord, unit: UnitRecord, report: CompleteRequest, data: bytes, resumed: int) -> Usage:
        return Usage(examples=self._report(data).examples, accelerator_s=report.compute_s,
                     cellular_bytes=report.cellular_bytes, wifi_bytes=report.wifi_bytes)

    def agree(self, job: JobRecord, a: bytes, b: bytes) -> bool:
        x, y = self._report(a), self._report(b)
        return ((x.examples, x.targets) == (y.examples, y.targets)
                and math.isclose(x.loss, y.loss, rel_tol=1e-3, abs_tol=1e-4)
                and math.isclose(x.accuracy, y.accuracy, abs_tol=1e-6))

    def assemble(self, job: JobRecord, results: list[tuple[UnitRecord, bytes]]) -> bytes:
        return json.dumps(self._summary(job, results), sort_keys=True).encode()

    def progress(self, job: JobRecord) -> dict[str, Any] | None:
        done = [u for u in self.ctx.store.units_of(job.job_id) if u.state == "done" and u.result_digest]
        results = [(u, self.ctx.artifacts.read_bytes(u.result_digest)) for u in done if u.result_digest]
        return self._summary(job, results)

    def _summary(self, job: JobRecord, results: list[tuple[UnitRecord, bytes]]) -> dict[str, Any]:
        per_car = []
        for unit, data in sorted(results, key=lambda r: r[0].idx):
            report = self._report(data)
            per_car.append({"shard": unit.idx, "vehicle_id": unit.vehicle_id, **report.model_dump()})
        targets = sum(r["targets"] for r in per_car)
        aggregate = None
        if targets:
            aggregate = {
                "examples": sum(r["examples"] for r in per_car), "targets": targets,
                "loss": sum(r["loss"] * r["targets"] for r in per_car) / targets,
                "accuracy": sum(r["accuracy"] * r["targets"] for r in per_car) / targets,
            }
        return {"model": job.model, "weights": job.spec["weights"], "shards": job.units_total,
                "reported": len(per_car), "aggregate": aggregate, "per_car": per_car}


def _shipped_weights(model: str) -> bytes:
    """The weights a model ships with (mnist1d-cnn's trained ones), else its seed-0 initial weights."""
    from safetensors.torch import save

    from fleetgrid.workloads.training import build_model

    if model == "mnist1d-cnn":
        from fleetgrid.models.mnist1d_cnn import WEIGHTS_PATH

        return WEIGHTS_PATH.read_bytes()
    state = {k: v.detach().contiguous().clone() for k, v in build_model(model).state_dict().items()}
    return save(state)
