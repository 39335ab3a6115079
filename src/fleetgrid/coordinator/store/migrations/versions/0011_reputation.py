"""Reputation per car (coordinator/reputation.py): a ``reputations`` table of counters (a caught car is suspended
through the vehicles' ``suspended_at`` of 0010_identity).

Revision ID: 0011_reputation
Revises: 0010_identity
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_reputation"
down_revision = "0010_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
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
