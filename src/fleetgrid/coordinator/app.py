"""The coordinator's HTTP API: vehicle, tenant and operator routes over the scheduler and store.

Errors from :mod:`fleetgrid.errors` are mapped to status codes in one place (:mod:`.http_errors`); request
validation errors become readable 422s that name the field. No route answers 500 to anything a client can send.

The event loop only waits: routes that are synchronous through and through are plain ``def`` (FastAPI runs them in
its thread pool), and the few that must await (the long-poll, a completion that leases the next unit, an upload)
hand every store call, file write and model run to a thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypeVar, Union

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Discriminator, Tag, ValidationError
from pydantic.json_schema import models_json_schema

from ..clock import Clock, WallClock
from ..errors import Conflict, FleetgridError, InvalidInput
from ..identity.signing import load_public_key
from ..protocol import (
    API_PREFIX,
    MAX_INLINE_RESULT_BYTES,
    CompleteRequest,
    EnrollRequest,
    EnrollResponse,
    FailRequest,
    Grant,
    HeartbeatResponse,
    JobState,
    JobStatus,
    LeaseAck,
    LeaseRequest,
    ProgressReport,
    StateReport,
    TrainSubmit,
    UpdateReport,
)
from ..vehicle.hardware import get_profile
from ..web import dashboard_routes
from ..workloads.base import workloads
from .admission import Admission
from .artifacts import ArtifactStore
from .auth import Authenticator, car, hash_token, vehicle_credential
from .auth_gate import AuthFailureGate, client_address
from .bootstrap import bootstrap_credentials
from .config import CoordinatorConfig
from .drivers import DriverContext, load_unit_drivers
from .history import CarStateSampler
from .http_errors import install_error_handlers
from .limits import BodyLimit
from .metrics import CoordinatorMetrics
from .observe import RequestObserver, note_principal
from .ratelimit import RateLimiter
from .rounds import with_training
from .routes.artifacts import artifact_routes
from .routes.billing import billing_routes
from .routes.identity import identity_routes
from .routes.operations import operations_routes
from .routes.operator import operator_routes
from .routes.secagg import secagg_routes
from .routes.tenants import tenant_admin_routes
from .scheduler import Scheduler
from .security import accepts, document
from .states import VehicleStates
from .store import JobRecord, Store, VehicleRecord, open_store
from .training import TrainingService

__all__ = ["Coordinator", "create_app"]

log = logging.getLogger("fleetgrid.coordinator")

T = TypeVar("T")


class Coordinator:
    """The pieces one coordinator process holds, built from a config."""

    def __init__(self, config: CoordinatorConfig, clock: Clock | None = None, store: Store | None = None) -> None:
        self.config = config
        self.clock = clock or WallClock()
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = store or open_store(config.db_url)
        self.artifacts = ArtifactStore(config.artifacts_path, small=self.store.result_blob)
        self.auth = Authenticator(self.store, self.clock, config.auth_cache_ttl_s,
                                  car_failures=config.auth_failure_limit, skew_s=config.signature_skew_s,
                                  max_nonces=config.max_nonces, require_keys=config.require_car_keys,
                                  max_keys=config.rate_limit_keys)
        self.auth_failures = RateLimiter(config.auth_failure_limit, self.clock, what="failed authentications",
                                         max_keys=config.rate_limit_keys)
        self.enrollments = RateLimiter(config.enroll_limit, self.clock, what="enrollments",
                                       max_keys=config.rate_limit_keys)
        drivers = load_unit_drivers(DriverContext(self.store, self.artifacts, config, self.clock))
        self.scheduler = Scheduler(self.store, self.artifacts, config, self.clock, drivers=drivers)
        self.training: TrainingService = drivers["train"].service  # type: ignore[attr-defined]
        self.services: dict[str, Any] = {}
        """Per workload kind, the service behind its own routes (started and stopped with the app)."""
        self.scheduler.offers_possible = lambda: self.training.any_live
        if self.scheduler.verifier is not None:
            self.scheduler.verifier.vehicle_suspended = self._suspended
        self.admission = Admission(config.admission_max_delay_s or max(1.0, config.lease_ttl_s / 4),
                                   interval_s=config.admission_interval_s)
        self.states = VehicleStates(self.store, self.clock, refresh_s=min(10.0, config.online_window_s / 3))
        self.scheduler.vehicle_eligible = self.states.eligible
        self.scheduler.vehicle_plugged_in = self.states.plugged_in
        self.credentials = bootstrap_credentials(self.store, config, self.clock)
        self.metrics = CoordinatorMetrics(self)
        self.history = CarStateSampler(self.store, self.clock, interval_s=config.state_sample_interval_s,
                                       keep_s=config.state_history_s, online_window_s=config.online_window_s)
        self.scheduler.lease_granted = self.metrics.lease_granted
        self.scheduler.lease_closed = self.training.lease_closed = self.metrics.lease_closed
        self.scheduler.reports.counted = self.training.reports.counted = self.metrics.implausible
        if self.scheduler.verifier is not None:
            self.scheduler.verifier.judged = self.metrics.verdict

    def _suspended(self, vehicle_id: str) -> None:
        """A car was suspended for wrong results: refuse its cached credential and re-issue its work now."""
        self.metrics.suspension()
        self.auth.forget_vehicle(vehicle_id)
        self.scheduler.release_vehicle(vehicle_id)
        self.training.release_vehicle(vehicle_id)

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            try:
                await asyncio.to_thread(self.sweep)
            except Exception:  # keep sweeping; a transient database error must not stop re-issue for good
                log.exception("lease sweep failed")

    def sweep(self) -> None:
        """Write the cars' noted states; close every lease past its deadline, inference and training (with the
        coordinator's own delay as grace: a completion may be waiting in its queue); count the cars by state when
        a sample is due (the dashboard's history)."""
        self.states.flush()
        self.scheduler.expire_due(grace_s=self.admission.delay_s)
        self.training.expire_due()
        self.history.maybe_sample()


def _tagged_union(models: dict[str, type[BaseModel]]) -> Any:
    """One request body that is any of ``models``, chosen by its ``kind`` (``'inference'`` when absent)."""
    members = tuple(Annotated[model, Tag(kind)] for kind, model in sorted(models.items()))

    def kind_of(value: Any) -> str | None:
        if isinstance(value, dict):
            kind = value.get("kind", "inference")
            return kind if isinstance(kind, str) else None
        return getattr(value, "kind", None)

    return Annotated[Union[members], Discriminator(kind_of)]  # noqa: UP007 - a Union built at run time


def decode_inline(text: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"inline result is not valid base64 ({exc}); send base64 of the .npy bytes") from exc
    if len(data) > MAX_INLINE_RESULT_BYTES:
        raise InvalidInput(f"inline result is {len(data)} bytes; inline results are at most "
                           f"{MAX_INLINE_RESULT_BYTES} bytes, upload larger ones with PUT /v1/artifacts/{{sha256}}")
    return data


def create_app(config: CoordinatorConfig | None = None, clock: Clock | None = None,
               coordinator: Coordinator | None = None) -> RequestObserver:
    """The coordinator as an ASGI app: the FastAPI routes (``.app``) behind the request-body limit, behind the
    request observer (request ids, metrics, request log)."""
    coord = coordinator or Coordinator(config or CoordinatorConfig(), clock)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        coord.scheduler.polls.loop = loop  # routes in threads wake long-polls through it
        # Store calls block on the database, not the CPU: the default executor's min(32, cores + 4) threads would
        # queue 1,000 cars' completions behind their long-polls' look-ups.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=coord.config.store_threads,
                                                     thread_name_prefix="fleetgrid-store"))
        coord.training.notify = lambda vehicles: coord.scheduler.polls.wake(0, vehicles)
        # Work other replicas on this database make wakes cars here too (none to listen for on SQLite).
        stop_listening = await asyncio.to_thread(coord.store.listen_for_work, coord.scheduler.polls.wake)
        await asyncio.to_thread(coord.training.start)
        sweeper = asyncio.create_task(coord.sweep_forever())
        watcher = asyncio.create_task(coord.admission.watch(lambda: coord.store.batched(lambda: None)))
        for service in services:
            await service.start()
        try:
            yield
        finally:
            for service in services:
                await service.stop()
            await asyncio.to_thread(coord.training.shutdown)
            for task in (sweeper, watcher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await asyncio.to_thread(stop_listening)
            await asyncio.to_thread(coord.states.flush)

    app = FastAPI(title="fleetgrid coordinator", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Schedules work onto parked cars; see the README for the protocol.")
    app.state.coordinator = coord
    install_error_handlers(app)
    _vehicle_routes(app, coord)
    artifact_routes(app, coord)
    _tenant_routes(app, coord)
    _training_routes(app, coord)
    secagg_routes(app, coord)
    operator_routes(app, coord)
    tenant_admin_routes(app, coord)
    operations_routes(app, coord)
    identity_routes(app, coord)
    billing_routes(app, coord)
    dashboard_routes(app, coord)
    for workload in workloads():  # a workload's own routes (serving's API), and the service behind them
        if workload.routes is not None and (service := workload.load("routes")(app, coord)) is not None:
            coord.services[workload.kind] = service
    services = list(coord.services.values())

    app.openapi = _openapi_with_hot_bodies(app)  # type: ignore[method-assign]

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    limited = BodyLimit(app, max_json=coord.config.max_json_bytes, max_artifact=coord.config.max_artifact_bytes)
    gated = AuthFailureGate(limited, coord.auth_failures)
    return RequestObserver(gated, coord.metrics, access_log=coord.config.log_format == "json", app=app)


M = TypeVar("M", bound=BaseModel)
_HOT_BODIES: list[type[BaseModel]] = []


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses ``model`` itself (:func:`_parse`); the model's schema joins
    the document's components (:func:`_openapi_with_hot_bodies`)."""
    if model not in _HOT_BODIES:
        _HOT_BODIES.append(model)
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


async def _parse(model: type[M], request: Request) -> M:
    """The request's JSON body as ``model``: invalid bodies are the same 422 FastAPI gives, naming the field."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        request.state.body_model = model  # for the message's list of accepted fields
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _openapi_with_hot_bodies(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            _, defs = models_json_schema([(m, "validation") for m in _HOT_BODIES],
                                         ref_template="#/components/schemas/{model}")
            known = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in defs.get("$defs", {}).items():
                known.setdefault(name, definition)
            document(schema, app.routes)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def _json(model: BaseModel, status_code: int = 200) -> Response:
    """A response model's JSON as the route's answer (FastAPI would validate it a second time on the way out)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def _last_unit(job: JobRecord) -> bool:
    return job.units_done == job.units_total and job.state == JobState.RUNNING


def _vehicle_routes(app: FastAPI, coord: Coordinator) -> None:
    sched, store = coord.scheduler, coord.store
    states = coord.states

    async def batched(fn: Callable[[], T]) -> T:
        """Run ``fn`` in the store's next group-committed transaction; its result once that committed."""
        return await asyncio.wrap_future(store.batched(fn))

    @accepts("vehicle")
    async def vehicle(request: Request) -> VehicleRecord:
        found = await car(coord.auth, request)
        note_principal(request.scope, "vehicle")
        return found

    @app.post(f"{API_PREFIX}/vehicles/enroll", status_code=201, response_model=EnrollResponse, tags=["vehicle"])
    @accepts(errors=(401, 429))  # the fleet enrollment token is in the body, not a bearer credential
    def enroll(req: EnrollRequest, request: Request) -> EnrollResponse:
        """Trade an enrollment token for a car id and credential. Tokens the operator issued are limited (uses,
        expiry, rate per address and per token); the bootstrap token is not."""
        if req.public_key is not None:
            load_public_key(req.public_key)  # a malformed key is a 400 before any use of the token is spent
        elif coord.config.require_car_keys:
            raise InvalidInput("this coordinator requires car keys: send public_key (an Ed25519 public key, 32 raw "
                               "bytes base64url-encoded); a current agent makes one at enrollment")
        profile = get_profile(req.hardware)
        vehicle_id = "v-" + uuid.uuid4().hex[:12]
        credential = vehicle_credential(vehicle_id)
        now = coord.clock.now()
        record = VehicleRecord(vehicle_id=vehicle_id, name=req.name, hardware=profile.name,
                               credential_hash=hash_token(credential), enrolled_at=now, public_key=req.public_key)
        if coord.auth.enrollment(req.enrollment_token):
            store.add_vehicle(record)
        else:
            token_hash = hash_token(req.enrollment_token)
            coord.enrollments.take("address:" + client_address(request.scope))
            coord.enrollments.take("token:" + token_hash)
            store.enroll_with_token(token_hash, record, now)
        coord.auth.remember_vehicle(record)  # its first lease request needs no store call to authenticate
        return EnrollResponse(vehicle_id=vehicle_id, credential=credential)

    # No policy, no key: an agent from before owner policies reached cars (its wire models forbid unknown keys)
    # keeps working until its owner saves one.
    @app.post(f"{API_PREFIX}/vehicles/heartbeat", response_model=HeartbeatResponse, tags=["vehicle"],
              response_model_exclude_none=True)
    def heartbeat(state: StateReport, v: VehicleRecord = Depends(vehicle)) -> HeartbeatResponse:
        states.report(v.vehicle_id, state)
        active = sched.heartbeat(v, state.eligible)  # renews resident leases while eligible, else hands them back
        return HeartbeatResponse(server_time=coord.clock.now(), active_leases=active,
                                 policy=store.vehicle_policy(v.vehicle_id))

    async def lease_or_wait(v: VehicleRecord, req: LeaseRequest, request: Request) -> Grant | None:
        """Lease work of any workload (a share of a training round offered to this car first), waiting up to
        ``req.wait_s`` (long-poll) for some to become available. Asking marks the car available for rounds."""
        coord.training.asked(v.vehicle_id)
        loop = asyncio.get_running_loop()
        until = loop.time() + min(req.wait_s, coord.config.max_long_poll_s)
        admission = coord.admission
        while True:
            ticket = sched.polls.enter(v.vehicle_id)  # before looking: a wake in between is not lost
            try:
                admitted = admission.open()  # else too far behind to take a new lease back in time: wait
                grant = await batched(lambda: sched.lease(v)) if admitted else None
                if grant is not None:
                    return grant
                remaining = until - loop.time()
                if remaining <= 0 or await request.is_disconnected():
                    return None
                # Woken for new work (one car per unit; other replicas notify), or look again now and then.
                recheck = coord.config.long_poll_recheck_s if admitted else admission.interval_s
                if not await ticket.wait(min(remaining, recheck)) and loop.time() >= until:
                    return None  # nothing came: no last look (10,000 idle cars would make 1,000 a second)
            finally:
                sched.polls.leave(ticket)

    # The two routes of the lease cycle read their body themselves (one pydantic pass over the raw JSON, no
    # dependency solving); ``openapi_extra`` documents it. See ``body_schema``.
    @app.post(f"{API_PREFIX}/leases", response_model=Grant, tags=["vehicle"],
              responses={204: {"description": "no work within wait_s"}}, openapi_extra=body_schema(LeaseRequest))
    @accepts("vehicle")
    async def lease(request: Request) -> Response:
        v = await vehicle(request)
        req = await _parse(LeaseRequest, request)
        states.report(v.vehicle_id, req.state)
        if not req.state.eligible:
            why = ", ".join(req.state.reasons) or "no reason given"
            raise Conflict(f"vehicle reports itself ineligible ({why}); lease work only while eligible")
        grant = await lease_or_wait(v, req, request)
        return _json(grant) if grant is not None else Response(status_code=204)

    @app.post(f"{API_PREFIX}/leases/{{lease_id}}/renew", response_model=LeaseAck, tags=["vehicle"])
    def renew(lease_id: str, v: VehicleRecord = Depends(vehicle)) -> LeaseAck:
        return sched.renew(v, lease_id)

    @app.post(f"{API_PREFIX}/leases/{{lease_id}}/progress", response_model=LeaseAck, tags=["vehicle"])
    def progress(lease_id: str, req: ProgressReport, v: VehicleRecord = Depends(vehicle)) -> LeaseAck:
        return sched.progress(v, lease_id, req)

    @app.post(f"{API_PREFIX}/leases/{{lease_id}}/complete", response_model=LeaseAck, tags=["vehicle"],
              openapi_extra=body_schema(CompleteRequest))
    @accepts("vehicle")
    async def complete(lease_id: str, request: Request) -> Response:
        arrived = coord.clock.now()  # the deadline is judged by this, not by when its turn came
        v = await vehicle(request)
        req = await _parse(CompleteRequest, request)
        inline = decode_inline(req.inline) if req.inline is not None else None  # bounded: 256 KiB at most
        wants_next = req.next is not None and req.next.state.eligible
        if req.next is not None:
            states.report(v.vehicle_id, req.next.state)
            coord.training.asked(v.vehicle_id)

        def accept() -> tuple[LeaseAck, JobRecord, Grant | None]:
            # The scheduler checks the lease and the whole result before it writes a byte of it; the next lease
            # is taken in the same transaction.
            ack, job = sched.record_completion(v, lease_id, req, inline, arrived=arrived)
            if not (wants_next and coord.admission.open()):
                return ack, job, None
            try:
                return ack, job, sched.lease(v)
            except FleetgridError:  # the completion stands; the long-poll below asks again and says why
                return ack, job, None

        if inline is not None:  # the common small unit: one batched transaction with other cars' cycles
            ack, job, grant = await batched(accept)
        else:  # the result is a file the car uploaded, read whole to check: not on the batching thread
            ack, job, grant = await asyncio.to_thread(accept)
        await asyncio.to_thread(sched.assemble_if_done, job) if _last_unit(job) else None
        if wants_next and grant is None:
            assert req.next is not None
            grant = await lease_or_wait(v, req.next, request)
        if grant is not None:
            ack = ack.model_copy(update={"next_lease": grant})
        return _json(ack)

    @app.post(f"{API_PREFIX}/leases/{{lease_id}}/fail", response_model=LeaseAck, tags=["vehicle"])
    def fail(lease_id: str, req: FailRequest, v: VehicleRecord = Depends(vehicle)) -> LeaseAck:
        return sched.fail(v, lease_id, req)

    @app.post(f"{API_PREFIX}/train/leases/{{lease_id}}/update", response_model=LeaseAck, tags=["vehicle"])
    async def train_update(lease_id: str, report: UpdateReport, request: Request,
                           v: VehicleRecord = Depends(vehicle)) -> LeaseAck:
        """Report a training lease's update, which the car uploaded first as an artifact (``PUT
        /v1/artifacts/{sha256}``) and names in ``update``; this body carries none of its bytes. 404 unless this
        car uploaded it, 400 if it or the report is malformed (the global is never touched), 409 if its round is
        already closed."""

        def accept() -> LeaseAck:
            ack = coord.training.update(v, lease_id, report)
            if report.next is not None:
                states.report(v.vehicle_id, report.next.state)
            return ack

        ack = await asyncio.to_thread(accept)
        if report.next is not None and report.next.state.eligible:
            ack = ack.model_copy(update={"next_lease": await lease_or_wait(v, report.next, request)})
        return ack


def _tenant_routes(app: FastAPI, coord: Coordinator) -> None:
    sched = coord.scheduler

    @accepts("tenant")
    def tenant(request: Request) -> str:
        name = coord.auth.tenant(request.headers.get("authorization"))
        note_principal(request.scope, "tenant")
        return name

    submit_models = {kind: driver.submit_model for kind, driver in sched.drivers.items()} | {"train": TrainSubmit}
    app.state.submit_models = submit_models
    body = _tagged_union(submit_models)

    def submit(req: Any, t: str = Depends(tenant)) -> JobStatus:
        """Submit a job of any registered workload, chosen by ``kind`` ('inference' when absent). Planning reads
        the inputs and may run a trial of a user's model, so it runs in the thread pool, off the event loop."""
        if req.kind == "train":
            return status(coord.training.submit(t, req))
        return status(sched.submit(t, req))

    submit.__annotations__["req"] = body  # built from the registry at run time, so not a name FastAPI can look up
    app.post(f"{API_PREFIX}/jobs", status_code=201, response_model=JobStatus, tags=["tenant"])(submit)

    def status(job: JobRecord) -> JobStatus:
        out = sched.status(job)
        if job.kind == "train":
            out = with_training(out, coord.training.progress(job))
        return out

    @app.get(f"{API_PREFIX}/jobs", response_model=list[JobStatus], tags=["tenant"])
    def jobs(t: str = Depends(tenant)) -> list[JobStatus]:
        return [status(j) for j in coord.store.list_jobs(t)]

    @app.get(f"{API_PREFIX}/jobs/{{job_id}}", response_model=JobStatus, tags=["tenant"])
    def job(job_id: str, t: str = Depends(tenant)) -> JobStatus:
        return status(sched.job_for(t, job_id))

    @app.post(f"{API_PREFIX}/jobs/{{job_id}}/cancel", response_model=JobStatus, tags=["tenant"])
    def cancel(job_id: str, t: str = Depends(tenant)) -> JobStatus:
        job = sched.cancel(t, job_id)
        coord.training.cancel(job_id)
        return status(job)

    @app.get(f"{API_PREFIX}/jobs/{{job_id}}/result", tags=["tenant"], response_class=Response)
    def result(job_id: str, t: str = Depends(tenant)) -> Response:
        data, suffix = sched.result(t, job_id)
        return Response(data, media_type="application/octet-stream",
                        headers={"content-disposition": f'attachment; filename="{job_id}.{suffix}"'})


def _training_routes(app: FastAPI, coord: Coordinator) -> None:
    @accepts("tenant")
    def tenant(request: Request) -> str:
        name = coord.auth.tenant(request.headers.get("authorization"))
        note_principal(request.scope, "tenant")
        return name

    @app.post(f"{API_PREFIX}/train/jobs", status_code=201, response_model=JobStatus, tags=["tenant"])
    def submit_train(req: TrainSubmit, t: str = Depends(tenant)) -> JobStatus:
        """Start a federated training job; follow it with GET /v1/jobs/{id} (its ``training`` field holds the
        held-out metrics of every global version) and fetch the final model (safetensors) from /result."""
        job = coord.training.submit(t, req)
        return with_training(coord.scheduler.status(job), coord.training.progress(job))
