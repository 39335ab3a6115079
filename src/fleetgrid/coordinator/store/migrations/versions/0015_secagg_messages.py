"""Secure-aggregation rounds in the shared store: each open round's phase and its cars' phase messages, so that any
coordinator replica can take a car's message while the job's driving replica runs the protocol.

Revision ID: 0015_secagg_messages
Revises: 0014_car_states
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_secagg_messages"
down_revision = "0014_car_states"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secagg_rounds",
        sa.Column("round_id", sa.String(200), primary_key=True),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("opened_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_secagg_rounds_job", "secagg_rounds", ["job_id"])
    op.create_table(
        "secagg_messages",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("round_id", sa.String(200), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("vehicle_id", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(4), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("lease_id", sa.String(64), nullable=False),
        sa.Column("body", sa.Text()),
        sa.Column("verdict", sa.String(32)),
        sa.Column("reason", sa.Text()),
        sa.UniqueConstraint("round_id", "vehicle_id", "direction", "phase", name="uq_secagg_message"),
    )
    op.create_index("ix_secagg_messages_job", "secagg_messages", ["job_id"])


def downgrade() -> None:
    op.drop_table("secagg_messages")
    op.drop_table("secagg_rounds")
