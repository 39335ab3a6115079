"""The dashboard's history and the owner's policy: car counts per state sampled over time (the last-24-hours
chart), and each owner's policy for their cars, sent to the cars with their heartbeats.

Revision ID: 0014_car_states
Revises: 0011_reputation
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_car_states"
down_revision = "0011_reputation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "car_state_samples",
        sa.Column("at", sa.Float(), primary_key=True),
        sa.Column("state", sa.String(16), primary_key=True),
        sa.Column("cars", sa.Integer(), nullable=False),
    )
    with op.batch_alter_table("owners") as batch:
        batch.add_column(sa.Column("policy", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("owners") as batch:
        batch.drop_column("policy")
    op.drop_table("car_state_samples")
