"""Reputation per car (coordinator/reputation.py) and automatic suspension: a ``reputations`` table of counters and
the vehicles' ``suspended`` flag with its reason.

Revision ID: 0011_reputation
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_reputation"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN, not a batch (which on SQLite copies the table and drops the old one: refused while leases
    # and owners' cars point at vehicles).
    op.add_column("vehicles", sa.Column("suspended", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("vehicles", sa.Column("suspended_reason", sa.Text()))
    op.create_table(
        "reputations",
        sa.Column("vehicle_id", sa.String(64), sa.ForeignKey("vehicles.vehicle_id"), primary_key=True),
        sa.Column("agreed", sa.Integer(), nullable=False),
        sa.Column("streak", sa.Integer(), nullable=False),
        sa.Column("faults", sa.Integer(), nullable=False),
        sa.Column("implausible", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float()),
    )


def downgrade() -> None:
    op.drop_table("reputations")
    op.drop_column("vehicles", "suspended_reason")
    op.drop_column("vehicles", "suspended")
