"""Coordinator settings, and the first-start bootstrap of its credentials."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidInput
from .logs import LOG_FORMATS
from .ratelimit import RateLimit
from .reputation import TrustPolicy

__all__ = ["CoordinatorConfig", "Credentials"]


@dataclass(kw_only=True)
class Credentials:
    """Clear-text tokens, written once to ``credentials.json`` (mode 0600) beside the data; the store keeps hashes."""

    enroll: str
    operator: str
    tenants: dict[str, str] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"enroll": self.enroll, "operator": self.operator, "tenants": self.tenants}, fh, indent=2)

    @classmethod
    def load(cls, path: Path) -> Credentials:
        data = json.loads(Path(path).read_text())
        return cls(enroll=data["enroll"], operator=data["operator"], tenants=dict(data.get("tenants", {})))


@dataclass(kw_only=True)
class CoordinatorConfig:
    data_dir: Path = Path("fleetgrid-data")
    """Where the SQLite file, artifacts and credentials.json live by default."""
    database_url: str | None = None
    """sqlite:///PATH (default: DATA_DIR/coordinator.db) or postgresql://USER@HOST:PORT/DB."""
    artifact_dir: Path | None = None
    """Content-addressed artifact directory (default: DATA_DIR/artifacts)."""
    lease_ttl_s: float = 60.0
    """A lease not renewed for this long expires and its unit is re-issued."""
    max_json_bytes: int = 1 << 20
    """Largest JSON request body."""
    max_artifact_bytes: int = 2 << 30
    """Largest artifact upload."""
    max_unit_attempts: int = 8
    """Failures (not preemptions) after which a unit fails its job."""
    max_long_poll_s: float = 30.0
    sweep_interval_s: float = 1.0
    """How often expired leases are looked for."""
    online_window_s: float = 60.0
    """A vehicle heard from within this window counts as online in the fleet overview."""
    compute_slack_s: float = 5.0
    """A lease's reported compute_s may exceed the time since it was issued by this much (timer granularity)."""
    auth_cache_ttl_s: float = 60.0
    """How long a found credential is trusted without asking the database (0: never cached). A car revoked through
    another coordinator on the same database is refused leases at once, and refused entirely within this time."""
    store_threads: int = 32
    """Threads that run store calls, file writes and fsyncs off the event loop (they wait on the database or the
    disk, so more than the cores)."""
    long_poll_recheck_s: float = 30.0
    """A long-polling car is woken when work for it appears, made by this coordinator or (on PostgreSQL) another
    replica; it also looks again this often on its own, a safety net (a woken car that could not take the unit it
    was woken for leaves it to the next car that looks)."""
    gang_hold_s: float = 30.0
    """A car waiting for a gang to fill keeps its seat while it keeps asking for work; this long after it last
    asked, the seat goes to another car."""
    driver_claim_ttl_s: float = 6.0
    """Replicas on one database: the replica driving a training job renews its claim every sixth of this; when it
    dies, another takes the job over within this long."""
    admission_max_delay_s: float | None = None
    """New leases wait while the coordinator is further behind than this (its event loop's lag or its store's
    queue, see :mod:`fleetgrid.coordinator.admission`); default a quarter of ``lease_ttl_s``, at least 1 s (a
    pause of the process is not overload)."""
    admission_interval_s: float = 0.5
    """How often that lag is measured."""
    serve_rate_limit_rps: float = 100.0
    """Serving: requests per second one tenant may send (a token bucket holding two seconds' worth); past it, 429
    with ``Retry-After``."""
    serve_hedging: bool = True
    """Serving: send a request still unanswered at its deployment's recent p95 latency to a second car too (at most
    5% of requests; see :mod:`fleetgrid.workloads.serving.router`)."""
    verify_results: bool = False
    """Verify batch inference results before a tenant sees them (:mod:`fleetgrid.coordinator.reputation`): an
    untrusted car's results are confirmed by another car's, a trusted car's spot-checked, a caught car suspended
    and its unconfirmed results recomputed. Needs at least two cars able to take a job's units. Off: a unit is
    computed once unless its job asks for ``redundancy``."""
    trust: TrustPolicy = field(default_factory=TrustPolicy)
    """How fast a car earns trust and how often a trusted car is checked (with ``verify_results``)."""
    state_sample_interval_s: float = 300.0
    """How often the cars are counted by state for the dashboard's last-24-hours chart (one small row per state)."""
    state_history_s: float = 86400.0
    """How long those counts are kept; older samples are deleted as new ones are taken."""
    log_format: str = "text"
    """'text' (uvicorn's own format, no request log) or 'json': every log record as one JSON line, plus one line
    per request (method, route template, status, duration, request id, principal kind; never a token)."""
    auth_failure_limit: RateLimit = field(default_factory=lambda: RateLimit(burst=30, per_s=0.5))
    """Failed authentications (any 401) allowed per client address: a burst, then one per 2 s; past it, 429 with
    ``Retry-After`` before any credential is checked. The same limit applies per claimed vehicle id."""
    enroll_limit: RateLimit = field(default_factory=lambda: RateLimit(burst=30, per_s=0.5))
    """Enrollments with an issued token, per client address and per token. The bootstrap token (below) is the
    operator's own and not limited, so scripts and benchmarks can enroll thousands of cars from one host."""
    rate_limit_keys: int = 100_000
    """Most addresses (or car ids, or tokens) each limiter remembers; past it the least recently seen are
    forgotten (bounded memory under a spray of addresses)."""
    signature_skew_s: float = 60.0
    """A signed car request whose timestamp is further than this from the coordinator's clock is refused (and a
    nonce is remembered this long, to refuse replays)."""
    max_nonces: int = 200_000
    """Most nonces remembered; past it the oldest are forgotten and requests as old are refused (never replayed)."""
    require_car_keys: bool = False
    """Refuse cars that enrolled before car keys (bearer secret only) with a 401 telling them to enroll again.
    Off by default: such cars keep working on their bearer secret alone."""
    enroll_token: str | None = None
    """The bootstrap enrollment token: accepted for any number of enrollments, never expires; rotate it by
    restarting with another. Give cars tokens issued with POST /v1/enrollment-tokens instead where you can."""
    operator_token: str | None = None
    tenant_tokens: dict[str, str] = field(default_factory=dict)
    """Fixed tokens (for tests and demos); missing ones are generated at first start."""

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if not self.serve_rate_limit_rps > 0:
            raise InvalidInput(f"serve_rate_limit_rps must be > 0 requests per second, got {self.serve_rate_limit_rps}")
        if self.lease_ttl_s <= 0:
            raise InvalidInput(f"lease_ttl_s must be > 0 seconds, got {self.lease_ttl_s}")
        if self.max_json_bytes < 1024 or self.max_artifact_bytes < 1024:
            raise InvalidInput("body size limits must be at least 1024 bytes")
        if self.compute_slack_s < 0:
            raise InvalidInput(f"compute_slack_s must be >= 0 seconds, got {self.compute_slack_s}")
        if self.max_unit_attempts < 1:
            raise InvalidInput(f"max_unit_attempts must be >= 1, got {self.max_unit_attempts}")
        if self.admission_max_delay_s is not None and self.admission_max_delay_s <= 0:
            raise InvalidInput(f"admission_max_delay_s must be > 0 seconds, got {self.admission_max_delay_s}")
        if self.gang_hold_s <= 0:
            raise InvalidInput(f"gang_hold_s must be > 0 seconds, got {self.gang_hold_s}")
        if self.admission_interval_s <= 0:
            raise InvalidInput(f"admission_interval_s must be > 0 seconds, got {self.admission_interval_s}")
        if self.long_poll_recheck_s <= 0 or self.max_long_poll_s < 0:
            raise InvalidInput(f"long_poll_recheck_s must be > 0 and max_long_poll_s >= 0 seconds, got "
                               f"{self.long_poll_recheck_s} and {self.max_long_poll_s}")
        if not (self.state_sample_interval_s > 0 and self.state_history_s >= self.state_sample_interval_s):
            raise InvalidInput(f"state_sample_interval_s must be > 0 and state_history_s at least that, got "
                               f"{self.state_sample_interval_s} and {self.state_history_s} seconds")
        if self.log_format not in LOG_FORMATS:
            raise InvalidInput(f"log format {self.log_format!r} is not one of {', '.join(LOG_FORMATS)}")
        if self.signature_skew_s <= 0 or self.max_nonces < 1 or self.rate_limit_keys < 1:
            raise InvalidInput(f"signature_skew_s must be > 0 and max_nonces, rate_limit_keys >= 1, got "
                               f"{self.signature_skew_s}, {self.max_nonces}, {self.rate_limit_keys}")
        if self.auth_cache_ttl_s < 0:
            raise InvalidInput(f"auth_cache_ttl_s must be >= 0 seconds (0 disables the cache), "
                               f"got {self.auth_cache_ttl_s}")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'coordinator.db').resolve()}"

    @property
    def artifacts_path(self) -> Path:
        return self.artifact_dir or self.data_dir / "artifacts"

    @property
    def credentials_path(self) -> Path:
        return self.data_dir / "credentials.json"
