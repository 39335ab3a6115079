"""Statements from usage rows: one hand-computed month, and a property test that tenant charges, owner credits
and operator fees reconcile to the micro-unit over many random months."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from fleetgrid.billing import (
    PriceList,
    UsageLine,
    month_bounds,
    owner_statement,
    payout_csv,
    payout_statements,
    price_lines,
    tenant_bill,
)

NOV = month_bounds("2026-11")[0]
PRICES = PriceList.parse("USD", "0.15", {"inference": {"per_item": "0.00001", "per_accelerator_s": "0.0002"},
                                         "train": {"per_step": "0.001"}}, set_at=NOV - 86400, version=1)


def line(lease: str, **kw) -> UsageLine:
    base = dict(lease_id=lease, vehicle_id="v1", hardware="ai4", job_id="job-a", tenant="acme", workload="inference",
                at=NOV + 3600, owner="alice", job_name="embed")
    return UsageLine(**(base | kw))


def test_an_owner_month_by_hand():
    lines = [
        line("l1", accelerator_s=10.0, held_s=3600.0, items=1000),  # 12,000 micro charged, 10,200 credited
        line("l2", workload="train", job_id="job-t", steps=50, accelerator_s=3600.0, held_s=3600.0, plugged_in=True),
        line("l3", items=500, accelerator_s=5.0, rejected="unit 3: the result disagreed with the quorum of 2"),
        line("l4", items=0, accelerator_s=20.0, accepted=False),
        line("l5", vehicle_id="v9", owner="bob", items=10_000, accelerator_s=1.0),  # bob: 100,000 + 200
    ]
    priced = price_lines(lines, [PRICES])
    st = owner_statement("alice", "2026-11", ["v1"], priced, currency="USD", tariff_per_kwh=Decimal("0.20"))
    assert [(w.workload, w.leases, w.charge, w.fee, w.credit) for w in st.work] == [
        ("inference", 1, 12_000, 1_800, 10_200), ("train", 1, 50_000, 7_500, 42_500)]
    assert (st.charges, st.fee, st.gross) == (62_000, 9_300, 52_700)
    assert [(u.reason.split(":")[0], u.leases, u.items) for u in st.unpaid] == [("not accepted", 1, 0),
                                                                                  ("rejected", 1, 500)]
    # Energy: l1 100 W x 10 s + 250 W x 3600 s; l2 (100 + 250) W for an hour through the charger; l3, l4 awake
    # only while computing (held time unknown).
    wh = (100 * 10 + 250 * 3600) / 3600 + 350 / 0.88 + 350 * 5 / 3600 + 350 * 20 / 3600
    assert st.energy_wh == pytest.approx(wh)
    assert st.energy_cost == round(wh * 0.2 * 1000)  # micro-units of 0.20/kWh
    assert st.net == st.gross - st.energy_cost
    assert st.hours_lent == pytest.approx((3600 + 3600 + 5 + 20) / 3600)
    bill = tenant_bill("acme", "2026-11", priced, currency="USD")
    assert [(j.job_id, j.charge, j.unpaid_leases) for j in bill.jobs] == [("job-a", 12_000 + 100_000 + 200, 2),
                                                                          ("job-t", 50_000, 0)]


def test_rows_are_priced_by_the_list_in_force_when_they_closed():
    later = PriceList.parse("USD", "0.5", {"inference": {"per_item": "0.001"}}, set_at=NOV + 7200, version=2)
    priced = price_lines([line("a", items=10, at=NOV + 3600), line("b", items=10, at=NOV + 7200),
                          line("c", items=10, at=NOV - 2 * 86400)], [later, PRICES])
    assert [(p.money.charge, p.money.fee, p.unpaid) for p in priced] == [
        (100, 15, None), (10_000, 5_000, None), (0, 0, "no price list was in force")]
    unpriced = price_lines([line("d", workload="evaluate", examples=3)], [PRICES])[0]
    assert unpriced.unpaid == "the price list has no price for workload 'evaluate'" and unpriced.money.charge == 0


def test_an_empty_month_is_an_empty_statement():
    st = owner_statement("alice", "2026-11", ["v1"], [], currency="USD", tariff_per_kwh=Decimal("0.1747"))
    assert (st.work, st.unpaid, st.gross, st.net, st.energy_wh, st.hours_lent) == ([], [], 0, 0, 0.0, 0.0)
    assert tenant_bill("acme", "2026-11", [], currency="USD").jobs == []
    assert payout_csv([st]).splitlines()[1].startswith("alice,2026-11,USD,0.000000,0,0,0,")


def _random_month(rng: random.Random) -> tuple[list[UsageLine], list[PriceList], dict[str, list[str]]]:
    owners = {f"o{i}": [f"o{i}-v{j}" for j in range(rng.randint(1, 3))] for i in range(rng.randint(1, 5))}
    cars = [(o, v) for o, vs in owners.items() for v in vs]
    lists = []
    for version in range(1, rng.randint(2, 4)):
        prices = {kind: {unit: str(Decimal(rng.randint(0, 10**7)).scaleb(-rng.randint(3, 12)))
                         for unit in rng.sample(["per_accelerator_s", "per_item", "per_1k_tokens", "per_step",
                                                 "per_example"], rng.randint(1, 5))}
                  for kind in rng.sample(["inference", "train", "evaluate"], rng.randint(1, 3))}
        fee = str(Decimal(rng.randint(0, 999_999)).scaleb(-6))
        lists.append(PriceList.parse("EUR", fee, prices, set_at=NOV + rng.uniform(-86400, 20 * 86400),
                                     version=version))
    lines = []
    for i in range(rng.randint(0, 300)):
        owner, vid = rng.choice(cars)
        lines.append(UsageLine(
            lease_id=f"l{i}", vehicle_id=vid, owner=owner, hardware=rng.choice(["hw3", "ai4", "ai5"]),
            job_id=f"job-{rng.randint(0, 9)}", tenant=rng.choice(["t1", "t2", "t3"]),
            workload=rng.choice(["inference", "train", "evaluate", "serve"]), at=NOV + rng.uniform(0, 29 * 86400),
            accelerator_s=rng.uniform(0, 7200), held_s=rng.choice([0.0, rng.uniform(0, 9000)]),
            items=rng.randint(0, 10**6), examples=rng.randint(0, 10**5), steps=rng.randint(0, 500),
            tokens=rng.randint(0, 10**7), accepted=rng.random() > 0.1,
            rejected=rng.choice([None] * 9 + ["no quorum"]), plugged_in=rng.choice([True, False, None])))
    return lines, lists, owners


@pytest.mark.parametrize("seed", range(400))
def test_charges_credits_and_fees_reconcile_to_the_micro_unit(seed):
    """Whatever the usage and prices, every micro-unit a tenant is charged is an owner's credit or the
    operator's fee: summed by owner (statements, payout export) and by tenant (bills) alike."""
    rng = random.Random(seed)
    lines, lists, owners = _random_month(rng)
    priced = price_lines(lines, lists)
    statements = [owner_statement(o, "2026-11", cars, priced, currency="EUR", tariff_per_kwh=Decimal("0.25"))
                  for o, cars in owners.items()]
    bills = [tenant_bill(t, "2026-11", priced, currency="EUR") for t in ("t1", "t2", "t3")]
    charged = sum(b.total for b in bills)
    assert sum(st.gross for st in statements) + sum(st.fee for st in statements) == charged
    assert sum(st.charges for st in statements) == charged
    assert charged == sum(p.money.charge for p in priced if p.unpaid is None)
    for p in priced:
        assert p.money.fee + p.money.credit == p.money.charge and 0 <= p.money.fee <= p.money.charge
        assert (p.money.charge == 0) or p.unpaid is None  # nothing unpaid is ever charged
    rows = payout_csv(statements).splitlines()[1:]
    assert sum(int(r.split(",")[4]) for r in rows) + sum(st.fee for st in statements) == charged


