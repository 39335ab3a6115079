"""Operator routes: the fleet overview, cars (list, revoke), the usage ledger, and creating a tenant."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, Request

from ...errors import NotFound
from ...protocol import (
    API_PREFIX,
    FleetOverview,
    LedgerEntry,
    TenantCreate,
    TenantCreated,
    VehicleReputation,
    VehicleSummary,
)
from ..auth import hash_token, new_token
from ..observe import note_principal
from ..security import accepts

if TYPE_CHECKING:
    from ..app import Coordinator

__all__ = ["operator_routes"]


def operator_routes(app: FastAPI, coord: Coordinator) -> None:
    store = coord.store

    @accepts("operator")
    def operator(request: Request) -> None:
        coord.auth.operator(request.headers.get("authorization"))
        note_principal(request.scope, "operator")

    def summaries() -> list[VehicleSummary]:
        coord.states.flush()  # what the cars said up to now, not up to the last sweep
        in_flight: dict[str, int] = {}
        for lease in store.active_leases():
            in_flight[lease.vehicle_id] = in_flight.get(lease.vehicle_id, 0) + 1
        now = coord.clock.now()
        out = []
        for v in store.list_vehicles():
            state = v.state or {}
            online = v.last_seen is not None and now - v.last_seen <= coord.config.online_window_s
            out.append(VehicleSummary(
                vehicle_id=v.vehicle_id, name=v.name, hardware=v.hardware, revoked=v.revoked, last_seen=v.last_seen,
                drive=state.get("drive"), soc=state.get("soc"), network=state.get("network"),
                eligible=bool(v.eligible and online and not v.revoked), active_leases=in_flight.get(v.vehicle_id, 0),
            ))
        return out

    @app.get(f"{API_PREFIX}/fleet", response_model=FleetOverview, tags=["operator"], dependencies=[Depends(operator)])
    def fleet() -> FleetOverview:
        vehicles = summaries()
        now = coord.clock.now()
        by_state: dict[str, int] = {}
        online = 0
        for v in vehicles:
            if v.last_seen is not None and now - v.last_seen <= coord.config.online_window_s:
                online += 1
                by_state[v.drive or "unknown"] = by_state.get(v.drive or "unknown", 0) + 1
            else:
                by_state["offline"] = by_state.get("offline", 0) + 1
        counts = store.counts()
        return FleetOverview(vehicles=len(vehicles), by_state=by_state, eligible_now=sum(v.eligible for v in vehicles),
                             online=online, leases_in_flight=counts["leases_in_flight"], jobs=counts["jobs"],
                             units_pending=counts["units_pending"], long_polling=coord.scheduler.polls.sleeping())

    @app.get(f"{API_PREFIX}/vehicles", response_model=list[VehicleSummary], tags=["operator"],
             dependencies=[Depends(operator)])
    def vehicles() -> list[VehicleSummary]:
        return summaries()

    def reputation(vehicle_id: str) -> VehicleReputation:
        vehicle = store.get_vehicle(vehicle_id)
        if vehicle is None:
            raise NotFound(f"vehicle {vehicle_id!r} does not exist; GET /v1/vehicles lists them")
        rep, policy = store.get_reputation(vehicle_id), coord.config.trust
        return VehicleReputation(vehicle_id=vehicle_id, agreed=rep.agreed, streak=rep.streak, faults=rep.faults,
                                 implausible=rep.implausible, trusted=policy.trusted(rep),
                                 check_rate=policy.check_rate(rep), suspended=vehicle.suspended,
                                 suspended_reason=vehicle.suspended_reason)

    @app.get(f"{API_PREFIX}/vehicles/{{vehicle_id}}/reputation", response_model=VehicleReputation,
             tags=["operator"], dependencies=[Depends(operator)])
    def vehicle_reputation(vehicle_id: str) -> VehicleReputation:
        """How far the coordinator trusts a car's results: checks passed and failed, its spot-check rate, and
        whether it was suspended for wrong results."""
        return reputation(vehicle_id)

    @app.get(f"{API_PREFIX}/reputation", response_model=list[VehicleReputation], tags=["operator"],
             dependencies=[Depends(operator)])
    def reputations() -> list[VehicleReputation]:
        """Every car whose results were ever checked, or that was suspended."""
        ids = {r.vehicle_id for r in store.list_reputations()}
        ids |= {v.vehicle_id for v in store.list_vehicles() if v.suspended}
        return [reputation(vehicle_id) for vehicle_id in sorted(ids)]

    @app.post(f"{API_PREFIX}/vehicles/{{vehicle_id}}/revoke", tags=["operator"], dependencies=[Depends(operator)])
    def revoke(vehicle_id: str) -> dict:
        if not store.revoke_vehicle(vehicle_id):
            raise NotFound(f"vehicle {vehicle_id!r} does not exist; GET /v1/vehicles lists them")
        coord.auth.forget_vehicle(vehicle_id)
        store.append_audit("operator", "vehicle.revoke", vehicle_id, {}, coord.clock.now())
        coord.scheduler.release_vehicle(vehicle_id)
        coord.training.release_vehicle(vehicle_id)
        return {"vehicle_id": vehicle_id, "revoked": True}

    @app.get(f"{API_PREFIX}/ledger", response_model=list[LedgerEntry], tags=["operator"],
             dependencies=[Depends(operator)])
    def ledger() -> list[LedgerEntry]:
        return [LedgerEntry(**row) for row in store.ledger_totals()]

    @app.post(f"{API_PREFIX}/tenants", status_code=201, response_model=TenantCreated, tags=["operator"],
              dependencies=[Depends(operator)])
    def add_tenant(req: TenantCreate) -> TenantCreated:
        token = new_token("fgt")
        store.add_tenant(req.name, hash_token(token), coord.clock.now())
        store.append_audit("operator", "tenant.add", req.name, {}, coord.clock.now())
        return TenantCreated(tenant=req.name, token=token)
