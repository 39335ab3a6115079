"""Ledger rows say what kind of work they meter and how much of it: workload, examples and steps.

``items`` widens to BigInteger, like the byte counters beside it: the usage model will meter counts (examples,
tokens) that outgrow 32 bits.
Existing rows are back-filled from their job: ``workload`` is the job's kind, and a training row's ``items``
(the examples it trained on) is copied to ``examples``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: on SQLite the table is copied (it cannot ALTER a column's type); elsewhere plain ALTERs.
    with op.batch_alter_table("ledger") as batch:
        batch.alter_column("items", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)
        batch.add_column(sa.Column("workload", sa.String(16)))
        batch.add_column(sa.Column("examples", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("steps", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE ledger SET workload = (SELECT jobs.kind FROM jobs WHERE jobs.job_id = ledger.job_id"
        " AND jobs.kind IN ('inference', 'train'))"
    )
    op.execute("UPDATE ledger SET examples = items WHERE workload = 'train'")


def downgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.drop_column("steps")
        batch.drop_column("examples")
        batch.drop_column("workload")
        batch.alter_column("items", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
