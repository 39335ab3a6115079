"""Statements from usage rows, as pure functions: an owner's month (hours lent, work by workload, energy and its
cost, gross and net earnings, and the work not paid and why), a tenant's month (charges by job), and the operator's
payout export (every owner's month, as CSV for a payment provider)."""

from __future__ import annotations

import bisect
import calendar
import csv
import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from fleetgrid.errors import InvalidInput

from .energy import energy_cost_micro, usage_energy_wh
from .lines import UsageLine
from .money import format_micro
from .prices import PriceList, RowCharge, charge_row

__all__ = ["JobCharge", "OwnerStatement", "PricedLine", "TenantBill", "Unpaid", "WorkloadTotals", "check_month",
           "month_bounds", "owner_statement", "payout_csv", "payout_statements", "price_lines",
           "tenant_bill"]

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
NOT_ACCEPTED = "not accepted: the lease failed or its work was lost (a gang restarted)"


def check_month(month: object) -> str:
    if not isinstance(month, str) or not (m := _MONTH.match(month.strip())) or not 1 <= int(m[2]) <= 12 \
            or int(m[1]) < 1970:
        raise InvalidInput(f"month {month!r} is not a month; accepted: YYYY-MM, e.g. 2026-11")
    return month.strip()


def month_bounds(month: str) -> tuple[float, float]:
    """The month's [start, end) in epoch seconds, UTC."""
    year, mon = (int(p) for p in check_month(month).split("-"))
    start = calendar.timegm((year, mon, 1, 0, 0, 0))
    end = calendar.timegm((year + mon // 12, mon % 12 + 1, 1, 0, 0, 0))
    return float(start), float(end)


@dataclass(frozen=True, slots=True)
class PricedLine:
    line: UsageLine
    money: RowCharge
    energy_wh: float
    unpaid: str | None
    """Why this row earns nothing; None when it is paid."""


def price_lines(lines: Iterable[UsageLine], price_lists: Sequence[PriceList]) -> list[PricedLine]:
    """Each row priced by the price list in force when it closed (the latest set at or before it)."""
    ordered = sorted(price_lists, key=lambda p: (p.set_at, p.version))
    starts = [p.set_at for p in ordered]
    out = []
    # A row whose accelerator-seconds are not priced has a charge that is a pure function of its price list,
    # workload and counts: rows alike (a training job's steps, a fixed batch of items) are priced once, exactly
    # as each would be. (Priced seconds are floats, nearly never repeated: not kept.)
    charges: dict[tuple, RowCharge] = {}
    for line in lines:
        energy = usage_energy_wh(line.hardware, line.accelerator_s, line.held_s, line.plugged_in)
        i = bisect.bisect_right(starts, line.at) - 1
        unpaid = None
        money = RowCharge(0, 0, 0)
        if not line.accepted:
            unpaid = NOT_ACCEPTED
        elif line.rejected:
            unpaid = f"rejected: {line.rejected}"
        elif i < 0:
            unpaid = "no price list was in force"
        elif line.workload not in ordered[i].prices:
            unpaid = f"the price list has no price for workload {line.workload!r}"
        else:
            plist = ordered[i]
            price = plist.prices[line.workload]
            key = (i, line.workload, line.items, line.tokens, line.steps, line.examples)
            timed = bool(price.per_accelerator_s and line.accelerator_s)
            cached = None if timed else charges.get(key)
            if cached is None:
                cached = charge_row(price, plist.operator_fee, hardware=line.hardware,
                                    accelerator_s=line.accelerator_s, items=line.items, tokens=line.tokens,
                                    steps=line.steps, examples=line.examples)
                if not timed:
                    charges[key] = cached
            money = cached
        out.append(PricedLine(line, money, energy, unpaid))
    return out


@dataclass(slots=True)
class WorkloadTotals:
    workload: str
    leases: int = 0
    items: int = 0
    examples: int = 0
    steps: int = 0
    tokens: int = 0
    accelerator_s: float = 0.0
    charge: int = 0
    fee: int = 0
    credit: int = 0

    def add(self, p: PricedLine) -> None:
        ln = p.line
        self.leases += 1
        self.items += ln.items
        self.examples += ln.examples
        self.steps += ln.steps
        self.tokens += ln.tokens
        self.accelerator_s += ln.accelerator_s
        self.charge += p.money.charge
        self.fee += p.money.fee
        self.credit += p.money.credit


@dataclass(slots=True)
class Unpaid:
    reason: str
    leases: int = 0
    items: int = 0
    examples: int = 0
    accelerator_s: float = 0.0


@dataclass(slots=True)
class OwnerStatement:
    owner: str
    month: str
    currency: str
    tariff_per_kwh: Decimal
    cars: list[str]
    hours_lent: float = 0.0
    work: list[WorkloadTotals] = field(default_factory=list)
    unpaid: list[Unpaid] = field(default_factory=list)
    energy_wh: float = 0.0
    energy_cost: int = 0
    charges: int = 0
    """What tenants paid for this owner's work."""
    fee: int = 0
    """The operator's share of it."""
    gross: int = 0
    """The owner's credit: charges less the fee (what the operator pays out)."""

    @property
    def net(self) -> int:
        """Gross less the electricity the work cost the owner at their tariff."""
        return self.gross - self.energy_cost


def owner_statement(owner: str, month: str, cars: Sequence[str], priced: Iterable[PricedLine], *, currency: str,
                    tariff_per_kwh: Decimal) -> OwnerStatement:
    """``priced``: the rows of ``cars`` closed in ``month`` (rows of other cars are ignored)."""
    mine = set(cars)
    st = OwnerStatement(owner=owner, month=check_month(month), currency=currency, tariff_per_kwh=tariff_per_kwh,
                        cars=sorted(mine))
    work: dict[str, WorkloadTotals] = {}
    unpaid: dict[str, Unpaid] = {}
    # Exact float sums (fsum): the same rows give the same hours and energy, so the same energy cost to the
    # micro-unit, in whatever order they come (the payout export reads them unordered).
    held_s: list[float] = []
    energy_wh: list[float] = []
    for p in priced:
        ln = p.line
        if ln.vehicle_id not in mine:
            continue
        held_s.append(max(ln.held_s, ln.accelerator_s))
        energy_wh.append(p.energy_wh)
        if p.unpaid is not None:
            u = unpaid.setdefault(p.unpaid, Unpaid(p.unpaid))
            u.leases += 1
            u.items += ln.items
            u.examples += ln.examples
            u.accelerator_s += ln.accelerator_s
            continue
        work.setdefault(ln.workload, WorkloadTotals(ln.workload)).add(p)
    st.hours_lent = math.fsum(held_s) / 3600.0
    st.energy_wh = math.fsum(energy_wh)
    st.work = [work[k] for k in sorted(work)]
    st.unpaid = [unpaid[k] for k in sorted(unpaid)]
    st.charges = sum(w.charge for w in st.work)
    st.fee = sum(w.fee for w in st.work)
    st.gross = sum(w.credit for w in st.work)
    st.energy_cost = energy_cost_micro(st.energy_wh, tariff_per_kwh)
    return st


@dataclass(slots=True)
class JobCharge:
    job_id: str
    name: str
    workload: str
    leases: int = 0
    items: int = 0
    examples: int = 0
    steps: int = 0
    tokens: int = 0
    accelerator_s: float = 0.0
    charge: int = 0
    unpaid_leases: int = 0
    """Leases of the job not charged for (rejected or lost work)."""


@dataclass(slots=True)
class TenantBill:
    tenant: str
    month: str
    currency: str
    jobs: list[JobCharge] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(j.charge for j in self.jobs)


def tenant_bill(tenant: str, month: str, priced: Iterable[PricedLine], *, currency: str) -> TenantBill:
    """``priced``: rows of jobs closed in ``month``; rows of other tenants' jobs are ignored."""
    jobs: dict[str, JobCharge] = {}
    for p in priced:
        ln = p.line
        if ln.tenant != tenant:
            continue
        j = jobs.setdefault(ln.job_id, JobCharge(ln.job_id, ln.job_name, ln.workload))
        if p.unpaid is not None:
            j.unpaid_leases += 1
            continue
        j.leases += 1
        j.items += ln.items
        j.examples += ln.examples
        j.steps += ln.steps
        j.tokens += ln.tokens
        j.accelerator_s += ln.accelerator_s
        j.charge += p.money.charge
    return TenantBill(tenant=tenant, month=check_month(month), currency=currency,
                      jobs=[jobs[k] for k in sorted(jobs)])


def payout_statements(month: str, owners: Iterable[tuple[str, Sequence[str], Decimal]],
                      priced: Iterable[PricedLine], *, currency: str) -> list[OwnerStatement]:
    """Every owner's statement for the month from one pass over the whole fleet's priced rows (in any order):
    ``owners`` is (name, cars, tariff per kWh) for each owner, in the export's order."""
    by_owner: dict[str | None, list[PricedLine]] = {}
    for p in priced:
        by_owner.setdefault(p.line.owner, []).append(p)
    return [owner_statement(name, month, cars, by_owner.get(name, ()), currency=currency, tariff_per_kwh=tariff)
            for name, cars, tariff in owners]


PAYOUT_COLUMNS = ("owner", "month", "currency", "amount", "amount_micro", "charges_micro", "fee_micro",
                  "energy_wh", "energy_cost_micro", "net_micro", "hours_lent", "cars")


def payout_csv(statements: Iterable[OwnerStatement]) -> str:
    """One row per owner: ``amount`` is the gross credit to pay, in major units with six decimals (and exactly,
    as ``amount_micro``); the rest is what a payment provider's memo or an audit wants beside it."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PAYOUT_COLUMNS)
    for st in statements:
        writer.writerow([st.owner, st.month, st.currency, format_micro(st.gross, st.currency).split()[0], st.gross,
                         st.charges, st.fee, f"{st.energy_wh:.3f}", st.energy_cost, st.net, f"{st.hours_lent:.4f}",
                         len(st.cars)])
    return buf.getvalue()
