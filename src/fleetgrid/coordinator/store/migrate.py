"""Bring a store's database to the current schema with Alembic, whatever it started as.

The revisions live in ``migrations/versions`` and ship inside the package, so no alembic.ini is needed: the store
hands its connection to Alembic through :func:`alembic_config`. :mod:`.schema` stays the source of truth for the
current schema; to change it, edit schema.py and add the next revision beside the others.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from .schema import metadata

__all__ = ["BASELINE", "MIGRATIONS", "alembic_config", "head", "upgrade"]

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001"
"""The schema of fleetgrid before migrations existed; a database without alembic_version is stamped at it."""
log = logging.getLogger("fleetgrid.coordinator")
_PG_MIGRATION_LOCK = 0x666C6774  # any constant: replicas starting together on one database migrate one at a time


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the packaged revisions, migrating ``connection`` (used as it is, in its own
    transaction: the caller commits)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The newest revision."""
    revision = _scripts().get_current_head()
    if revision is None:
        raise RuntimeError(f"no schema revisions in {MIGRATIONS / 'versions'}: this fleetgrid install is incomplete")
    return revision


def upgrade(connection: Connection) -> None:
    """Migrate the database to head inside the caller's transaction.

    An empty database gets :data:`.schema.metadata` created and is stamped at head, which is the same schema
    (a test holds the two equal) at a fraction of the cost of replaying every revision.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    context = MigrationContext.configure(connection)
    current = context.get_current_revision()
    if current == head():
        return
    if current is None:
        if not inspect(connection).has_table("jobs"):
            metadata.create_all(connection)
            context.stamp(_scripts(), "head")
            return
        context.stamp(_scripts(), BASELINE)  # made by fleetgrid before migrations: its tables are the baseline
    command.upgrade(alembic_config(connection), "head")
    log.info("database schema upgraded from revision %s to %s", current or f"{BASELINE} (unversioned)", head())
