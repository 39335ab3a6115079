"""Tables of the SQL store (SQLAlchemy Core), shared by SQLite and PostgreSQL.

This is the current schema; ``migrations/versions`` holds the steps that lead to it from older databases. Change
both together: a test checks that upgrading to head yields exactly these tables.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

_QUEUED = "state = 'pending' AND target_vehicle IS NULL AND gang IS NULL"
"""The units anyone may lease next (pending, offered to no car, in no gang)."""

secrets = Table(
    "secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value_hash", String(128), nullable=False),
)

tenants = Table(
    "tenants",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("token_hash", String(128), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

vehicles = Table(
    "vehicles",
    metadata,
    Column("vehicle_id", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("hardware", String(32), nullable=False),
    Column("credential_hash", String(128), nullable=False),
    Column("enrolled_at", Float, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("last_seen", Float),
    Column("state", JSON),
    Column("eligible", Boolean, nullable=False, default=False),
    Column("public_key", String(64)),
    Column("suspended_at", Float),
    Column("suspended_reason", Text),
)

enrollment_tokens = Table(
    "enrollment_tokens",
    metadata,
    Column("token_id", String(32), primary_key=True),
    Column("token_hash", String(128), nullable=False, unique=True),
    Column("label", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("uses", Integer),
    Column("used", Integer, nullable=False, default=0),
    Column("expires_at", Float),
    Column("revoked_at", Float),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(200), nullable=False),
    Column("details", JSON, nullable=False),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
)

artifact_owners = Table(
    "artifact_owners",
    metadata,
    Column("digest", String(64), ForeignKey("artifacts.digest"), primary_key=True),
    Column("owner", String(128), primary_key=True),
)

jobs = Table(
    "jobs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("tenant", String(64), ForeignKey("tenants.name"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("model", String(64), nullable=False),
    Column("model_file", String(64)),
    Column("spec", JSON, nullable=False),
    Column("items", Integer, nullable=False),
    Column("units_total", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("state", String(16), nullable=False),
    Column("units_done", Integer, nullable=False, default=0),
    Column("reissued_units", Integer, nullable=False, default=0),
    Column("preemptions", Integer, nullable=False, default=0),
    Column("finished_at", Float),
    Column("result_digest", String(64)),
    Column("checkpoint_digest", String(64)),
    Column("error", Text),
    Column("driver", String(64)),
    Column("driver_until", Float),
    Index("ix_jobs_tenant", "tenant"),
)

units = Table(
    "units",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("unit_id", String(96), nullable=False, unique=True),
    Column("job_id", String(64), ForeignKey("jobs.job_id"), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("replica", Integer, nullable=False),
    Column("replicas", Integer, nullable=False),
    Column("start_item", Integer, nullable=False),
    Column("end_item", Integer, nullable=False),
    Column("input_digest", String(64), nullable=False),
    Column("input_format", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("vehicle_id", String(64)),
    Column("checkpoint_items", Integer, nullable=False, default=0),
    Column("checkpoint_digest", String(64)),
    Column("result_digest", String(64)),
    Column("target_vehicle", String(64)),
    Column("offer_expires", Float),
    Column("payload", JSON),
    # GANG placement: the gang a unit belongs to and how many units (cars) it has; while the gang forms, a pending
    # member may be held for the car ``vehicle_id`` until ``held_until``; once it is full, a leased member keeps
    # the time it was leased there until its car picks its lease up (see store/sql_gangs.py).
    Column("gang", String(96)),
    Column("gang_size", Integer),
    Column("held_until", Float),
    Index("ix_units_state_seq", "state", "seq"),
    Index("ix_units_job_idx", "job_id", "idx"),
    # Partial: only offered units are in it, so the queue's own query (target_vehicle IS NULL, by seq) keeps using
    # ix_units_state_seq instead of sorting every pending unit out of this one.
    Index("ix_units_offered", "target_vehicle", "state", postgresql_where=text("target_vehicle IS NOT NULL"),
          sqlite_where=text("target_vehicle IS NOT NULL")),
    # Partial, as above: units placed one per car are in neither.
    Index("ix_units_gang", "gang", "idx", postgresql_where=text("gang IS NOT NULL"),
          sqlite_where=text("gang IS NOT NULL")),
    Index("ix_units_held", "vehicle_id", postgresql_where=text("held_until IS NOT NULL"),
          sqlite_where=text("held_until IS NOT NULL")),
    # The queue anyone may take from (store/sql_cycle.py "candidate"): only its pending units, by seq, so leasing
    # never walks past the units already done (as PostgreSQL did through the primary key).
    Index("ix_units_queue", "seq", postgresql_where=text(_QUEUED), sqlite_where=text(_QUEUED)),
)

result_blobs = Table(
    "result_blobs",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)
"""Results small enough to travel inline (at most MAX_INLINE_RESULT_BYTES), stored with the completion that
accepted them; larger ones are files of the artifact store."""

accepted = Table(
    "accepted_units",
    metadata,
    Column("job_id", String(64), ForeignKey("jobs.job_id"), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("result_digest", String(64), nullable=False),
)

leases = Table(
    "leases",
    metadata,
    Column("lease_id", String(64), primary_key=True),
    Column("unit_id", String(96), ForeignKey("units.unit_id"), nullable=False),
    Column("job_id", String(64), nullable=False),
    Column("vehicle_id", String(64), ForeignKey("vehicles.vehicle_id"), nullable=False),
    Column("issued_at", Float, nullable=False),
    Column("deadline", Float, nullable=False),
    Column("state", String(16), nullable=False),
    Column("result_digest", String(64)),
    Column("closed_at", Float),
    Column("resumed_items", Integer, nullable=False, default=0, server_default="0"),
    Index("ix_leases_state_deadline", "state", "deadline"),
    Index("ix_leases_vehicle_state", "vehicle_id", "state"),
    Index("ix_leases_unit", "unit_id"),
)

ledger = Table(
    "ledger",
    metadata,
    # Inference leases live in ``leases``; training leases only in the coordinator's memory (a round cut by a
    # restart is re-run), so a ledger row names its lease without a foreign key.
    Column("lease_id", String(64), primary_key=True),
    Column("vehicle_id", String(64), nullable=False),
    Column("job_id", String(64), nullable=False),
    Column("items", BigInteger, nullable=False),
    Column("compute_s", Float, nullable=False),
    Column("cellular_bytes", BigInteger, nullable=False),
    Column("wifi_bytes", BigInteger, nullable=False),
    Column("at", Float, nullable=False),
    Column("accepted", Boolean, nullable=False),
    # What was metered, for the usage model: the kind of work ('inference' | 'train'; NULL if unknown), the
    # training examples seen and the optimizer steps taken.
    Column("workload", String(16)),
    Column("examples", BigInteger, nullable=False, default=0, server_default="0"),
    Column("steps", BigInteger, nullable=False, default=0, server_default="0"),
    # Billing: tokens metered (priced per 1,000), why reported work is not paid (its replica lost the quorum),
    # and whether the car was plugged in while it worked (charging losses; NULL: not known).
    Column("tokens", BigInteger, nullable=False, default=0, server_default="0"),
    Column("rejected", Text),
    Column("plugged_in", Boolean),
    Index("ix_ledger_vehicle", "vehicle_id"),
    Index("ix_ledger_at", "at"),
    Index("ix_ledger_job", "job_id"),
)

owners = Table(
    "owners",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("token_hash", String(128), nullable=False, unique=True),
    # Electricity price per kWh in the price list's currency, a decimal string (money is never a float).
    Column("tariff", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    # The owner's policy for their cars (OwnerPolicy's JSON), sent to each car with its heartbeat; NULL: none set
    # here, the car keeps its own.
    Column("policy", JSON),
)

owner_cars = Table(
    "owner_cars",
    metadata,
    Column("vehicle_id", String(64), ForeignKey("vehicles.vehicle_id"), primary_key=True),
    Column("owner", String(64), ForeignKey("owners.name"), nullable=False),
    Index("ix_owner_cars_owner", "owner"),
)

refused_updates = Table(
    "refused_updates",
    metadata,
    # A training update the strategy refused (stale, wrong shape, ...): its lease stays open for a corrected report,
    # so it writes no usage row; this keeps what the car spent on it, for its owner's statement to say it is unpaid.
    Column("lease_id", String(64), primary_key=True),
    Column("vehicle_id", String(64), nullable=False),
    Column("job_id", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Column("compute_s", Float, nullable=False),
    Column("steps", BigInteger, nullable=False),
    Column("examples", BigInteger, nullable=False),
    Index("ix_refused_updates_at", "at"),
)

car_state_samples = Table(
    "car_state_samples",
    metadata,
    # How many cars were in each state (CAR_STATES) at a sample time: the dashboard's last-24-hours chart. One row
    # per state and sample, kept for a bounded time (the sampler deletes older ones).
    Column("at", Float, primary_key=True),
    Column("state", String(16), primary_key=True),
    Column("cars", Integer, nullable=False),
)

price_lists = Table(
    "price_lists",
    metadata,
    # Every list the operator set, kept: a row is priced by the list in force when it closed.
    Column("version", Integer, primary_key=True, autoincrement=True),
    Column("currency", String(3), nullable=False),
    Column("operator_fee", String(32), nullable=False),
    Column("prices", JSON, nullable=False),
    Column("set_at", Float, nullable=False),
)

reputations = Table(
    "reputations",
    metadata,
    # One row per car whose results were ever checked (coordinator/reputation.py): counters, updated by increments.
    Column("vehicle_id", String(64), ForeignKey("vehicles.vehicle_id"), primary_key=True),
    Column("agreed", Integer, nullable=False, default=0),
    Column("streak", Integer, nullable=False, default=0),
    Column("faults", Integer, nullable=False, default=0),
    Column("implausible", Integer, nullable=False, default=0),
    Column("updated_at", Float),
)

LIVE_JOB_STATES = ("queued", "running")
"""Job states whose units may still be leased and whose secure rounds may still run."""

secagg_rounds = Table(
    "secagg_rounds",
    metadata,
    # A secure-aggregation round of a training job (coordinator/secure_rounds.py): the phase whose messages it
    # takes now. Written by the replica driving the job; read by any replica that takes a car's message.
    Column("round_id", String(200), primary_key=True),
    Column("job_id", String(64), nullable=False),
    Column("phase", String(16), nullable=False),
    Column("opened_at", Float, nullable=False),
    Index("ix_secagg_rounds_job", "job_id"),
)

secagg_messages = Table(
    "secagg_messages",
    metadata,
    # A car's phase message (direction 'up', taken by any replica, ruled on by the driver) or what the car fetches
    # next (direction 'down', written by the driver): one per car, round, direction and phase. Deleted with their
    # round (secagg_base.py says when).
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("round_id", String(200), nullable=False),
    Column("job_id", String(64), nullable=False),
    Column("vehicle_id", String(64), nullable=False),
    Column("direction", String(4), nullable=False),
    Column("phase", String(16), nullable=False),
    Column("lease_id", String(64), nullable=False),
    Column("body", Text),
    Column("verdict", String(32)),
    Column("reason", Text),
    UniqueConstraint("round_id", "vehicle_id", "direction", "phase", name="uq_secagg_message"),
    Index("ix_secagg_messages_job", "job_id"),
)

__all__ = [
    "accepted",
    "artifact_owners",
    "artifacts",
    "audit_log",
    "car_state_samples",
    "enrollment_tokens",
    "jobs",
    "leases",
    "ledger",
    "metadata",
    "owner_cars",
    "owners",
    "price_lists",
    "refused_updates",
    "reputations",
    "result_blobs",
    "secagg_messages",
    "secagg_rounds",
    "secrets",
    "tenants",
    "units",
    "vehicles",
]
