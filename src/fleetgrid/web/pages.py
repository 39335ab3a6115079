"""What each dashboard page shows, gathered from the coordinator: plain dataclasses the templates render. Every
figure is aggregated server-side (a page of 10,000 cars' fleet is a handful of counts and one chart series), and
each function takes the signed-in principal's name, never a name from the URL."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..billing import DEFAULT_TARIFF, PriceList, check_tariff, month_bounds, owner_statement, price_lines
from ..billing.statements import OwnerStatement
from ..coordinator.states import CAR_STATES, count_car_states
from ..coordinator.store import JobRecord
from ..vehicle.policy import OwnerPolicy
from ..workloads.serving.driver import LIVE_JOB_STATES
from ..workloads.serving.router import nearest_rank

if TYPE_CHECKING:
    from ..coordinator.app import Coordinator

__all__ = ["ALL_MONTHS", "CHART_STATES", "CarUsage", "FleetPage", "JobRow", "OwnerPage", "ServedModel", "UsagePage",
           "fleet_page", "job_rows", "owner_page", "recent_months", "serving_rows",
           "usage_page"]

CHART_STATES = ("eligible", "working", "driving", "charging", "parked", "offline")
"""The states the last-24-hours chart draws (revoked cars are left out: they never come back)."""
JOBS_SHOWN = 50
"""The newest jobs listed on a page; older ones are in the API (GET /v1/jobs)."""
CARS_PER_PAGE = 50
MONTHS_SHOWN = 6


@dataclass(slots=True)
class JobRow:
    job_id: str
    name: str
    tenant: str
    kind: str
    model: str
    state: str
    done: int
    total: int
    accuracy: list[tuple[int, float]] = field(default_factory=list)
    """Training: held-out accuracy by global version."""
    latency_ms: tuple[float | None, float | None] | None = None
    """Serving: recent p50 and p95 latency on this replica, in ms."""

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 0.0


@dataclass(slots=True)
class ServedModel:
    """Latency of one model's live deployments, over the requests this replica answered last (up to 512 per
    deployment: the router's window)."""

    model: str
    deployments: int
    replicas: int
    """Replicas connected to this coordinator replica."""
    requests: int
    """Requests in the window."""
    p50_ms: float | None
    p95_ms: float | None


def serving_rows(coord: Coordinator, jobs: list[JobRecord]) -> list[ServedModel]:
    """Per served model (the live serving jobs among ``jobs``), its p50 and p95 latency over the recent window."""
    serving = coord.services.get("serve")
    by_model: dict[str, list[JobRecord]] = {}
    for job in jobs:
        if job.kind == "serve" and job.state in LIVE_JOB_STATES:
            by_model.setdefault(job.model, []).append(job)
    rows = []
    for model, deployed in sorted(by_model.items()):
        latencies: list[float] = []
        replicas = 0
        if serving is not None:
            for job in deployed:
                latencies += serving.router.recent_latencies(job.job_id)
                replicas += len(serving.router.replicas(job.job_id))
        p50, p95 = (nearest_rank(latencies, q) for q in (0.5, 0.95))
        rows.append(ServedModel(model, len(deployed), replicas, len(latencies),
                                p50 * 1000 if p50 is not None else None, p95 * 1000 if p95 is not None else None))
    return rows


@dataclass(slots=True)
class FleetPage:
    now: float
    counts: dict[str, int]
    history: dict[str, Any]
    """The chart's data: {"now": epoch seconds, "t": [epoch seconds], state: [cars], ...} (JSON for the page's
    script)."""
    jobs: list[JobRow]
    totals: dict[str, Any]
    serving: list[ServedModel] = field(default_factory=list)


def job_rows(coord: Coordinator, jobs: list[JobRecord]) -> list[JobRow]:
    newest = sorted(jobs, key=lambda j: j.created_at, reverse=True)[:JOBS_SHOWN]
    serving = coord.services.get("serve")
    rows = []
    for job in newest:
        row = JobRow(job.job_id, job.name, job.tenant, job.kind, job.model, job.state, job.units_done,
                     job.units_total)
        if job.kind == "train":
            history = coord.training.progress(job).history
            row.accuracy = [(int(h["version"]), float(h["accuracy"])) for h in history
                            if isinstance(h, dict) and "accuracy" in h and "version" in h]
        elif job.kind == "serve" and serving is not None:
            p50, p95 = (serving.router.latency_s(job.job_id, q) for q in (0.5, 0.95))
            row.latency_ms = (p50 * 1000 if p50 is not None else None, p95 * 1000 if p95 is not None else None)
        rows.append(row)
    return rows


def fleet_page(coord: Coordinator) -> FleetPage:
    coord.states.flush()
    now = coord.clock.now()
    counts = count_car_states(coord.store, now, coord.config.online_window_s)
    samples = coord.history.history(86400.0)
    history: dict[str, Any] = {"now": now, "t": [at for at, _ in samples]}
    for state in CHART_STATES:
        history[state] = [c.get(state, 0) for _, c in samples]
    totals = coord.store.counts()
    jobs = coord.store.list_jobs()
    return FleetPage(now=now, counts={s: counts.get(s, 0) for s in CAR_STATES}, history=history,
                     jobs=job_rows(coord, jobs), serving=serving_rows(coord, jobs),
                     totals={"cars": sum(counts.values()), "units_pending": totals["units_pending"],
                             "leases_in_flight": totals["leases_in_flight"]})


