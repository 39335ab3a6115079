"""The queue of units anyone may take has an index of its own: the pending units placed one per car, by seq.

With fresh statistics saying most units are pending, PostgreSQL leased by walking the primary key (seq) from the
start and filtering out every unit already done: 9 ms per lease after 4,800 units, growing with the job. The
partial index holds only the pending ones, so the first entry is the unit to take.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_QUEUED = "state = 'pending' AND target_vehicle IS NULL AND gang IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("units") as batch:
        batch.create_index("ix_units_queue", ["seq"], postgresql_where=sa.text(_QUEUED),
                           sqlite_where=sa.text(_QUEUED))


def downgrade() -> None:
    with op.batch_alter_table("units") as batch:
        batch.drop_index("ix_units_queue")
