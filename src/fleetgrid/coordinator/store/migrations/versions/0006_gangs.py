"""Units of a GANG-placed workload name their gang and its size, and a member can be held for one car while its
gang forms (``held_until``), so a gang is leased to k cars all at once, on any replica.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("units") as batch:
        batch.add_column(sa.Column("gang", sa.String(96)))
        batch.add_column(sa.Column("gang_size", sa.Integer()))
        batch.add_column(sa.Column("held_until", sa.Float()))
        batch.create_index("ix_units_gang", ["gang", "idx"], postgresql_where=sa.text("gang IS NOT NULL"),
                           sqlite_where=sa.text("gang IS NOT NULL"))
        batch.create_index("ix_units_held", ["vehicle_id"], postgresql_where=sa.text("held_until IS NOT NULL"),
                           sqlite_where=sa.text("held_until IS NOT NULL"))


def downgrade() -> None:
    with op.batch_alter_table("units") as batch:
        batch.drop_index("ix_units_held")
        batch.drop_index("ix_units_gang")
        batch.drop_column("held_until")
        batch.drop_column("gang_size")
        batch.drop_column("gang")