@dataclass(slots=True)
class CarUsage:
    vehicle_id: str
    owner: str
    leases: int
    items: int
    steps: int
    accelerator_h: float
    cellular_mb: float
    wifi_mb: float


@dataclass(slots=True)
class UsagePage:
    owners: list[CarUsage]
    """Per owner (vehicle_id is the number of cars), busiest first."""
    cars: list[CarUsage]
    """One page of cars, busiest first."""
    page: int
    pages: int
    month: str
    """The month shown (YYYY-MM, UTC), or :data:`ALL_MONTHS`."""
    months: list[str] = field(default_factory=list)
    """The months to choose from: this one and the ones before it, newest first."""


ALL_MONTHS = "all"
"""The usage page's month for every row since the ledger began."""


def recent_months(coord: Coordinator) -> list[str]:
    """This month (UTC) and the ones before it, newest first: those the pages offer."""
    return _months_back(coord.clock.now(), MONTHS_SHOWN)


def usage_page(coord: Coordinator, page: int, month: str | None = None) -> UsagePage:
    """Usage in ``month`` (YYYY-MM, UTC; default this month; :data:`ALL_MONTHS`: since the ledger began), per
    owner and (a page at a time) per car: one grouped query. InvalidInput for a month that is not one."""
    months = recent_months(coord)
    month = months[0] if month is None else month.strip()
    start, end = (None, None) if month == ALL_MONTHS else month_bounds(month)
    owner_of = {vid: o.name for o in coord.store.list_owners() for vid in o.cars}
    cars = [CarUsage(r["vehicle_id"], owner_of.get(r["vehicle_id"], "-"), r["units"], r["items"], r["steps"],
                     r["compute_s"] / 3600, r["cellular_bytes"] / 1e6, r["wifi_bytes"] / 1e6)
            for r in coord.store.ledger_totals(start, end)]
    cars.sort(key=lambda c: (-c.accelerator_h, c.vehicle_id))
    owners: dict[str, CarUsage] = {}
    for c in cars:
        o = owners.setdefault(c.owner, CarUsage("0", c.owner, 0, 0, 0, 0.0, 0.0, 0.0))
        o.vehicle_id = str(int(o.vehicle_id) + 1)
        o.leases, o.items, o.steps = o.leases + c.leases, o.items + c.items, o.steps + c.steps
        o.accelerator_h += c.accelerator_h
        o.cellular_mb += c.cellular_mb
        o.wifi_mb += c.wifi_mb
    pages = max(1, -(-len(cars) // CARS_PER_PAGE))
    page = min(max(page, 1), pages)
    return UsagePage(owners=sorted(owners.values(), key=lambda o: (-o.accelerator_h, o.owner)),
                     cars=cars[(page - 1) * CARS_PER_PAGE:page * CARS_PER_PAGE], page=page, pages=pages,
                     month=month, months=months)


@dataclass(slots=True)
class OwnerCar:
    vehicle_id: str
    name: str
    hardware: str
    drive: str | None
    soc: float | None
    plugged_in: bool | None
    eligible: bool
    last_seen: float | None


@dataclass(slots=True)
class OwnerPage:
    name: str
    cars: list[OwnerCar]
    months: list[OwnerStatement]
    """This month and the ones before it, newest first."""
    policy: OwnerPolicy
    policy_from_coordinator: bool
    """False: the owner set none here; the cars use their own (the defaults are shown)."""


def _months_back(now: float, n: int) -> list[str]:
    year, month = time.gmtime(now)[:2]
    out = []
    for _ in range(n):
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return out


def owner_page(coord: Coordinator, owner: str) -> OwnerPage:
    store = coord.store
    record = store.get_owner(owner)
    if record is None:  # the session was checked against the store a moment ago; the owner was just removed
        record_cars: list[str] = []
        tariff = check_tariff(str(DEFAULT_TARIFF))
    else:
        record_cars, tariff = record.cars, check_tariff(record.tariff)
    coord.states.flush()
    cars = []
    for vid in record_cars:
        v = store.get_vehicle(vid)
        if v is None:
            continue
        state = v.state or {}
        cars.append(OwnerCar(v.vehicle_id, v.name, v.hardware, state.get("drive"), state.get("soc"),
                             state.get("plugged_in"), bool(v.eligible), v.last_seen))
    lists = [PriceList.parse(r.currency, r.operator_fee, r.prices, set_at=r.set_at, version=r.version)
             for r in store.price_lists()]
    currency = lists[-1].currency if lists else "USD"
    months = []
    for month in _months_back(coord.clock.now(), MONTHS_SHOWN):
        start, end = month_bounds(month)
        lines = store.usage_lines(start, end, owner=owner)
        months.append(owner_statement(owner, month, record_cars, price_lines(lines, lists), currency=currency,
                                      tariff_per_kwh=tariff))
    stored = store.owner_policy(owner)
    return OwnerPage(name=owner, cars=cars, months=months,
                     policy=OwnerPolicy.from_json(stored) if stored is not None else OwnerPolicy(),
                     policy_from_coordinator=stored is not None)
