"""Car identity: each car's Ed25519 public key and suspension, enrollment tokens the operator issues (hashes only,
with uses and expiry), and the append-only audit log of operator actions and automatic suspensions.

Revision ID: 0010_identity
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_identity"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vehicles") as batch:
        batch.add_column(sa.Column("public_key", sa.String(64)))
        batch.add_column(sa.Column("suspended_at", sa.Float()))
        batch.add_column(sa.Column("suspended_reason", sa.Text()))
    op.create_table(
        "enrollment_tokens",
        sa.Column("token_id", sa.String(32), primary_key=True),
        sa.Column("token_hash", sa.String(128), nullable=False, unique=True),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("uses", sa.Integer()),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Float()),
        sa.Column("revoked_at", sa.Float()),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("enrollment_tokens")
    with op.batch_alter_table("vehicles") as batch:
        batch.drop_column("suspended_reason")
        batch.drop_column("suspended_at")
        batch.drop_column("public_key")
