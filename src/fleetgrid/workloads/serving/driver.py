"""The coordinator side of a deployment: one RESIDENT unit per replica, so the shared lease lifecycle keeps N cars
holding the model, puts a replica whose car leaves straight back in the queue for another, and ends them all when
the deployment is cancelled (``fleetgrid undeploy``)."""

from __future__ import annotations

from typing import Any, NoReturn

from fleetgrid.coordinator.drivers import Plan, UnitDriver
from fleetgrid.coordinator.store import JobRecord, LeaseRecord, UnitRecord
from fleetgrid.core import Placement
from fleetgrid.errors import Conflict, InvalidInput
from fleetgrid.protocol import Grant, WorkGrant
from fleetgrid.workloads.serving.messages import ServeGrant, ServeSubmit

__all__ = ["LIVE_JOB_STATES", "ServingDriver", "servable"]

LIVE_JOB_STATES = ("queued", "running")
NO_INPUT = "0" * 64
MAX_BATCH = 64
EXCHANGE_WAIT_S = 1.0
"""A replica's long-poll: short, so a car that turns ineligible while idle hands back within about a second."""


def servable(model: str) -> None:
    """InvalidInput unless ``model`` is a registered model that can be served: text in, one vector out."""
    from fleetgrid.models.registry import get_model_spec, list_models

    spec = get_model_spec(model)  # UnknownModel names the registered ones
    if spec.input_kind != "text" or spec.output_shape is None or len(spec.output_shape) != 1:
        accepted = [m.name for m in list_models() if m.input_kind == "text" and m.output_shape is not None
                    and len(m.output_shape) == 1]
        raise InvalidInput(f"model {model!r} takes {spec.input_kind} and is not served yet; models that can be "
                           f"served (text embeddings): {accepted}")


class ServingDriver(UnitDriver):
    kind = "serve"
    submit_model = ServeSubmit
    placement = Placement.RESIDENT
    result_suffix = "json"

    def plan(self, tenant: str, request: ServeSubmit, job_id: str) -> Plan:
        servable(request.model)
        name = request.name or request.model
        for job in self.ctx.store.list_jobs(tenant):
            if job.kind == self.kind and job.name == name and job.state in LIVE_JOB_STATES:
                raise Conflict(f"deployment {name!r} already exists (job {job.job_id}); undeploy it first or pick "
                               "another name")
        job = JobRecord(job_id=job_id, tenant=tenant, name=name, kind=self.kind, model=request.model,
                        spec=request.model_dump(mode="json") | {"name": name}, items=request.replicas,
                        units_total=request.replicas, created_at=self.ctx.clock.now())
        units = [UnitRecord(unit_id=f"{job_id}:{i}:0", job_id=job_id, idx=i, replica=0, start_item=i,
                            end_item=i + 1, input_digest=NO_INPUT, input_format="none")
                 for i in range(request.replicas)]
        return Plan(job, units)

    def grant(self, job: JobRecord, unit: UnitRecord, lease: LeaseRecord) -> Grant:
        spec = ServeGrant(deployment=job.name, model=job.model, max_batch=MAX_BATCH, wait_s=EXCHANGE_WAIT_S)
        return WorkGrant(kind=self.kind, lease_id=lease.lease_id, job_id=job.job_id, unit_index=unit.idx,
                         spec=spec.model_dump(), deadline=lease.deadline,
                         renew_every_s=self.ctx.config.lease_ttl_s / 3)

    def check_result(self, job: JobRecord, unit: UnitRecord, data: bytes) -> NoReturn:
        raise InvalidInput(f"a replica of deployment {job.name!r} has no result to report; it serves until its car "
                           "hands it back")

    def assemble(self, job: JobRecord, results: list[tuple[UnitRecord, bytes]]) -> bytes:
        return b"{}"

    def progress(self, job: JobRecord) -> dict[str, Any] | None:
        return {"deployment": job.name, "replicas": job.units_total}
