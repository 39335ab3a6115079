"""Units can be offered to one car (a share of a training round) for a while, with the workload's own payload, so
training offers and leases are rows like every other workload's and survive a restart; a job names the coordinator
replica driving it (its round loop) and until when, so exactly one replica drives it and another takes over when
that one dies.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("units") as batch:
        batch.add_column(sa.Column("target_vehicle", sa.String(64)))
        batch.add_column(sa.Column("offer_expires", sa.Float()))
        batch.add_column(sa.Column("payload", sa.JSON()))
        batch.create_index("ix_units_offered", ["target_vehicle", "state"],
                           postgresql_where=sa.text("target_vehicle IS NOT NULL"),
                           sqlite_where=sa.text("target_vehicle IS NOT NULL"))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("driver", sa.String(64)))
        batch.add_column(sa.Column("driver_until", sa.Float()))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("driver_until")
        batch.drop_column("driver")
    with op.batch_alter_table("units") as batch:
        batch.drop_index("ix_units_offered")
        batch.drop_column("payload")
        batch.drop_column("offer_expires")
        batch.drop_column("target_vehicle")
