"""The coordinator side of a deployment: one RESIDENT unit per replica, so the shared lease lifecycle keeps N cars
holding the model, puts a replica whose car leaves straight back in the queue for another, and ends them all when
the deployment is cancelled (``fleetgrid undeploy``)."""

from __future__ import annotations

import threading
from typing import Any, NoReturn

from fleetgrid.coordinator.drivers import DriverContext, Plan, UnitDriver
from fleetgrid.coordinator.store import JobRecord, LeaseRecord, UnitRecord
from fleetgrid.core import Placement, Usage
from fleetgrid.errors import Conflict, InvalidInput, NotFound
from fleetgrid.protocol import ArtifactRef, Grant, WorkGrant
from fleetgrid.workloads.serving.messages import ServeGrant, ServeSubmit

__all__ = ["GENERATIVE", "LIVE_JOB_STATES", "ServingDriver", "replica_unit", "servable"]

LIVE_JOB_STATES = ("queued", "running")
NO_INPUT = "0" * 64
MAX_BATCH = 64
EXCHANGE_WAIT_S = 1.0
"""A replica's long-poll: short, so a car that turns ineligible while idle hands back within about a second."""


GENERATIVE = ("charlm",)
"""Models served for text generation (completions, chat): the character-level LM a fleet training job makes."""


def servable(model: str) -> None:
    """InvalidInput unless ``model`` can be served: a registered text-embedding model (text in, one vector out) or
    a generative one (:data:`GENERATIVE`)."""
    from fleetgrid.models.registry import get_model_spec, list_models

    if model in GENERATIVE:
        return
    spec = get_model_spec(model)  # UnknownModel names the registered ones
    if spec.input_kind != "text" or spec.output_shape is None or len(spec.output_shape) != 1:
        accepted = [m.name for m in list_models() if m.input_kind == "text" and m.output_shape is not None
                    and len(m.output_shape) == 1]
        raise InvalidInput(f"model {model!r} takes {spec.input_kind} and is not served yet; models that can be "
                           f"served: text embeddings {accepted}, text generation {list(GENERATIVE)}")


def replica_unit(job: JobRecord, idx: int) -> UnitRecord:
    """Replica ``idx`` of a deployment. A generative model's weights are the unit's input: so the car holding the
    replica may read them."""
    weights = job.spec.get("weights")
    return UnitRecord(unit_id=f"{job.job_id}:{idx}:0", job_id=job.job_id, idx=idx, replica=0, start_item=idx,
                      end_item=idx + 1, input_digest=weights or NO_INPUT,
                      input_format="safetensors" if weights else "none")


class ServedCounts:
    """Requests answered and tokens processed per replica (lease), as this coordinator's router counted them;
    taken into the lease's usage row when it closes. Shared by the router (event loop, adding) and the driver
    (store threads, taking): a lock keeps each replica's count whole."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, int]] = {}

    def add(self, lease_id: str, requests: int, tokens: int) -> None:
        with self._lock:
            done, seen = self._counts.get(lease_id, (0, 0))
            self._counts[lease_id] = (done + requests, seen + tokens)

    def take(self, lease_id: str) -> tuple[int, int]:
        with self._lock:
            return self._counts.pop(lease_id, (0, 0))


class ServingDriver(UnitDriver):
    kind = "serve"
    submit_model = ServeSubmit
    placement = Placement.RESIDENT
    result_suffix = "json"

    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx)
        self.served = ServedCounts()

    def held_usage(self, lease: LeaseRecord) -> Usage:
        """Requests the replica answered (items) and tokens it processed: embedded word pieces, or characters
        generated. Counted by this coordinator process; a replica's lease closed by another replica (several on
        one PostgreSQL) is metered for its time only."""
        requests, tokens = self.served.take(lease.lease_id)
        return Usage(items=requests, tokens=tokens)

    def plan(self, tenant: str, request: ServeSubmit, job_id: str) -> Plan:
        servable(request.model)
        name = request.name or request.model
        for job in self.ctx.store.list_jobs(tenant):
            if job.kind == self.kind and job.name == name and job.state in LIVE_JOB_STATES:
                raise Conflict(f"deployment {name!r} already exists (job {job.job_id}); undeploy it first or pick "
                               "another name")
        weights = self._weights(tenant, request)
        ceiling = request.max_replicas or request.replicas
        first = min(ceiling, request.replicas + request.spares)
        job = JobRecord(job_id=job_id, tenant=tenant, name=name, kind=self.kind, model=request.model,
                        spec=request.model_dump(mode="json") | {"name": name, "weights": weights,
                                                                "max_replicas": ceiling},
                        items=first, units_total=first, created_at=self.ctx.clock.now())
        return Plan(job, [replica_unit(job, i) for i in range(first)])

    def _weights(self, tenant: str, request: ServeSubmit) -> str | None:
        """The digest of a generative model's weights (checked to load), None for an embedding model."""
        if request.model not in GENERATIVE:
            if request.weights or request.from_job:
                raise InvalidInput(f"model {request.model!r} ships its weights; weights and from_job are for "
                                   f"{list(GENERATIVE)}")
            return None
        store = self.ctx.store
        digest = request.weights
        if request.from_job is not None:
            job = store.get_job(request.from_job)
            if job is None or job.tenant != tenant:
                raise NotFound(f"job {request.from_job} does not exist or is not yours")
            if job.kind != "train" or job.model != request.model or job.result_digest is None:
                raise InvalidInput(f"job {request.from_job} is not a finished {request.model} training job; serve a "
                                   "training job's result once it is done")
            digest = job.result_digest
        if digest is None:
            raise InvalidInput(f"model {request.model!r} needs its weights: name a finished training job (from_job) "
                               "or an artifact of yours (weights)")
        record = store.get_artifact(digest)
        owners = record.owners if record is not None else []
        if request.from_job is None and f"tenant:{tenant}" not in owners:
            raise InvalidInput(f"weights artifact {digest} is not yours; upload it with PUT /v1/artifacts/{digest}")
        self._check_weights(request.model, digest)
        return digest

    def _check_weights(self, model: str, digest: str) -> None:
        from fleetgrid.workloads.training.tasks import load_weights

        load_weights(model, self.ctx.artifacts.read_bytes(digest))

    def grant(self, job: JobRecord, unit: UnitRecord, lease: LeaseRecord) -> Grant:
        digest = job.spec.get("weights")
        weights = ArtifactRef(digest=digest, size=self.ctx.artifacts.size(digest)) if digest else None
        spec = ServeGrant(deployment=job.name, model=job.model, max_batch=MAX_BATCH, wait_s=EXCHANGE_WAIT_S,
                          weights=weights)
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
