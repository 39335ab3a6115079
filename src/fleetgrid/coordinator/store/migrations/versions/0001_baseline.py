"""Baseline: the schema as fleetgrid created it before migrations existed.

A database made by that code (its tables, no alembic_version) is stamped at this revision, then upgraded.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value_hash", sa.String(128), nullable=False),
    )
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("token_hash", sa.String(128), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "vehicles",
        sa.Column("vehicle_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("hardware", sa.String(32), nullable=False),
        sa.Column("credential_hash", sa.String(128), nullable=False),
        sa.Column("enrolled_at", sa.Float, nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.Column("last_seen", sa.Float),
        sa.Column("state", sa.JSON),
        sa.Column("eligible", sa.Boolean, nullable=False),
    )
    op.create_table(
        "artifacts",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "artifact_owners",
        sa.Column("digest", sa.String(64), sa.ForeignKey("artifacts.digest"), primary_key=True),
        sa.Column("owner", sa.String(128), primary_key=True),
    )
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(64), sa.ForeignKey("tenants.name"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("model_file", sa.String(64)),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("items", sa.Integer, nullable=False),
        sa.Column("units_total", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("units_done", sa.Integer, nullable=False),
        sa.Column("reissued_units", sa.Integer, nullable=False),
        sa.Column("preemptions", sa.Integer, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("result_digest", sa.String(64)),
        sa.Column("checkpoint_digest", sa.String(64)),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_jobs_tenant", "jobs", ["tenant"])
    op.create_table(
        "units",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("unit_id", sa.String(96), nullable=False, unique=True),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.job_id"), nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("replica", sa.Integer, nullable=False),
        sa.Column("replicas", sa.Integer, nullable=False),
        sa.Column("start_item", sa.Integer, nullable=False),
        sa.Column("end_item", sa.Integer, nullable=False),
        sa.Column("input_digest", sa.String(64), nullable=False),
        sa.Column("input_format", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("vehicle_id", sa.String(64)),
        sa.Column("checkpoint_items", sa.Integer, nullable=False),
        sa.Column("checkpoint_digest", sa.String(64)),
        sa.Column("result_digest", sa.String(64)),
    )
    op.create_index("ix_units_state_seq", "units", ["state", "seq"])
    op.create_index("ix_units_job_idx", "units", ["job_id", "idx"])
    op.create_table(
        "accepted_units",
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.job_id"), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("result_digest", sa.String(64), nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("lease_id", sa.String(64), primary_key=True),
        sa.Column("unit_id", sa.String(96), sa.ForeignKey("units.unit_id"), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("vehicle_id", sa.String(64), sa.ForeignKey("vehicles.vehicle_id"), nullable=False),
        sa.Column("issued_at", sa.Float, nullable=False),
        sa.Column("deadline", sa.Float, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("result_digest", sa.String(64)),
        sa.Column("closed_at", sa.Float),
    )
    op.create_index("ix_leases_state_deadline", "leases", ["state", "deadline"])
    op.create_index("ix_leases_vehicle_state", "leases", ["vehicle_id", "state"])
    op.create_index("ix_leases_unit", "leases", ["unit_id"])
    op.create_table(
        "ledger",
        sa.Column("lease_id", sa.String(64), primary_key=True),
        sa.Column("vehicle_id", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("items", sa.Integer, nullable=False),
        sa.Column("compute_s", sa.Float, nullable=False),
        sa.Column("cellular_bytes", sa.BigInteger, nullable=False),
        sa.Column("wifi_bytes", sa.BigInteger, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("accepted", sa.Boolean, nullable=False),
    )
    op.create_index("ix_ledger_vehicle", "ledger", ["vehicle_id"])


def downgrade() -> None:
    for table in ("ledger", "leases", "accepted_units", "units", "jobs", "artifact_owners", "artifacts", "vehicles",
                  "tenants", "secrets"):
        op.drop_table(table)
