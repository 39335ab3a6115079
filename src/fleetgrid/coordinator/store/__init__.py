"""State backends behind one interface, chosen by URL."""

from __future__ import annotations

from .base import ArtifactRecord, JobRecord, LeaseRecord, LedgerRecord, Store, UnitRecord, VehicleRecord
from .sql import SQLStore, engine_url

__all__ = [
    "ArtifactRecord",
    "JobRecord",
    "LeaseRecord",
    "LedgerRecord",
    "SQLStore",
    "Store",
    "UnitRecord",
    "VehicleRecord",
    "engine_url",
    "open_store",
]


def open_store(url: str) -> Store:
    """``sqlite:///PATH`` (the embedded default) or ``postgresql://USER@HOST:PORT/DB``."""
    return SQLStore(url)
