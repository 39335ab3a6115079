"""Billing on the wire: price lists, owners and their cars, statements, bills. Amounts are integers of micro-units
(``*_micro``, 10**-6 of the currency's major unit); prices and tariffs are decimal strings. Never floats."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .prices import PriceList
from .statements import OwnerStatement, TenantBill

__all__ = ["CarAttach", "JobChargeLine", "OwnerCarView", "OwnerCreate", "OwnerCreated", "OwnerStatementView",
           "OwnerSummary", "PriceListBody", "PriceListView", "TariffSet", "TenantBillView", "UnpaidLine",
           "WorkloadLine"]

_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PriceListBody(_Wire):
    currency: str = Field(description="ISO 4217 code, e.g. USD", examples=["USD"])
    operator_fee: str = Field(description="share of each charge the operator keeps, a decimal in [0, 1)",
                              examples=["0.15"])
    prices: dict[str, dict[str, str]] = Field(
        description="workload kind -> {unit: decimal price}; units: per_accelerator_s (of an AI4-class "
                    "computer), per_item, per_1k_tokens, per_step, per_example",
        examples=[{"inference": {"per_item": "0.00001"}, "train": {"per_accelerator_s": "0.0002"}}])


class PriceListView(_Wire):
    version: int
    currency: str
    operator_fee: str
    prices: dict[str, dict[str, str]]
    set_at: float

    @classmethod
    def of(cls, p: PriceList) -> PriceListView:
        data = p.to_json()
        return cls(version=p.version, set_at=p.set_at, **data)


class OwnerCreate(_Wire):
    name: str = Field(pattern=_NAME)
    tariff: str | None = Field(default=None, description="electricity price per kWh in the price list's currency "
                                                          "(default: 0.1747, the US residential average)")


class OwnerCreated(_Wire):
    owner: str
    token: str


class OwnerSummary(_Wire):
    name: str
    created_at: float
    tariff: str
    cars: list[str]


class CarAttach(_Wire):
    vehicle_id: str = Field(min_length=1, max_length=64)


class TariffSet(_Wire):
    tariff: str = Field(description="electricity price per kWh, a decimal string, e.g. 0.1747")


class OwnerCarView(_Wire):
    vehicle_id: str
    name: str
    hardware: str
    revoked: bool
    last_seen: float | None
    drive: str | None
    plugged_in: bool | None


class WorkloadLine(_Wire):
    workload: str
    leases: int
    items: int
    examples: int
    steps: int
    tokens: int
    accelerator_s: float
    charge_micro: int
    fee_micro: int
    credit_micro: int


class UnpaidLine(_Wire):
    reason: str
    leases: int
    items: int
    examples: int
    accelerator_s: float


class OwnerStatementView(_Wire):
    owner: str
    month: str
    currency: str
    tariff_per_kwh: str
    cars: list[str]
    hours_lent: float
    energy_wh: float
    energy_cost_micro: int
    charges_micro: int = Field(description="what tenants paid for this owner's work")
    fee_micro: int = Field(description="the operator's fee on it")
    gross_micro: int = Field(description="the owner's earnings: charges less the fee (what is paid out)")
    net_micro: int = Field(description="gross less the energy cost at the owner's tariff")
    work: list[WorkloadLine]
    unpaid: list[UnpaidLine] = Field(description="work not paid, by reason (rejected, lost, unpriced)")

    @classmethod
    def of(cls, st: OwnerStatement) -> OwnerStatementView:
        return cls(
            owner=st.owner, month=st.month, currency=st.currency, tariff_per_kwh=str(st.tariff_per_kwh),
            cars=st.cars, hours_lent=st.hours_lent, energy_wh=st.energy_wh, energy_cost_micro=st.energy_cost,
            charges_micro=st.charges, fee_micro=st.fee, gross_micro=st.gross, net_micro=st.net,
            work=[WorkloadLine(workload=w.workload, leases=w.leases, items=w.items, examples=w.examples,
                               steps=w.steps, tokens=w.tokens, accelerator_s=w.accelerator_s, charge_micro=w.charge,
                               fee_micro=w.fee, credit_micro=w.credit) for w in st.work],
            unpaid=[UnpaidLine(reason=u.reason, leases=u.leases, items=u.items, examples=u.examples,
                               accelerator_s=u.accelerator_s) for u in st.unpaid],
        )


class JobChargeLine(_Wire):
    job_id: str
    name: str
    workload: str
    leases: int
    items: int
    examples: int
    steps: int
    tokens: int
    accelerator_s: float
    charge_micro: int
    unpaid_leases: int = Field(description="leases of the job not charged: rejected or lost work")


class TenantBillView(_Wire):
    tenant: str
    month: str
    currency: str
    total_micro: int
    jobs: list[JobChargeLine]

    @classmethod
    def of(cls, bill: TenantBill) -> TenantBillView:
        return cls(tenant=bill.tenant, month=bill.month, currency=bill.currency, total_micro=bill.total,
                   jobs=[JobChargeLine(job_id=j.job_id, name=j.name, workload=j.workload, leases=j.leases,
                                       items=j.items, examples=j.examples, steps=j.steps, tokens=j.tokens,
                                       accelerator_s=j.accelerator_s, charge_micro=j.charge,
                                       unpaid_leases=j.unpaid_leases) for j in bill.jobs])
