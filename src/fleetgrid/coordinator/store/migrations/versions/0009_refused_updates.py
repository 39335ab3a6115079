"""Refused training updates are kept (lease, car, job, when, why, the compute and steps spent), so an owner's
statement can say which work was refused and not paid: a refusal leaves its lease open and writes no usage row.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "refused_updates",
        sa.Column("lease_id", sa.String(64), primary_key=True),
        sa.Column("vehicle_id", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("compute_s", sa.Float(), nullable=False),
        sa.Column("steps", sa.BigInteger(), nullable=False),
        sa.Column("examples", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_refused_updates_at", "refused_updates", ["at"])


def downgrade() -> None:
    op.drop_index("ix_refused_updates_at", table_name="refused_updates")
    op.drop_table("refused_updates")
