"""The store's billing half: owners and the cars they lend, the operator's price lists, and a month's usage rows
joined to what prices them. Kept apart from :mod:`.base` (one idea per module); :class:`.base.Store` has both."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ...billing.lines import UsageLine

__all__ = ["BillingState", "OwnerRecord", "PriceListRecord", "RefusalRecord"]


@dataclass(slots=True)
class OwnerRecord:
    name: str
    created_at: float
    tariff: str
    """Electricity price per kWh, a decimal string in the price list's currency."""
    cars: list[str] = field(default_factory=list)


@dataclass(slots=True)
class PriceListRecord:
    version: int
    currency: str
    operator_fee: str
    prices: dict[str, Any]
    set_at: float


@dataclass(slots=True)
class RefusalRecord:
    """A training update the strategy refused: what the car spent on it, and why it is not paid."""

    lease_id: str
    vehicle_id: str
    job_id: str
    at: float
    reason: str
    compute_s: float = 0.0
    steps: int = 0
    examples: int = 0


class BillingState(ABC):
    @abstractmethod
    def add_owner(self, name: str, token_hash: str, tariff: str, now: float) -> None:
        """Raises Conflict if the owner exists."""

    @abstractmethod
    def owner_by_token_hash(self, token_hash: str) -> str | None: ...

    @abstractmethod
    def get_owner(self, name: str) -> OwnerRecord | None:
        """The owner with their cars, by vehicle id."""

    @abstractmethod
    def list_owners(self) -> list[OwnerRecord]:
        """Every owner with their cars, by name."""

    @abstractmethod
    def set_owner_tariff(self, name: str, tariff: str) -> bool:
        """False (and no change) if there is no such owner."""

    @abstractmethod
    def owner_policy(self, name: str) -> dict[str, Any] | None:
        """The policy the owner set for their cars (OwnerPolicy's JSON); None if none was set (or no owner)."""

    @abstractmethod
    def set_owner_policy(self, name: str, policy: dict[str, Any]) -> bool:
        """Store the owner's policy (already validated); False (and no change) if there is no such owner."""

    @abstractmethod
    def vehicle_policy(self, vehicle_id: str) -> dict[str, Any] | None:
        """The policy of the car's owner, for its heartbeat; None when the car has no owner or they set none."""

    @abstractmethod
    def attach_car(self, owner: str, vehicle_id: str) -> None:
        """Make ``owner`` the owner of an enrolled car (again: no change). NotFound for an unknown owner or car;
        Conflict, changing nothing, if another owner has it."""

    @abstractmethod
    def add_price_list(self, currency: str, operator_fee: str, prices: dict[str, Any], set_at: float) -> int:
        """Store a price list in force from ``set_at``; returns its version (one more than the last)."""

    @abstractmethod
    def price_lists(self) -> list[PriceListRecord]:
        """Every price list set, oldest first."""

    @abstractmethod
    def usage_lines(self, start: float, end: float, *, owner: str | None = None, tenant: str | None = None,
                    ordered: bool = True) -> list[UsageLine]:
        """Usage rows closed in ``[start, end)`` with their car's hardware and owner and their job's tenant: of
        the cars of ``owner`` only, or of the jobs of ``tenant`` only, when given; ordered by time, then lease
        (``ordered=False``: in the order the database finds them, for sums that do not depend on it: sorting a
        month of the whole fleet's rows is most of the payout export's time). Refused updates (see
        :meth:`record_refusal`) come last, as rows rejected with their reason."""

    @abstractmethod
    def record_refusal(self, refusal: RefusalRecord) -> None:
        """Keep a refused update (the latest refusal of a lease stands). :meth:`usage_lines` returns it as a
        rejected row while its lease has no usage row of its own (a corrected report later is paid as usual)."""

    @abstractmethod
    def reject_usage(self, unit_ids: Sequence[str], reason: str) -> int:
        """Mark the usage rows of these units' completed leases rejected (their results lost the quorum), unless
        marked before; returns how many rows changed."""
