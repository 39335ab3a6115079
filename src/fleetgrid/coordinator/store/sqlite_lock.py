"""One coordinator process per SQLite file: an exclusive advisory lock on ``<file>.lock`` while its store is open.

SQLite serialises writers within one machine but a coordinator also keeps state in memory (training rounds,
caches), so two coordinators on one file would disagree; replicas share a PostgreSQL database instead.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ...errors import DatabaseInUse, InvalidInput

__all__ = ["SQLiteFileLock"]


class SQLiteFileLock:
    """``flock`` on a file beside the database, which the kernel drops when the process dies, however it dies."""

    def __init__(self, database: Path) -> None:
        self.database = Path(database)
        self.path = self.database.with_name(self.database.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Raises :class:`DatabaseInUse` naming the holder's pid if another store (in any process) holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError as exc:
            raise InvalidInput(f"cannot open SQLite database {self.database}: directory {self.database.parent} "
                               "does not exist; create it or give another sqlite:///PATH") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DatabaseInUse(
                f"database {self.database} is in use by another coordinator (pid {holder}); run one coordinator "
                "per SQLite file, or use PostgreSQL (--db postgresql://USER@HOST:PORT/DB) for replicas"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Closing the descriptor drops the lock; the file stays (removing it would race a new holder)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
