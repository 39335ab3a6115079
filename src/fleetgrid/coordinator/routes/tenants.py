"""Operator routes over tenants besides creating one (``POST /v1/tenants``, in app.py): list them, revoke one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, Request

from ...errors import NotFound
from ...protocol import API_PREFIX, TenantSummary
from ..observe import note_principal
from ..security import accepts

if TYPE_CHECKING:
    from ..app import Coordinator
    from ..store import Store

__all__ = ["tenant_admin_routes"]


def tenant_admin_routes(app: FastAPI, coord: Coordinator) -> None:
    store = coord.store

    @accepts("operator")
    def operator(request: Request) -> None:
        coord.auth.operator(request.headers.get("authorization"))
        note_principal(request.scope, "operator")

    @app.get(f"{API_PREFIX}/tenants", response_model=list[TenantSummary], tags=["operator"],
             dependencies=[Depends(operator)])
    def tenants() -> list[TenantSummary]:
        return [TenantSummary(name=t.name, created_at=t.created_at, revoked=t.revoked) for t in store.list_tenants()]

    @app.post(f"{API_PREFIX}/tenants/{{name}}/revoke", response_model=TenantSummary, tags=["operator"],
              dependencies=[Depends(operator)])
    def revoke(name: str) -> TenantSummary:
        """The tenant's token stops working at once; its jobs are left as they are."""
        token_hash = store.revoke_tenant(name)
        if token_hash is None:
            raise NotFound(f"tenant {name!r} does not exist; GET /v1/tenants (fleetgrid tenant list) lists them")
        coord.auth.forget_tenant(token_hash)
        store.append_audit("operator", "tenant.revoke", name, {}, coord.clock.now())
        if coord.credentials.tenants.pop(name, None) is not None:
            coord.credentials.save(coord.config.credentials_path)  # else the next start would restore its token
        return _summary(store, name)


def _summary(store: Store, name: str) -> TenantSummary:
    record = next(t for t in store.list_tenants() if t.name == name)
    return TenantSummary(name=record.name, created_at=record.created_at, revoked=record.revoked)
