"""Billing routes: the operator's price list, owners and their cars, statements for owners, bills for tenants, and
the payout export. Owners see only their own cars and statements; a car of another owner is not found."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, Query, Request, Response

from ...billing import (
    DEFAULT_TARIFF,
    PriceList,
    check_month,
    check_tariff,
    month_bounds,
    owner_statement,
    payout_csv,
    payout_statements,
    price_lines,
    tenant_bill,
)
from ...billing.protocol import (
    CarAttach,
    OwnerCarView,
    OwnerCreate,
    OwnerCreated,
    OwnerStatementView,
    OwnerSummary,
    PriceListBody,
    PriceListView,
    TariffSet,
    TenantBillView,
)
from ...billing.statements import OwnerStatement
from ...errors import AuthError, Conflict, NotFound
from ...protocol import API_PREFIX
from ..auth import OWNER_TOKEN_PREFIX, hash_token, new_token
from ..security import accepts
from ..store.billing_base import OwnerRecord

if TYPE_CHECKING:
    from ..app import Coordinator

__all__ = ["billing_routes"]

DEFAULT_CURRENCY = "USD"
"""A statement's currency before any price list is set (the default tariff's)."""

Month = Query(default=None, description="YYYY-MM (UTC); default: the current month",
              pattern=r"^\d{4}-\d{2}$")


def billing_routes(app: FastAPI, coord: Coordinator) -> None:
    store = coord.store

    @accepts("operator")
    def operator(request: Request) -> None:
        coord.auth.operator(request.headers.get("authorization"))

    @accepts("owner")
    def owner(request: Request) -> str:
        return coord.auth.owner(request.headers.get("authorization"))

    @accepts("tenant")
    def tenant(request: Request) -> str:
        return coord.auth.tenant(request.headers.get("authorization"))

    @accepts("operator", "tenant")
    def operator_or_tenant(request: Request) -> None:
        try:
            coord.auth.operator(request.headers.get("authorization"))
        except AuthError:
            coord.auth.tenant(request.headers.get("authorization"))

    def price_lists() -> list[PriceList]:
        return [PriceList.parse(r.currency, r.operator_fee, r.prices, set_at=r.set_at, version=r.version)
                for r in store.price_lists()]

    def the_month(month: str | None) -> str:
        if month is None:
            return time.strftime("%Y-%m", time.gmtime(coord.clock.now()))
        return check_month(month)

    def statement(record: OwnerRecord, month: str, lists: list[PriceList]) -> OwnerStatement:
        start, end = month_bounds(month)
        lines = store.usage_lines(start, end, owner=record.name)
        return owner_statement(record.name, month, record.cars, price_lines(lines, lists),
                               currency=lists[-1].currency if lists else DEFAULT_CURRENCY,
                               tariff_per_kwh=check_tariff(record.tariff))

    def known_owner(name: str) -> OwnerRecord:
        record = store.get_owner(name)
        if record is None:
            raise NotFound(f"owner {name!r} does not exist; GET /v1/owners lists them")
        return record

    def summary(record: OwnerRecord) -> OwnerSummary:
        return OwnerSummary(name=record.name, created_at=record.created_at, tariff=record.tariff, cars=record.cars)

    # --- the operator -------------------------------------------------------------------------------------------
    @app.put(f"{API_PREFIX}/prices", response_model=PriceListView, tags=["billing"],
             dependencies=[Depends(operator)])
    def set_prices(req: PriceListBody) -> PriceListView:
        """A new price list, in force from now; rows closed before keep the prices they closed under."""
        now = coord.clock.now()
        plist = PriceList.parse(req.currency, req.operator_fee, req.prices, set_at=now)
        current = price_lists()
        if current and current[-1].currency != plist.currency:
            raise Conflict(f"currency {plist.currency} differs from the price list's {current[-1].currency}; "
                           "statements add amounts across price lists, so the currency cannot change")
        body = plist.to_json()
        version = store.add_price_list(plist.currency, body["operator_fee"], body["prices"], now)
        store.append_audit("operator", "prices.set", f"price list {version}", {"currency": plist.currency}, now)
        return PriceListView(version=version, set_at=now, **body)

    @app.get(f"{API_PREFIX}/prices", response_model=PriceListView, tags=["billing"],
             dependencies=[Depends(operator_or_tenant)])
    def get_prices() -> PriceListView:
        lists = price_lists()
        if not lists:
            raise NotFound("no price list has been set; the operator sets one with PUT /v1/prices")
        return PriceListView.of(lists[-1])

    @app.post(f"{API_PREFIX}/owners", status_code=201, response_model=OwnerCreated, tags=["billing"],
              dependencies=[Depends(operator)])
    def add_owner(req: OwnerCreate) -> OwnerCreated:
        tariff = check_tariff(req.tariff) if req.tariff is not None else DEFAULT_TARIFF
        token = new_token(OWNER_TOKEN_PREFIX)
        store.add_owner(req.name, hash_token(token), str(tariff), coord.clock.now())
        return OwnerCreated(owner=req.name, token=token)

    @app.get(f"{API_PREFIX}/owners", response_model=list[OwnerSummary], tags=["billing"],
             dependencies=[Depends(operator)])
    def list_owners() -> list[OwnerSummary]:
        return [summary(o) for o in store.list_owners()]

    @app.post(f"{API_PREFIX}/owners/{{name}}/cars", response_model=OwnerSummary, tags=["billing"],
              dependencies=[Depends(operator)])
    def attach_car(name: str, req: CarAttach) -> OwnerSummary:
        store.attach_car(name, req.vehicle_id)
        return summary(known_owner(name))

    @app.put(f"{API_PREFIX}/owners/{{name}}/tariff", response_model=OwnerSummary, tags=["billing"],
             dependencies=[Depends(operator)])
    def set_owner_tariff(name: str, req: TariffSet) -> OwnerSummary:
        tariff = check_tariff(req.tariff)
        known_owner(name)
        store.set_owner_tariff(name, str(tariff))
        return summary(known_owner(name))

    @app.get(f"{API_PREFIX}/owners/{{name}}/statement", response_model=OwnerStatementView, tags=["billing"],
             dependencies=[Depends(operator)])
    def owner_statement_for_operator(name: str, month: str | None = Month) -> OwnerStatementView:
        return OwnerStatementView.of(statement(known_owner(name), the_month(month), price_lists()))

    @app.get(f"{API_PREFIX}/payouts", tags=["billing"], dependencies=[Depends(operator)],
             response_class=Response, responses={200: {"content": {"text/csv": {}}}})
    def payouts(month: str | None = Month) -> Response:
        """Every owner's earnings for the month as CSV, one row per owner, for a payment provider."""
        chosen = the_month(month)
        lists = price_lists()
        start, end = month_bounds(chosen)
        priced = price_lines(store.usage_lines(start, end, ordered=False), lists)
        owners = [(o.name, o.cars, check_tariff(o.tariff)) for o in store.list_owners()]
        rows = payout_statements(chosen, owners, priced, currency=lists[-1].currency if lists else DEFAULT_CURRENCY)
        return Response(payout_csv(rows), media_type="text/csv",
                        headers={"content-disposition": f'attachment; filename="payouts-{chosen}.csv"'})

    # --- owners -------------------------------------------------------------------------------------------------
    @app.get(f"{API_PREFIX}/owner", response_model=OwnerSummary, tags=["owner"])
    def me(name: str = Depends(owner)) -> OwnerSummary:
        return summary(known_owner(name))

    @app.put(f"{API_PREFIX}/owner/tariff", response_model=OwnerSummary, tags=["owner"])
    def set_my_tariff(req: TariffSet, name: str = Depends(owner)) -> OwnerSummary:
        store.set_owner_tariff(name, str(check_tariff(req.tariff)))
        return summary(known_owner(name))

    def car_view(vehicle_id: str) -> OwnerCarView:
        v = store.get_vehicle(vehicle_id)
        assert v is not None  # attached cars are enrolled ones (foreign key)
        state = v.state or {}
        return OwnerCarView(vehicle_id=v.vehicle_id, name=v.name, hardware=v.hardware, revoked=v.revoked,
                            last_seen=v.last_seen, drive=state.get("drive"), plugged_in=state.get("plugged_in"))

    @app.get(f"{API_PREFIX}/owner/cars", response_model=list[OwnerCarView], tags=["owner"])
    def my_cars(name: str = Depends(owner)) -> list[OwnerCarView]:
        coord.states.flush()
        return [car_view(v) for v in known_owner(name).cars]

    @app.get(f"{API_PREFIX}/owner/cars/{{vehicle_id}}", response_model=OwnerCarView, tags=["owner"])
    def my_car(vehicle_id: str, name: str = Depends(owner)) -> OwnerCarView:
        if vehicle_id not in known_owner(name).cars:  # another owner's car, or none: the same answer
            raise NotFound(f"vehicle {vehicle_id!r} is not one of your cars; GET /v1/owner/cars lists them")
        coord.states.flush()
        return car_view(vehicle_id)

    @app.get(f"{API_PREFIX}/owner/statement", response_model=OwnerStatementView, tags=["owner"])
    def my_statement(month: str | None = Month, name: str = Depends(owner)) -> OwnerStatementView:
        return OwnerStatementView.of(statement(known_owner(name), the_month(month), price_lists()))

    # --- tenants ------------------------------------------------------------------------------------------------
    @app.get(f"{API_PREFIX}/bill", response_model=TenantBillView, tags=["tenant"])
    def bill(month: str | None = Month, name: str = Depends(tenant)) -> TenantBillView:
        chosen = the_month(month)
        lists = price_lists()
        start, end = month_bounds(chosen)
        priced = price_lines(store.usage_lines(start, end, tenant=name), lists)
        return TenantBillView.of(tenant_bill(name, chosen, priced,
                                             currency=lists[-1].currency if lists else DEFAULT_CURRENCY))
