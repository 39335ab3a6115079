"""Operator routes for identity: issue, list and revoke enrollment tokens; suspend and unsuspend a car; read the
audit log."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, Query, Request

from ...errors import InvalidInput, NotFound
from ...identity.protocol import (
    AuditEntry,
    EnrollmentTokenIssue,
    EnrollmentTokenIssued,
    EnrollmentTokenView,
    SuspendRequest,
    VehicleSuspension,
)
from ...protocol import API_PREFIX
from ..auth import hash_token, new_token
from ..observe import note_principal
from ..security import accepts
from ..store.identity_base import EnrollmentTokenRecord

if TYPE_CHECKING:
    from ..app import Coordinator

__all__ = ["identity_routes", "token_view"]

ENROLLMENT_TOKEN_PREFIX = "fgen"
"""Issued enrollment tokens read ``fgen_<secret>`` (the bootstrap one ``fge_``)."""


def token_view(t: EnrollmentTokenRecord, now: float) -> EnrollmentTokenView:
    if t.revoked_at is not None:
        state = "revoked"
    elif t.expires_at is not None and t.expires_at <= now:
        state = "expired"
    elif t.uses_left == 0:
        state = "used_up"
    else:
        state = "live"
    return EnrollmentTokenView(token_id=t.token_id, label=t.label, created_at=t.created_at, created_by=t.created_by,
                               uses=t.uses, used=t.used, uses_left=t.uses_left, expires_at=t.expires_at,
                               revoked_at=t.revoked_at, state=state)  # type: ignore[arg-type]


def identity_routes(app: FastAPI, coord: Coordinator) -> None:
    store = coord.store

    @accepts("operator")
    def operator(request: Request) -> None:
        coord.auth.operator(request.headers.get("authorization"))
        note_principal(request.scope, "operator")

    @app.post(f"{API_PREFIX}/enrollment-tokens", status_code=201, response_model=EnrollmentTokenIssued,
              tags=["operator"], dependencies=[Depends(operator)])
    def issue(req: EnrollmentTokenIssue) -> EnrollmentTokenIssued:
        """Issue an enrollment token: single-use by default, ``uses: null`` for any number until it expires. The
        token is in this answer only; the coordinator keeps its hash."""
        now = coord.clock.now()
        expires_at = req.expires_at if req.expires_in_s is None else now + req.expires_in_s
        if expires_at is not None and expires_at <= now:
            raise InvalidInput(f"expires_at {expires_at} is not in the future (the coordinator's clock reads "
                               f"{now:.0f}); give a later time or expires_in_s")
        token = new_token(ENROLLMENT_TOKEN_PREFIX)
        record = EnrollmentTokenRecord(token_id="et-" + secrets.token_hex(6), label=req.label, created_at=now,
                                       created_by="operator", uses=req.uses, expires_at=expires_at)
        store.add_enrollment_token(record, hash_token(token))
        return EnrollmentTokenIssued(token=token, **token_view(record, now).model_dump())

    @app.get(f"{API_PREFIX}/enrollment-tokens", response_model=list[EnrollmentTokenView], tags=["operator"],
             dependencies=[Depends(operator)])
    def tokens() -> list[EnrollmentTokenView]:
        """Every issued token with its uses left, expiry and state; never the tokens themselves."""
        now = coord.clock.now()
        return [token_view(t, now) for t in store.list_enrollment_tokens()]

    @app.delete(f"{API_PREFIX}/enrollment-tokens/{{token_id}}", response_model=EnrollmentTokenView,
                tags=["operator"], dependencies=[Depends(operator)])
    def revoke(token_id: str) -> EnrollmentTokenView:
        """The token stops working at once; cars it enrolled are not affected (suspend or revoke them)."""
        now = coord.clock.now()
        record = store.revoke_enrollment_token(token_id, "operator", now)
        if record is None:
            raise NotFound(f"enrollment token {token_id!r} does not exist; GET /v1/enrollment-tokens lists them")
        return token_view(record, now)

    @app.post(f"{API_PREFIX}/vehicles/{{vehicle_id}}/suspend", response_model=VehicleSuspension, tags=["operator"],
              dependencies=[Depends(operator)])
    def suspend(vehicle_id: str, req: SuspendRequest) -> VehicleSuspension:
        """The car is refused every request (403) and lease from now on, until unsuspended; its leases are handed
        to other cars at once."""
        changed = store.suspend_vehicle(vehicle_id, req.reason, "operator", now=coord.clock.now())
        coord.auth.forget_vehicle(vehicle_id)
        coord.scheduler.release_vehicle(vehicle_id)
        coord.training.release_vehicle(vehicle_id)
        return VehicleSuspension(vehicle_id=vehicle_id, suspended=True, changed=changed, reason=req.reason)

    @app.post(f"{API_PREFIX}/vehicles/{{vehicle_id}}/unsuspend", response_model=VehicleSuspension,
              tags=["operator"], dependencies=[Depends(operator)])
    def unsuspend(vehicle_id: str) -> VehicleSuspension:
        changed = store.unsuspend_vehicle(vehicle_id, "operator", now=coord.clock.now())
        coord.auth.forget_vehicle(vehicle_id)
        return VehicleSuspension(vehicle_id=vehicle_id, suspended=False, changed=changed)

    @app.get(f"{API_PREFIX}/audit", response_model=list[AuditEntry], tags=["operator"],
             dependencies=[Depends(operator)])
    def audit(limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              before: Annotated[int | None, Query(ge=1, description="only entries older than this seq")] = None,
              ) -> list[AuditEntry]:
        """The audit log, newest first: operator actions and automatic suspensions. Append-only."""
        return [AuditEntry(seq=r.seq, at=r.at, actor=r.actor, action=r.action, target=r.target, details=r.details)
                for r in store.audit_log(limit=limit, before=before)]
