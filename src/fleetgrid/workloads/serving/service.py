"""The coordinator's serving service: the car's long-poll route over which a replica takes requests and answers
them, the watch that notices replicas that left, and the lookup from a tenant's deployment name to its job.

A car attaches its replica by polling with the lease it holds; the lease is checked once against the store (its
own, active, of a deployment) and the channel remembered. A replica leaves when its car says so (``leaving``),
when the store no longer holds its lease active (handed back by a heartbeat, expired, cancelled with the
deployment), or when its car stops polling while it holds requests; its requests then go to the other replicas.
Requests and channels live in this coordinator process: a car serves the clients of the replica it polls.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import Depends, FastAPI, Request

from fleetgrid.coordinator.auth import car
from fleetgrid.coordinator.security import accepts
from fleetgrid.core import LeaseState
from fleetgrid.errors import AuthError, Conflict, InvalidInput, NotFound, Overloaded
from fleetgrid.protocol import API_PREFIX
from fleetgrid.workloads.serving.autoscale import Autoscaler
from fleetgrid.workloads.serving.driver import GENERATIVE, LIVE_JOB_STATES
from fleetgrid.workloads.serving.messages import (
    DeploymentStatus,
    GenerateParams,
    ReplicaStatus,
    ServeAnswer,
    ServeExchange,
    ServeRequest,
    ServeWork,
)
from fleetgrid.workloads.serving.router import RouterConfig, ServingRouter

if TYPE_CHECKING:
    from fleetgrid.coordinator.app import Coordinator
    from fleetgrid.coordinator.store import JobRecord, VehicleRecord

__all__ = ["Deployment", "ServingService", "serving_routes"]

log = logging.getLogger("fleetgrid.serving")

TAKE_REQUESTS = 8
"""Requests one exchange hands a car at most (their answers come back in the car's next exchanges)."""
STALE_S = 15.0
"""A replica that holds requests and has not polled for this long is taken for gone (its car died or lost its
link); its requests go elsewhere. A car merely slow on a big batch re-attaches at its next poll."""
WATCH_S = 1.0
DEPLOYMENTS_TTL_S = 2.0


class Deployment:
    """What a client's request needs of a deployment: its job and how to check an answer."""

    def __init__(self, job: JobRecord) -> None:
        from fleetgrid.models.registry import get_model_spec

        self.job_id, self.name, self.model = job.job_id, job.name, job.model
        self.replicas = job.units_total
        self.created = int(job.created_at)
        self.generates = job.model in GENERATIVE
        """A text-generation deployment (completions, chat) rather than embeddings."""
        self.dim = 0
        if not self.generates:
            shape = get_model_spec(job.model).output_shape
            assert shape is not None and len(shape) == 1  # the driver deploys nothing else
            self.dim = shape[0]

    def require(self, generates: bool) -> None:
        """InvalidInput unless the deployment does what the route asks of it."""
        if generates and not self.generates:
            raise InvalidInput(f"model {self.name!r} serves embeddings ({self.model}); completions and chat need a "
                               f"generative deployment ({list(GENERATIVE)})")
        if not generates and self.generates:
            raise InvalidInput(f"model {self.name!r} generates text ({self.model}); embeddings need an embedding "
                               "model such as minilm-l6-v2")

    @staticmethod
    def piece_validator(max_tokens: int) -> Callable[[Any], tuple[int, str, str | None]]:
        """Checks a car's piece of a generated answer: characters the model can produce, within ``max_tokens``,
        at least one unless it ends the answer, and 'length' only where the budget ends."""
        from fleetgrid.data.text import VOCAB

        alphabet = set(VOCAB.chars[1:])

        def validate(answer: Any) -> tuple[int, str, str | None]:
            if not isinstance(answer, ServeAnswer) or answer.text is None:
                raise InvalidInput("the answer holds no text")
            text, end = answer.text, answer.offset + len(answer.text)
            if not set(text) <= alphabet:
                raise InvalidInput("the answer holds characters the model cannot produce")
            if end > max_tokens:
                raise InvalidInput(f"the answer runs to {end} characters; the request allows {max_tokens}")
            if answer.finish_reason is None and not text:
                raise InvalidInput("an empty piece that does not end the answer")
            if answer.finish_reason == "length" and end != max_tokens:
                raise InvalidInput(f"the answer says it reached its length at {end} of {max_tokens} characters")
            return answer.offset, text, answer.finish_reason

        return validate

    def validator(self, texts: list[str]) -> Callable[[Any], np.ndarray]:
        """Checks a car's answer to ``texts``: one finite row of ``dim`` float32s per text."""
        def validate(answer: Any) -> np.ndarray:
            if not isinstance(answer, ServeAnswer) or answer.vectors is None:
                raise InvalidInput("the answer holds no vectors")
            if (answer.rows, answer.dim) != (len(texts), self.dim):
                raise InvalidInput(f"the answer is {answer.rows}x{answer.dim}; the request needs "
                                   f"{len(texts)}x{self.dim}")
            try:
                raw = base64.b64decode(answer.vectors, validate=True)
            except ValueError as exc:
                raise InvalidInput(f"the answer's vectors are not base64: {exc}") from exc
            if len(raw) != 4 * len(texts) * self.dim:
                raise InvalidInput(f"the answer's vectors hold {len(raw)} bytes; {len(texts)}x{self.dim} float32s "
                                   f"are {4 * len(texts) * self.dim}")
            vectors = np.frombuffer(raw, dtype="<f4").reshape(len(texts), self.dim)
            if not np.isfinite(vectors).all():
                raise InvalidInput("the answer's vectors are not all finite")
            return vectors

        return validate


class RateLimit:
    """A token bucket per tenant: ``rate`` requests a second, ``burst`` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, loop time)

    def admit(self, tenant: str, now: float) -> None:
        tokens, then = self._buckets.get(tenant, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1.0:
            self._buckets[tenant] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
            raise Overloaded(f"tenant {tenant!r} is over its serving rate limit of {self.rate:g} requests/s; retry "
                             f"after {wait:.2f} s", retry_after_s=wait)
        self._buckets[tenant] = (tokens - 1.0, now)


class ServingService:
    def __init__(self, coord: Coordinator, config: RouterConfig | None = None) -> None:
        self.coord = coord
        self.router = ServingRouter(config)
        rate = coord.config.serve_rate_limit_rps
        self.limit = RateLimit(rate, burst=max(1.0, 2 * rate))
        self._deployments: dict[str, tuple[float, dict[str, Deployment]]] = {}
        self.autoscaler = Autoscaler(coord, self.router)
        self._watch: asyncio.Task[None] | None = None
        self._last_poll: dict[str, float] = {}

    async def start(self) -> None:
        self._watch = asyncio.create_task(self._watch_replicas())

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    # --- deployments, for clients ------------------------------------------------------------------------------

    async def tenant(self, request: Request) -> str:
        """The tenant whose token is the request's API key (the store is asked off the event loop)."""
        header = request.headers.get("authorization")
        if header is None:
            raise AuthError("no API key: send your fleetgrid tenant token as the API key (Authorization: Bearer "
                            "fgt...)")
        return await asyncio.to_thread(self.coord.auth.tenant, header)

    async def deployments(self, tenant: str, *, fresh: bool = False) -> dict[str, Deployment]:
        """The tenant's live deployments by name (read from the store at most every couple of seconds, unless
        ``fresh``)."""
        loop = asyncio.get_running_loop()
        cached = self._deployments.get(tenant)
        if cached is not None and loop.time() < cached[0] and not fresh:
            return cached[1]
        jobs = await asyncio.to_thread(self.coord.store.list_jobs, tenant)
        found = {j.name: Deployment(j) for j in jobs if j.kind == "serve" and j.state in LIVE_JOB_STATES}
        self._deployments[tenant] = (loop.time() + DEPLOYMENTS_TTL_S, found)
        return found

    def status(self, deployment: Deployment) -> DeploymentStatus:
        pool = self.router.replicas(deployment.job_id)
        served = sum(c.served for c in pool) + self.router.served_by_gone.get(deployment.job_id, 0)
        counts = self.router.counts.get(deployment.job_id, {})
        return DeploymentStatus(name=deployment.name, model=deployment.model, job_id=deployment.job_id,
                                replicas=deployment.replicas, connected=len(pool), served=served,
                                in_flight=sum(len(c.in_flight) for c in pool), hedged=counts.get("hedged", 0),
                                failovers=counts.get("failovers", 0),
                                cars=[ReplicaStatus(vehicle_id=c.vehicle_id, in_flight=len(c.in_flight),
                                                    served=c.served) for c in pool])

    async def deployment(self, tenant: str, name: str) -> Deployment:
        found = await self.deployments(tenant)
        if name not in found:  # deployed since the last look?
            found = await self.deployments(tenant, fresh=True)
        if name not in found:
            raise NotFound(f"model {name!r} is not deployed; deployed: {sorted(found) or 'none'} "
                           "(`fleetgrid deploy MODEL` deploys one)")
        return found[name]

    # --- replicas, for cars ------------------------------------------------------------------------------------

    def _verify(self, vehicle_id: str, lease_id: str) -> JobRecord:
        store = self.coord.store
        lease = store.get_lease(lease_id)
        if lease is None or lease.vehicle_id != vehicle_id:
            raise NotFound(f"lease {lease_id} does not exist or is not this car's")
        if lease.state != LeaseState.ACTIVE:
            raise Conflict(f"lease {lease_id} is {lease.state}; a replica serves only while its lease is active")
        unit = store.get_unit(lease.unit_id)
        job = store.get_job(unit.job_id) if unit is not None else None
        if job is None or job.kind != "serve":
            raise Conflict(f"lease {lease_id} is not a serving lease; it reports through its own workload's routes")
        return job

    async def exchange(self, vehicle: VehicleRecord, lease_id: str, body: ServeExchange) -> ServeWork:
        router = self.router
        channel = router.channel(lease_id)
        if channel is not None and channel.vehicle_id != vehicle.vehicle_id:
            raise NotFound(f"lease {lease_id} does not exist or is not this car's")
        if channel is None:
            job = await asyncio.to_thread(self._verify, vehicle.vehicle_id, lease_id)
            channel = router.attach(job.job_id, lease_id, vehicle.vehicle_id)
        self._last_poll[lease_id] = asyncio.get_running_loop().time()
        for answer in body.answers:
            router.answer(lease_id, answer.request_id, answer, answer.error)
        if body.leaving:
            router.detach(lease_id, "its car is leaving")
            return ServeWork(closed=True)
        taken = await channel.take(TAKE_REQUESTS, body.wait_s)
        self._last_poll[lease_id] = asyncio.get_running_loop().time()
        return ServeWork(requests=[_request(rid, payload) for rid, payload in taken.requests],
                         cancelled=taken.cancelled, closed=taken.closed)

    async def _watch_replicas(self) -> None:
        """Every ``WATCH_S``: detach replicas whose lease is no longer active, and those whose car went silent
        while holding requests."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                leases = [c.replica_id for c in self.router.all_replicas()]
                closed = await asyncio.to_thread(self._closed, leases) if leases else set()
                now = loop.time()
                for lease_id in leases:
                    channel = self.router.channel(lease_id)
                    if channel is None:
                        continue
                    if lease_id in closed:
                        self.router.detach(lease_id, "its lease closed")
                    elif channel.in_flight and now - self._last_poll.get(lease_id, now) > STALE_S:
                        self.router.detach(lease_id, f"its car has not polled for {STALE_S:g} s")
                for lease_id in [k for k in self._last_poll if self.router.channel(k) is None]:
                    del self._last_poll[lease_id]
                await asyncio.to_thread(self.autoscaler.look)
            except Exception:  # the watch must outlive a database hiccup; the next tick tries again
                log.exception("watching serving replicas failed")

    def _closed(self, lease_ids: list[str]) -> set[str]:
        store = self.coord.store
        out = set()
        for lease_id in lease_ids:
            lease = store.get_lease(lease_id)
            if lease is None or lease.state != LeaseState.ACTIVE:
                out.add(lease_id)
        return out


def _request(request_id: str, payload: list[str] | GenerateParams) -> ServeRequest:
    if isinstance(payload, GenerateParams):
        return ServeRequest(request_id=request_id, generate=payload)
    return ServeRequest(request_id=request_id, texts=payload)


def serving_routes(app: FastAPI, coord: Coordinator) -> ServingService:
    """The car's exchange route and the OpenAI-compatible API, on one :class:`ServingService`."""
    from fleetgrid.workloads.serving.generation import generation_routes
    from fleetgrid.workloads.serving.openai_api import openai_routes

    service = ServingService(coord, RouterConfig(hedge=coord.config.serve_hedging))
    service.router.on_served = coord.scheduler.driver("serve").served.add  # type: ignore[attr-defined]

    @accepts("vehicle")
    async def vehicle(request: Request) -> VehicleRecord:
        return await car(coord.auth, request)

    @app.post(f"{API_PREFIX}/serve/leases/{{lease_id}}/exchange", response_model=ServeWork, tags=["vehicle"])
    async def exchange(lease_id: str, body: ServeExchange, v: VehicleRecord = Depends(vehicle)) -> ServeWork:
        """A replica's long-poll: deliver answers, then wait up to ``wait_s`` for requests."""
        return await service.exchange(v, lease_id, body)

    @accepts("tenant")
    async def tenant(request: Request) -> str:
        return await service.tenant(request)

    @app.get(f"{API_PREFIX}/deployments", response_model=list[DeploymentStatus], tags=["tenant"])
    async def deployments(who: str = Depends(tenant)) -> list[DeploymentStatus]:
        """Your live deployments, with the replicas connected to this coordinator and what they served."""
        return [service.status(d) for d in (await service.deployments(who, fresh=True)).values()]

    openai_routes(app, coord, service)
    generation_routes(app, coord, service)
    return service
