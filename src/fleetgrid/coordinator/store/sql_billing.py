"""The SQL store's billing rows: owners and their cars, price lists, a month's usage rows joined to what prices
them, and marking rows rejected (mixed into :class:`~fleetgrid.coordinator.store.sql.SQLStore`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import and_, case, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ...billing.lines import UsageLine
from ...errors import Conflict, NotFound
from .billing_base import OwnerRecord, PriceListRecord, RefusalRecord
from .schema import jobs, leases, ledger, owner_cars, owners, price_lists, refused_updates, vehicles

__all__ = ["BillingRows"]


class BillingRows:
    _write: Callable[[], AbstractContextManager[Connection]]
    _read: Callable[[], AbstractContextManager[Connection]]

    # --- owners -------------------------------------------------------------------------------------------------
    def add_owner(self, name: str, token_hash: str, tariff: str, now: float) -> None:
        try:
            with self._write() as c:
                if c.execute(select(owners.c.name).where(owners.c.name == name)).first() is not None:
                    raise Conflict(f"owner {name!r} already exists; choose another name")
                c.execute(insert(owners).values(name=name, token_hash=token_hash, tariff=tariff, created_at=now))
        except IntegrityError as exc:  # a racing add of the same name
            raise Conflict(f"owner {name!r} already exists; choose another name") from exc

    def owner_by_token_hash(self, token_hash: str) -> str | None:
        with self._read() as c:
            return c.execute(select(owners.c.name).where(owners.c.token_hash == token_hash)).scalar()

    def get_owner(self, name: str) -> OwnerRecord | None:
        with self._read() as c:
            row = c.execute(select(owners).where(owners.c.name == name)).first()
            if row is None:
                return None
            cars = c.execute(select(owner_cars.c.vehicle_id).where(owner_cars.c.owner == name)
                             .order_by(owner_cars.c.vehicle_id)).scalars()
            return OwnerRecord(name=row.name, created_at=row.created_at, tariff=row.tariff, cars=list(cars))

    def list_owners(self) -> list[OwnerRecord]:
        with self._read() as c:
            found = {r.name: OwnerRecord(name=r.name, created_at=r.created_at, tariff=r.tariff)
                     for r in c.execute(select(owners).order_by(owners.c.name))}
            for vid, owner in c.execute(select(owner_cars.c.vehicle_id, owner_cars.c.owner)
                                        .order_by(owner_cars.c.vehicle_id)):
                found[owner].cars.append(vid)
        return list(found.values())

    def set_owner_tariff(self, name: str, tariff: str) -> bool:
        with self._write() as c:
            return c.execute(update(owners).where(owners.c.name == name).values(tariff=tariff)).rowcount > 0

    def owner_policy(self, name: str) -> dict[str, Any] | None:
        with self._read() as c:
            return c.execute(select(owners.c.policy).where(owners.c.name == name)).scalar()

    def set_owner_policy(self, name: str, policy: dict[str, Any]) -> bool:
        with self._write() as c:
            return c.execute(update(owners).where(owners.c.name == name).values(policy=policy)).rowcount > 0

    def vehicle_policy(self, vehicle_id: str) -> dict[str, Any] | None:
        with self._read() as c:
            return c.execute(select(owners.c.policy)
                             .select_from(owner_cars.join(owners, owners.c.name == owner_cars.c.owner))
                             .where(owner_cars.c.vehicle_id == vehicle_id)).scalar()

    def attach_car(self, owner: str, vehicle_id: str) -> None:
        try:
            with self._write() as c:
                if c.execute(select(owners.c.name).where(owners.c.name == owner)).first() is None:
                    raise NotFound(f"owner {owner!r} does not exist; GET /v1/owners lists them")
                if c.execute(select(vehicles.c.vehicle_id).where(vehicles.c.vehicle_id == vehicle_id)).first() is None:
                    raise NotFound(f"vehicle {vehicle_id!r} does not exist; GET /v1/vehicles lists them")
                held = c.execute(select(owner_cars.c.owner).where(owner_cars.c.vehicle_id == vehicle_id)).scalar()
                if held == owner:
                    return
                if held is not None:
                    raise Conflict(f"vehicle {vehicle_id!r} belongs to owner {held!r}; a car has one owner")
                c.execute(insert(owner_cars).values(vehicle_id=vehicle_id, owner=owner))
        except IntegrityError as exc:  # another transaction attached it first
            raise Conflict(f"vehicle {vehicle_id!r} was attached to an owner meanwhile; a car has one owner") from exc

    # --- price lists --------------------------------------------------------------------------------------------
    def add_price_list(self, currency: str, operator_fee: str, prices: dict[str, Any], set_at: float) -> int:
        with self._write() as c:
            last = c.execute(select(func.max(price_lists.c.version))).scalar() or 0
            c.execute(insert(price_lists).values(version=last + 1, currency=currency, operator_fee=operator_fee,
                                                 prices=prices, set_at=set_at))
        return int(last + 1)

    def price_lists(self) -> list[PriceListRecord]:
        with self._read() as c:
            return [PriceListRecord(version=r.version, currency=r.currency, operator_fee=r.operator_fee,
                                    prices=r.prices, set_at=r.set_at)
                    for r in c.execute(select(price_lists).order_by(price_lists.c.version))]

    # --- usage --------------------------------------------------------------------------------------------------
    def usage_lines(self, start: float, end: float, *, owner: str | None = None, tenant: str | None = None,
                    ordered: bool = True) -> list[UsageLine]:
        # The columns in UsageLine's field order: each row becomes a line positionally (by name, reading a
        # month of rows cost more than the query).
        held = func.coalesce(leases.c.closed_at, ledger.c.at) - leases.c.issued_at
        query = (
            select(ledger.c.lease_id, ledger.c.vehicle_id, vehicles.c.hardware, ledger.c.job_id, jobs.c.tenant,
                   func.coalesce(ledger.c.workload, jobs.c.kind, ""), ledger.c.at, ledger.c.compute_s,
                   case((held > 0, held), else_=0.0), ledger.c["items"], ledger.c.examples, ledger.c.steps,
                   ledger.c.tokens, ledger.c.cellular_bytes, ledger.c.wifi_bytes, ledger.c.accepted,
                   ledger.c.rejected, ledger.c.plugged_in, owner_cars.c.owner, jobs.c.name)
            .select_from(ledger.join(vehicles, vehicles.c.vehicle_id == ledger.c.vehicle_id)
                         .join(jobs, jobs.c.job_id == ledger.c.job_id)
                         .outerjoin(owner_cars, owner_cars.c.vehicle_id == ledger.c.vehicle_id)
                         .outerjoin(leases, leases.c.lease_id == ledger.c.lease_id))
            .where(ledger.c.at >= start, ledger.c.at < end)
        )
        if ordered:
            query = query.order_by(ledger.c.at, ledger.c.lease_id)
        if owner is not None:
            query = query.where(owner_cars.c.owner == owner)
        if tenant is not None:
            query = query.where(jobs.c.tenant == tenant)
        with self._read() as c:
            lines = [UsageLine(*row) for row in c.execute(query)]
            refused = c.execute(self._refusals_query(start, end, owner, tenant)).all()
        return lines + [UsageLine(lease_id=r.lease_id, vehicle_id=r.vehicle_id, hardware=r.hardware, job_id=r.job_id,
                                  tenant=r.tenant, workload=r.kind, at=r.at, accelerator_s=r.compute_s,
                                  steps=r.steps, examples=r.examples, rejected=f"training update refused: {r.reason}",
                                  owner=r.owner, job_name=r.name)
                        for r in refused]

    @staticmethod
    def _refusals_query(start: float, end: float, owner: str | None, tenant: str | None) -> Any:
        metered = select(ledger.c.lease_id).where(ledger.c.lease_id == refused_updates.c.lease_id).exists()
        query = (
            select(refused_updates, vehicles.c.hardware, jobs.c.tenant, jobs.c.kind, jobs.c.name, owner_cars.c.owner)
            .select_from(refused_updates.join(vehicles, vehicles.c.vehicle_id == refused_updates.c.vehicle_id)
                         .join(jobs, jobs.c.job_id == refused_updates.c.job_id)
                         .outerjoin(owner_cars, owner_cars.c.vehicle_id == refused_updates.c.vehicle_id))
            .where(refused_updates.c.at >= start, refused_updates.c.at < end, ~metered)
            .order_by(refused_updates.c.at, refused_updates.c.lease_id)
        )
        if owner is not None:
            query = query.where(owner_cars.c.owner == owner)
        if tenant is not None:
            query = query.where(jobs.c.tenant == tenant)
        return query

    def record_refusal(self, refusal: RefusalRecord) -> None:
        values = {k: getattr(refusal, k) for k in RefusalRecord.__slots__}
        with self._write() as c:
            if not c.execute(update(refused_updates).where(refused_updates.c.lease_id == refusal.lease_id)
                             .values(**values)).rowcount:
                c.execute(insert(refused_updates).values(**values))

    def reject_usage(self, unit_ids: Sequence[str], reason: str) -> int:
        if not unit_ids:
            return 0
        completed = (select(leases.c.lease_id)
                     .where(leases.c.unit_id.in_(list(unit_ids)), leases.c.state == "completed"))
        with self._write() as c:
            return c.execute(
                update(ledger).where(and_(ledger.c.lease_id.in_(completed), ledger.c.rejected.is_(None)))
                .values(rejected=reason)
            ).rowcount


