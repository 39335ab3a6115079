"""The coordinator's Prometheus metrics: counters its requests and leases move, and gauges read at scrape time.

Each app has its own :class:`prometheus_client.CollectorRegistry` (several apps share a test process). Two kinds
of figure, which matter once the coordinator runs as several replicas on one PostgreSQL database:

- **Per replica** (sum them over the scrape targets): the counters and histograms this process moves as it answers
  (``fleetgrid_leases_granted_total``, ``fleetgrid_leases_closed_total``, ``fleetgrid_http_request_duration_seconds``,
  ``fleetgrid_errors_total``, and the trust counters: verification outcomes, implausible reports by reason,
  automatic suspensions, rate-limited requests by route kind), the cars long-polling this process, and each
  training job's version and accuracy, reported by the one replica driving its rounds.
- **Fleet-wide** (every replica reports the same figure; take one, e.g. ``max``): what is read from the database
  at scrape time, cars by state and by reputation band, jobs by state, units pending, leases in flight, the
  ledger's bytes per link.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .metering import REASONS
from .reputation import TrustPolicy
from .states import CAR_STATES, count_car_states
from .verification import OUTCOMES

if TYPE_CHECKING:
    from .app import Coordinator

__all__ = ["BANDS", "CONTENT_TYPE", "ROUTE_KINDS", "CoordinatorMetrics", "reputation_bands", "route_kind"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. A lease request may long-poll up to max_long_poll_s (30 s by default), hence the long tail.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

UNMATCHED = "unmatched"
"""The route label of a request no route matched (any path a client makes up counts here, keeping the labels
bounded)."""


ROUTE_KINDS = ("enroll", "car", "serving", "login", "other")
"""What a rate-limited request was after, by path: a car enrolling, a car's own routes (leases, heartbeats, training
and serving leases), a tenant's serving requests, the dashboard's login, anything else (wrong credentials on any
route)."""
_SERVING_PATHS = ("/v1/embeddings", "/v1/completions", "/v1/chat/completions")
_CAR_PREFIXES = ("/v1/leases", "/v1/vehicles/heartbeat", "/v1/train/leases", "/v1/serve/leases")

BANDS = ("unjudged", "untrusted", "trusted", "suspended")
"""Cars by reputation: never checked; checked but not (or no longer) trusted, so every result is checked; trusted
(spot-checked at a falling rate); suspended for wrong results or by an operator. Revoked cars are not counted."""


def route_kind(path: str) -> str:
    """The :data:`ROUTE_KINDS` entry of a request path (a label with a few values, whatever paths clients make up)."""
    if path == "/v1/vehicles/enroll":
        return "enroll"
    if path.startswith(_CAR_PREFIXES):
        return "car"
    if path in _SERVING_PATHS:
        return "serving"
    if path == "/login":
        return "login"
    return "other"


def reputation_bands(coord: Coordinator, policy: TrustPolicy) -> dict[str, int]:
    """Enrolled cars (not revoked) by :data:`BANDS`."""
    reputations = {r.vehicle_id: r for r in coord.store.list_reputations()}
    bands = dict.fromkeys(BANDS, 0)
    for vehicle in coord.store.list_vehicles():
        if vehicle.revoked:
            continue
        rep = reputations.get(vehicle.vehicle_id)
        if vehicle.suspended:
            bands["suspended"] += 1
        elif rep is None or not (rep.agreed or rep.faults or rep.implausible):
            bands["unjudged"] += 1
        else:
            bands["trusted" if policy.trusted(rep) else "untrusted"] += 1
    return bands


class CoordinatorMetrics:
    """One coordinator's metrics. The methods that count are cheap and safe from any thread; :meth:`render` reads
    the store and belongs off the event loop."""

    def __init__(self, coordinator: Coordinator | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.leases_granted = Counter(
            "fleetgrid_leases_granted", "Leases this replica granted, by workload kind.", ["kind"],
            registry=self.registry)
        self.leases_closed = Counter(
            "fleetgrid_leases_closed",
            "Leases this replica closed, by workload kind and outcome (completed, failed, handed_back, expired).",
            ["kind", "outcome"], registry=self.registry)
        self.request_seconds = Histogram(
            "fleetgrid_http_request_duration_seconds",
            "Time from a request's arrival to its response's last byte, by method and route template "
            "(a lease request's long-poll included).",
            ["method", "route"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter(
            "fleetgrid_errors", "Error answers (status >= 400) this replica gave, by error code and status.",
            ["code", "status"], registry=self.registry)
        self.verification = Counter(
            "fleetgrid_verification_outcomes", "Verdicts on cars' results this replica reached, by outcome: agreed "
            "or disagreed with a replica's, a known-answer unit passed or failed.", ["outcome"], registry=self.registry)
        self.implausible_reports = Counter(
            "fleetgrid_implausible_reports", "Claims in cars' usage reports that failed a cross-check, by reason: "
            "compute_s (more than the lease was held), bytes (more than it could move), throughput (work faster "
            "than the car's hardware can do it).", ["reason"], registry=self.registry)
        self.suspensions = Counter(
            "fleetgrid_automatic_suspensions", "Cars this replica suspended for wrong results.", registry=self.registry)
        self.rate_limited = Counter(
            "fleetgrid_rate_limited_requests", "Requests this replica answered 429, by route kind (enroll, car, "
            "serving, login, other).", ["route_kind"], registry=self.registry)
        for outcome in OUTCOMES:  # every series from the first scrape, at 0
            self.verification.labels(outcome)
        for reason in REASONS:
            self.implausible_reports.labels(reason)
        for kind in ROUTE_KINDS:
            self.rate_limited.labels(kind)
        # labels() takes a lock and checks its arguments: the lease cycle keeps the children it made instead.
        self._observers: dict[tuple[str, str], Histogram] = {}
        self._granted: dict[tuple[str], Counter] = {}
        self._closed: dict[tuple[str, str], Counter] = {}
        self._lock = threading.Lock()
        if coordinator is not None:
            self.registry.register(FleetCollector(coordinator))
            ProcessCollector(registry=self.registry)

    def observe_request(self, method: str, route: str, seconds: float) -> None:
        child = self._observers.get((method, route))
        if child is None:
            child = self._child(self._observers, self.request_seconds, (method, route))
        child.observe(seconds)

    def error(self, code: str, status: int) -> None:
        self.errors.labels(code, str(status)).inc()

    def verdict(self, outcome: str) -> None:
        self.verification.labels(outcome).inc()

    def implausible(self, reason: str) -> None:
        self.implausible_reports.labels(reason).inc()

    def suspension(self) -> None:
        self.suspensions.inc()

    def refused_for_rate(self, path: str) -> None:
        self.rate_limited.labels(route_kind(path)).inc()

    def lease_granted(self, kind: str, n: int = 1) -> None:
        child = self._granted.get((kind,))
        if child is None:
            child = self._child(self._granted, self.leases_granted, (kind,))
        child.inc(n)

    def lease_closed(self, kind: str, outcome: str) -> None:
        child = self._closed.get((kind, outcome))
        if child is None:
            child = self._child(self._closed, self.leases_closed, (kind, outcome))
        child.inc()

    def _child(self, cache: dict, metric: Any, labels: tuple[str, ...]) -> Any:
        with self._lock:
            return cache.setdefault(labels, metric.labels(*labels))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class FleetCollector:
    """Gauges read from the coordinator when scraped: the store's (fleet-wide) and this replica's in-memory state."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coord = coordinator

    def describe(self) -> list[Metric]:
        return []  # the families are only known by collecting, which reads the store: not at registration

    def collect(self) -> Iterator[Metric]:
        coord = self.coord
        store = coord.store
        coord.states.flush()  # what the cars said up to now, as the fleet overview does
        yield self._vehicles()
        counts = store.counts()
        jobs = GaugeMetricFamily("fleetgrid_jobs", "Jobs by state (fleet-wide).", labels=["state"])
        for state, n in sorted(counts["jobs"].items()):
            jobs.add_metric([state], n)
        yield jobs
        yield GaugeMetricFamily("fleetgrid_units_pending", "Units waiting for a car (fleet-wide).",
                                value=counts["units_pending"])
        yield GaugeMetricFamily("fleetgrid_leases_active", "Leases in flight (fleet-wide).",
                                value=counts["leases_in_flight"])
        yield GaugeMetricFamily("fleetgrid_long_polling", "Cars long-polling this replica for work.",
                                value=coord.scheduler.polls.sleeping())
        yield from self._ledger()
        yield from self._training()
        bands = GaugeMetricFamily("fleetgrid_vehicles_by_reputation", "Enrolled cars by reputation band "
                                  "(fleet-wide): unjudged, untrusted, trusted, suspended.", labels=["band"])
        for band, n in reputation_bands(coord, coord.config.trust).items():
            bands.add_metric([band], n)
        yield bands

    def _vehicles(self) -> Metric:
        by_state = count_car_states(self.coord.store, self.coord.clock.now(), self.coord.config.online_window_s)
        family = GaugeMetricFamily(
            "fleetgrid_vehicles", "Enrolled cars by state (fleet-wide); each car counts once, in the first of "
            "revoked, offline, working, eligible, driving, charging, parked that applies.", labels=["state"])
        for state in CAR_STATES:
            family.add_metric([state], by_state[state])
        return family

    def _ledger(self) -> Iterator[Metric]:
        rows = self.coord.store.ledger_totals()
        data = CounterMetricFamily("fleetgrid_ledger_bytes", "Bytes metered to leases, by link (fleet-wide, from "
                                   "the usage ledger).", labels=["link"])
        data.add_metric(["cellular"], sum(r["cellular_bytes"] for r in rows))
        data.add_metric(["wifi"], sum(r["wifi_bytes"] for r in rows))
        yield data
        yield CounterMetricFamily("fleetgrid_ledger_compute_seconds", "Accelerator seconds metered to leases "
                                  "(fleet-wide, from the usage ledger).", value=sum(r["compute_s"] for r in rows))

    def _training(self) -> Iterator[Metric]:
        version = GaugeMetricFamily("fleetgrid_training_version", "Global model versions a training job has made "
                                    "(reported by the replica driving it).", labels=["job"])
        accuracy = GaugeMetricFamily("fleetgrid_training_accuracy", "Held-out accuracy of a training job's latest "
                                     "global version (reported by the replica driving it).", labels=["job"])
        training = self.coord.training
        with training.lock:
            runs = list(training.runs.values())
        for run in runs:
            job = run.job
            progress = training.progress(job)
            version.add_metric([job.job_id], progress.version)
            scored = [h for h in progress.history if isinstance(h.get("accuracy"), int | float)]
            if scored:
                accuracy.add_metric([job.job_id], float(scored[-1]["accuracy"]))
        yield version
        yield accuracy