@pytest.mark.parametrize("seed", range(100))
def test_the_payout_export_matches_each_owners_statement_whatever_the_row_order(seed):
    """The export reads the month unordered (sorting the whole fleet's rows was most of its time): each owner's
    row must still equal the statement that owner sees, to the micro-unit, energy and hours included."""
    rng = random.Random(seed)
    lines, lists, owners = _random_month(rng)
    priced = price_lines(lines, lists)
    shuffled = priced[:]
    rng.shuffle(shuffled)
    tariff = Decimal("0.25")
    exported = payout_statements("2026-11", [(o, cars, tariff) for o, cars in owners.items()], shuffled,
                                 currency="EUR")
    for st in exported:
        alone = owner_statement(st.owner, "2026-11", owners[st.owner], [p for p in priced if p.line.owner == st.owner],
                                currency="EUR", tariff_per_kwh=tariff)
        assert (st.gross, st.fee, st.charges, st.energy_cost, st.net) == \
            (alone.gross, alone.fee, alone.charges, alone.energy_cost, alone.net)
        assert st.energy_wh == alone.energy_wh and st.hours_lent == alone.hours_lent
    one_by_one = [owner_statement(o, "2026-11", cars, priced, currency="EUR", tariff_per_kwh=tariff)
                  for o, cars in owners.items()]
    assert payout_csv(exported) == payout_csv(one_by_one)
