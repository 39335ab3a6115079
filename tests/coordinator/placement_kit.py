"""Test-only workloads placed RESIDENT and GANG, as small as a workload can be, and the in-process app they run in.

Registering one (the ``workloads`` fixture) adds it to the registry for one test only, so coordinators built by
other tests never see it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from fleetgrid.clock import ManualClock
from fleetgrid.coordinator.app import Coordinator, create_app
from fleetgrid.coordinator.config import CoordinatorConfig
from fleetgrid.coordinator.drivers import Plan, UnitDriver, form_gangs
from fleetgrid.coordinator.store import JobRecord, LeaseRecord, LedgerRecord, UnitRecord
from fleetgrid.coordinator.store.schema import ledger
from fleetgrid.core import Placement
from fleetgrid.protocol import WorkGrant
from fleetgrid.workloads import base
from harness import ENROLL, OPERATOR, TENANT

PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}
DRIVING = {"drive": "driving", "soc": 0.8, "network": "cellular", "plugged_in": False, "eligible": False,
           "reasons": ["driving"]}
NO_INPUT = "0" * 64


class _Submit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = ""


class ServeSubmit(_Submit):
    kind: Literal["test-serve"] = "test-serve"


class SplitSubmit(_Submit):
    kind: Literal["test-split"] = "test-split"
    cars: int = Field(default=3, ge=1, le=8, description="cars one copy of the model is split across (k)")
    copies: int = Field(default=1, ge=1, le=8, description="gangs in the job")


class _Driver(UnitDriver):
    """A unit is nothing but its index; any result is accepted."""

    @staticmethod
    def _units(job_id: str, n: int) -> list[UnitRecord]:
        return [UnitRecord(unit_id=f"{job_id}:{i}:0", job_id=job_id, idx=i, replica=0, start_item=i,
                           end_item=i + 1, input_digest=NO_INPUT, input_format="none") for i in range(n)]

    def _job(self, tenant: str, request: _Submit, job_id: str, n: int) -> JobRecord:
        return JobRecord(job_id=job_id, tenant=tenant, name=request.name or job_id, kind=self.kind, model="none",
                         spec={}, items=n, units_total=n, created_at=self.ctx.clock.now())

    def grant(self, job: JobRecord, unit: UnitRecord, lease: LeaseRecord) -> WorkGrant:
        return WorkGrant(kind=self.kind, lease_id=lease.lease_id, job_id=job.job_id, unit_index=unit.idx, spec={},
                         deadline=lease.deadline, renew_every_s=self.ctx.config.lease_ttl_s / 3)

    def check_result(self, job: JobRecord, unit: UnitRecord, data: bytes) -> None:
        return None

    def assemble(self, job: JobRecord, results: list[tuple[UnitRecord, bytes]]) -> bytes:
        return b"".join(data for _, data in results)


class ServeDriver(_Driver):
    """One model kept resident on one car."""

    kind = "test-serve"
    submit_model = ServeSubmit
    placement = Placement.RESIDENT

    def plan(self, tenant: str, request: ServeSubmit, job_id: str) -> Plan:
        return Plan(self._job(tenant, request, job_id, 1), self._units(job_id, 1))


class SplitDriver(_Driver):
    """A model split across ``cars`` cars, ``copies`` times: one gang of units per copy."""

    kind = "test-split"
    submit_model = SplitSubmit
    placement = Placement.GANG

    def plan(self, tenant: str, request: SplitSubmit, job_id: str) -> Plan:
        n = request.cars * request.copies
        return Plan(self._job(tenant, request, job_id, n), form_gangs(self._units(job_id, n), request.cars))


class IdleHandler(base.CarHandler):
    """The car side is never run here: the tests speak the protocol themselves."""

    def run(self) -> None:
        return None

    def hand_back(self, why: str) -> None:
        return None


DRIVERS: dict[str, type[UnitDriver]] = {"test-serve": ServeDriver, "test-split": SplitDriver}


@pytest.fixture
def workloads(monkeypatch) -> Iterator[None]:
    """The test workloads in the registry, for this test only."""
    for kind, driver in DRIVERS.items():
        monkeypatch.setitem(base._REGISTRY, kind, base.Workload(kind, car=f"{__name__}:IdleHandler",
                                                                 driver=f"{__name__}:{driver.__name__}"))
    yield


def coordinator(tmp_path: Path, database_url: str, clock: ManualClock, **settings: Any) -> Coordinator:
    """A coordinator on ``database_url`` whose sweeper never runs by itself: the tests sweep when they mean to."""
    config = CoordinatorConfig(data_dir=tmp_path, database_url=database_url, enroll_token=ENROLL,
                               operator_token=OPERATOR, tenant_tokens={"acme": TENANT}, lease_ttl_s=60.0,
                               sweep_interval_s=3600.0, **settings)
    return Coordinator(config, clock=clock)


def serve(coords: list[Coordinator], scenario: Callable[..., Awaitable[None]]) -> None:
    """Run ``scenario(client, ...)`` with one client per coordinator, inside their apps' lifespans."""
    apps = [create_app(coordinator=c) for c in coords]

    async def main() -> None:
        async with _lifespans([a.app for a in apps]):
            clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=a, raise_app_exceptions=False),
                                         base_url="http://coordinator/v1", timeout=60) for a in apps]
            try:
                await scenario(*clients)
            finally:
                for client in clients:
                    await client.aclose()

    try:
        asyncio.run(main())
    finally:
        for c in coords:
            c.store.close()


class _lifespans:
    def __init__(self, apps: list[Any]) -> None:
        self.contexts = [a.router.lifespan_context(a) for a in apps]

    async def __aenter__(self) -> None:
        for context in self.contexts:
            await context.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        for context in reversed(self.contexts):
            await context.__aexit__(*exc)


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def enroll(client: httpx.AsyncClient, name: str) -> str:
    r = await client.post("/vehicles/enroll", json={"enrollment_token": ENROLL, "name": name, "hardware": "ai4"})
    assert r.status_code == 201, r.text
    return r.json()["credential"]


async def submit(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/jobs", json=body, headers=auth(TENANT))
    assert r.status_code == 201, r.text
    return r.json()


async def job_status(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    r = await client.get(f"/jobs/{job_id}", headers=auth(TENANT))
    assert r.status_code == 200, r.text
    return r.json()


async def lease(client: httpx.AsyncClient, car: str, wait_s: float = 0.0) -> httpx.Response:
    return await client.post("/leases", json={"state": PARKED, "wait_s": wait_s}, headers=auth(car))


async def complete(client: httpx.AsyncClient, car: str, grant: dict[str, Any], data: bytes = b"ok") -> httpx.Response:
    body = {"result": hashlib.sha256(data).hexdigest(), "inline": base64.b64encode(data).decode()}
    return await client.post(f"/leases/{grant['lease_id']}/complete", json=body, headers=auth(car))


def usage_rows(coord: Coordinator) -> dict[str, LedgerRecord]:
    """Every usage row, by lease id (the ledger's key: a lease metered twice could not be written)."""
    with coord.store.engine.connect() as c:  # type: ignore[attr-defined]
        rows = c.execute(select(ledger)).all()
    return {r.lease_id: LedgerRecord(**{k: r._mapping[k] for k in LedgerRecord.__slots__}) for r in rows}
