"""The SQL store's identity rows: enrollment tokens, spent one use at a time by a conditional UPDATE; suspensions;
the audit log, written in the same transaction as the change it records (mixed into
:class:`~fleetgrid.coordinator.store.sql.SQLStore`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.engine import Connection, Row

from ...errors import AuthError, NotFound
from .base import VehicleRecord
from .identity_base import AuditRecord, EnrollmentTokenRecord
from .schema import audit_log, enrollment_tokens, vehicles

__all__ = ["IdentityRows"]

_TOKEN_FIELDS = EnrollmentTokenRecord.__slots__


def _token(row: Row) -> EnrollmentTokenRecord:
    m = row._mapping
    return EnrollmentTokenRecord(**{k: m[k] for k in _TOKEN_FIELDS})


class IdentityRows:
    _write: Callable[[], AbstractContextManager[Connection]]
    _read: Callable[[], AbstractContextManager[Connection]]
    after_commit: Callable[[Callable[[], None]], None]
    _vehicle_changed: Callable[[str], None]

    # --- enrollment tokens --------------------------------------------------------------------------------------
    def add_enrollment_token(self, token: EnrollmentTokenRecord, token_hash: str) -> None:
        with self._write() as c:
            c.execute(insert(enrollment_tokens).values(token_hash=token_hash,
                                                       **{k: getattr(token, k) for k in _TOKEN_FIELDS}))
            self._audit(c, token.created_by, "enrollment_token.issue", token.token_id,
                        {"label": token.label, "uses": token.uses, "expires_at": token.expires_at}, token.created_at)

    def list_enrollment_tokens(self) -> list[EnrollmentTokenRecord]:
        with self._read() as c:
            query = select(enrollment_tokens).order_by(enrollment_tokens.c.created_at, enrollment_tokens.c.token_id)
            return [_token(r) for r in c.execute(query)]

    def revoke_enrollment_token(self, token_id: str, actor: str, now: float) -> EnrollmentTokenRecord | None:
        with self._write() as c:
            changed = c.execute(update(enrollment_tokens).where(enrollment_tokens.c.token_id == token_id,
                                                                enrollment_tokens.c.revoked_at.is_(None))
                                .values(revoked_at=now)).rowcount
            row = c.execute(select(enrollment_tokens).where(enrollment_tokens.c.token_id == token_id)).first()
            if row is None:
                return None
            if changed:
                self._audit(c, actor, "enrollment_token.revoke", token_id, {"label": row.label}, now)
            return _token(row)

    def enroll_with_token(self, token_hash: str, vehicle: VehicleRecord, now: float) -> str:
        t = enrollment_tokens.c
        live = and_(t.token_hash == token_hash, t.revoked_at.is_(None), or_(t.expires_at.is_(None), t.expires_at > now),
                    or_(t.uses.is_(None), t.used < t.uses))
        with self._write() as c:
            # One statement decides: two transactions racing for the last use cannot both see it left (PostgreSQL
            # re-checks the WHERE on the row the first one updated; SQLite writes one transaction at a time).
            if c.execute(update(enrollment_tokens).where(live).values(used=t.used + 1)).rowcount != 1:
                raise AuthError(self._why_refused(c, token_hash, now))
            c.execute(insert(vehicles).values(**{k: getattr(vehicle, k) for k in VehicleRecord.__slots__}))
            token_id: str = c.execute(select(t.token_id).where(t.token_hash == token_hash)).scalar_one()
            return token_id

    @staticmethod
    def _why_refused(c: Connection, token_hash: str, now: float) -> str:
        row = c.execute(select(enrollment_tokens).where(enrollment_tokens.c.token_hash == token_hash)).first()
        if row is None:
            return "wrong fleet enrollment token; ask the fleet operator for a current one"
        token = _token(row)
        if token.revoked_at is not None:
            return f"enrollment token {token.token_id} was revoked; ask the fleet operator for a current one"
        if token.expires_at is not None and token.expires_at <= now:
            return f"enrollment token {token.token_id} expired; ask the fleet operator for a current one"
        return f"enrollment token {token.token_id} is used up ({token.used} of {token.uses} enrollments); ask the " \
               "fleet operator for another"

    # --- suspension ---------------------------------------------------------------------------------------------
    def suspend_vehicle(self, vehicle_id: str, reason: str, actor: str, *, now: float | None = None) -> bool:
        at = time.time() if now is None else now
        with self._write() as c:
            changed = c.execute(update(vehicles).where(vehicles.c.vehicle_id == vehicle_id,
                                                       vehicles.c.suspended_at.is_(None))
                                .values(suspended_at=at, suspended_reason=reason)).rowcount > 0
            if not changed:
                self._must_exist(c, vehicle_id)
                return False
            self._audit(c, actor, "vehicle.suspend", vehicle_id, {"reason": reason}, at)
        self.after_commit(lambda: self._vehicle_changed(vehicle_id))
        return True

    def unsuspend_vehicle(self, vehicle_id: str, actor: str, *, now: float | None = None) -> bool:
        at = time.time() if now is None else now
        with self._write() as c:
            changed = c.execute(update(vehicles).where(vehicles.c.vehicle_id == vehicle_id,
                                                       vehicles.c.suspended_at.is_not(None))
                                .values(suspended_at=None, suspended_reason=None)).rowcount > 0
            if not changed:
                self._must_exist(c, vehicle_id)
                return False
            self._audit(c, actor, "vehicle.unsuspend", vehicle_id, {}, at)
        self.after_commit(lambda: self._vehicle_changed(vehicle_id))
        return True

    @staticmethod
    def _must_exist(c: Connection, vehicle_id: str) -> None:
        if c.execute(select(vehicles.c.vehicle_id).where(vehicles.c.vehicle_id == vehicle_id)).first() is None:
            raise NotFound(f"vehicle {vehicle_id!r} does not exist; GET /v1/vehicles lists them")

    # --- audit log ----------------------------------------------------------------------------------------------
    def append_audit(self, actor: str, action: str, target: str, details: dict[str, Any], now: float) -> None:
        with self._write() as c:
            self._audit(c, actor, action, target, details, now)

    @staticmethod
    def _audit(c: Connection, actor: str, action: str, target: str, details: dict[str, Any], now: float) -> None:
        c.execute(insert(audit_log).values(at=now, actor=actor, action=action, target=target, details=details))

    def audit_log(self, *, limit: int = 100, before: int | None = None) -> list[AuditRecord]:
        query = select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit)
        if before is not None:
            query = query.where(audit_log.c.seq < before)
        with self._read() as c:
            return [AuditRecord(seq=r.seq, at=r.at, actor=r.actor, action=r.action, target=r.target,
                                details=dict(r.details or {})) for r in c.execute(query)]
