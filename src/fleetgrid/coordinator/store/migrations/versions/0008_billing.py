"""Billing: owners and their cars, the operator's price lists, and what a ledger row needs to be priced (tokens,
why reported work was rejected, whether the car was plugged in), with indexes for a month's rows by time and job.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.add_column(sa.Column("tokens", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("rejected", sa.Text()))
        batch.add_column(sa.Column("plugged_in", sa.Boolean()))
        batch.create_index("ix_ledger_at", ["at"])
        batch.create_index("ix_ledger_job", ["job_id"])
    op.create_table(
        "owners",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("token_hash", sa.String(128), nullable=False, unique=True),
        sa.Column("tariff", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "owner_cars",
        sa.Column("vehicle_id", sa.String(64), sa.ForeignKey("vehicles.vehicle_id"), primary_key=True),
        sa.Column("owner", sa.String(64), sa.ForeignKey("owners.name"), nullable=False),
    )
    op.create_index("ix_owner_cars_owner", "owner_cars", ["owner"])
    op.create_table(
        "price_lists",
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("operator_fee", sa.String(32), nullable=False),
        sa.Column("prices", sa.JSON(), nullable=False),
        sa.Column("set_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("price_lists")
    op.drop_index("ix_owner_cars_owner", table_name="owner_cars")
    op.drop_table("owner_cars")
    op.drop_table("owners")
    with op.batch_alter_table("ledger") as batch:
        batch.drop_index("ix_ledger_job")
        batch.drop_index("ix_ledger_at")
        batch.drop_column("plugged_in")
        batch.drop_column("rejected")
        batch.drop_column("tokens")
