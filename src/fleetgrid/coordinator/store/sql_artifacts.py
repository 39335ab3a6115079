"""The SQL store's artifact rows: who owns each content-addressed artifact, who may read it, small results kept in
the database, and releasing what nobody holds any more (mixed into
:class:`~fleetgrid.coordinator.store.sql.SQLStore`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import delete, exists, literal, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import Insert

from .base import ArtifactRecord
from .schema import artifact_owners, artifacts, jobs, leases, result_blobs, units

__all__ = ["ArtifactRows"]


class ArtifactRows:
    _write: Callable[[], AbstractContextManager[Connection]]
    _read: Callable[[], AbstractContextManager[Connection]]
    _q_add_artifact: Insert
    _q_add_owner: Insert
    _q_owned_by: Any

    # --- artifacts ----------------------------------------------------------------------------------------------
    def add_artifact(self, digest: str, size: int, owner: str, now: float) -> None:
        self.add_artifacts([(digest, size)], owner, now)

    def add_artifacts(self, items: list[tuple[str, int]], owner: str, now: float) -> None:
        if not items:
            return
        with self._write() as c:
            self._add_artifacts(c, items, owner, now)

    def _add_artifacts(self, c: Connection, items: Sequence[tuple[str, int]], owner: str, now: float) -> None:
        c.execute(self._q_add_artifact, [{"digest": d, "size": n, "created_at": now} for d, n in items])
        c.execute(self._q_add_owner, [{"digest": d, "owner": owner} for d, _ in items])

    def get_artifact(self, digest: str) -> ArtifactRecord | None:
        with self._read() as c:
            row = c.execute(select(artifacts).where(artifacts.c.digest == digest)).first()
            if row is None:
                return None
            owners = c.execute(select(artifact_owners.c.owner).where(artifact_owners.c.digest == digest)).scalars()
            return ArtifactRecord(digest=row.digest, size=row.size, created_at=row.created_at, owners=list(owners))

    def owns(self, owner: str, digest: str) -> bool:
        with self._read() as c:
            return c.execute(self._q_owned_by, {"digest": digest, "owner": owner}).first() is not None

    def result_blob(self, digest: str) -> bytes | None:
        with self._read() as c:
            return c.execute(select(result_blobs.c.data).where(result_blobs.c.digest == digest)).scalar()

    def vehicle_may_read(self, vehicle_id: str, digest: str) -> bool:
        job_owned = exists(select(artifact_owners.c.digest).where(
            artifact_owners.c.digest == digest, artifact_owners.c.owner == literal("job:") + leases.c.job_id))
        needed = (
            select(leases.c.lease_id)
            .join(units, units.c.unit_id == leases.c.unit_id)
            .join(jobs, jobs.c.job_id == units.c.job_id)
            .where(
                leases.c.vehicle_id == vehicle_id,
                leases.c.state == "active",
                or_(units.c.input_digest == digest, units.c.checkpoint_digest == digest, jobs.c.model_file == digest,
                    job_owned),
            )
            .limit(1)
        )
        with self._read() as c:
            return c.execute(needed).first() is not None

    def release_artifacts(self, owner: str, digests: Sequence[str] | None = None) -> list[str]:
        with self._write() as c:
            mine = select(artifact_owners.c.digest).where(artifact_owners.c.owner == owner)
            if digests is not None:
                mine = mine.where(artifact_owners.c.digest.in_(list(digests)))
            touched = sorted(set(c.execute(mine).scalars()))
            if not touched:
                return []
            c.execute(delete(artifact_owners).where(artifact_owners.c.owner == owner,
                                                    artifact_owners.c.digest.in_(touched)))
            still_owned = exists(select(artifact_owners.c.digest).where(artifact_owners.c.digest == artifacts.c.digest))
            orphans = list(c.execute(select(artifacts.c.digest).where(artifacts.c.digest.in_(touched), ~still_owned))
                           .scalars())
            if orphans:
                c.execute(delete(artifacts).where(artifacts.c.digest.in_(orphans)))
        return orphans
