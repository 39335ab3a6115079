"""Statement and payout-export times over a month of usage rows, on SQLite and PostgreSQL.

N cars (two per owner) each close ``--leases-per-day`` leases a day for ``--days`` days; every lease has its unit,
its lease row and its usage row, as the coordinator writes them. Then, timed ``--repeat`` times each: one owner's
monthly statement (the store's query and the billing maths, as GET /v1/owner/statement runs them), one tenant's
bill, and the payout export for every owner (as GET /v1/payouts runs it); then the dashboard's main page with that
fleet, time to first paint in headless Chromium (bench/dashboard_render.py; --no-dashboard skips it). Prints a
table; with --json, one JSON object on the last line. Targets (issue 13): a month's statement for one owner
< 50 ms; all owners' payout export < 60 s, and the dashboard's first render < 1 s, at 10,000 cars (``--cars
10000``; the default is smaller so a run takes minutes, not an hour).

Rows are written a day at a time in the order their leases closed, as a coordinator writes them (an earlier version
wrote each car's month in turn, which scatters a month's rows over the ledger's time index and made every query by
time read the table in random order).
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # tests/postgres.py: a throwaway PostgreSQL server

from dashboard_render import CHROMIUM, measure_first_render  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from fleetgrid.billing import (  # noqa: E402
    PriceList,
    check_tariff,
    month_bounds,
    owner_statement,
    payout_csv,
    payout_statements,
    price_lines,
    tenant_bill,
)
from fleetgrid.coordinator.store import SQLStore  # noqa: E402
from fleetgrid.coordinator.store.schema import jobs, leases, ledger, owner_cars, owners, units, vehicles  # noqa: E402

MONTH = "2026-11"
PRICES = {"inference": {"per_item": "0.00001", "per_accelerator_s": "0.0001"}, "train": {"per_step": "0.0005"}}
TENANTS = 20
CHUNK = 20_000


def populate(store: SQLStore, cars: int, days: int, per_day: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    start = month_bounds(MONTH)[0]
    store.add_price_list("USD", "0.15", PRICES, start - 86400)
    with store.engine.begin() as c:
        c.execute(insert(vehicles), [{"vehicle_id": f"v{i}", "name": f"car {i}", "hardware": rng.choice(["hw3", "ai4"]),
                                      "credential_hash": f"h{i}", "enrolled_at": 0.0, "revoked": False,
                                      "eligible": False} for i in range(cars)])
        c.execute(insert(owners), [{"name": f"o{i}", "token_hash": f"t{i}", "tariff": "0.1747", "created_at": 0.0}
                                   for i in range((cars + 1) // 2)])
        c.execute(insert(owner_cars), [{"vehicle_id": f"v{i}", "owner": f"o{i // 2}"} for i in range(cars)])
    for t in range(TENANTS):
        store.add_tenant(f"t{t}", f"th{t}", 0.0)
    with store.engine.begin() as c:
        c.execute(insert(jobs), [{"job_id": f"j{t}-{k}", "tenant": f"t{t}", "name": f"job {k}", "kind": kind,
                                  "model": "mnist1d-cnn", "spec": {}, "items": 0, "units_total": 0,
                                  "created_at": 0.0, "state": "done"}
                                 for t in range(TENANTS) for k, kind in enumerate(("inference", "train"))])
    rows = 0
    for day in range(days):
        # A day's leases in the order they closed: the coordinator writes each usage row as its lease closes, so
        # the tables hold a month's rows in time order (as the ledger's index on time has them).
        day_rows = []
        for car in range(cars):
            for _k in range(per_day):
                t, kind = rng.randrange(TENANTS), rng.choice(("inference", "train"))
                issued = start + day * 86400 + rng.uniform(0, 86400 - 3600)
                day_rows.append((issued + rng.uniform(60, 3600), issued, car, t, kind, rng.random(), rng.random()))
        day_rows.sort()
        batch_u, batch_l, batch_g = [], [], []
        for closed, issued, car, t, kind, r_reject, r_plug in day_rows:
            n = rows
            rows += 1
            job = f"j{t}-{0 if kind == 'inference' else 1}"
            held = closed - issued
            batch_u.append({"unit_id": f"u{n}", "job_id": job, "idx": n, "replica": 0, "replicas": 1,
                            "start_item": 0, "end_item": 100, "input_digest": "0" * 64, "input_format": "npy",
                            "state": "done", "attempts": 1, "vehicle_id": f"v{car}", "checkpoint_items": 0})
            batch_l.append({"lease_id": f"l{n}", "unit_id": f"u{n}", "job_id": job, "vehicle_id": f"v{car}",
                            "issued_at": issued, "deadline": closed + 60, "state": "completed",
                            "closed_at": closed, "resumed_items": 0})
            batch_g.append({"lease_id": f"l{n}", "vehicle_id": f"v{car}", "job_id": job,
                            "items": 100 if kind == "inference" else 0, "compute_s": held * 0.9,
                            "cellular_bytes": 0, "wifi_bytes": 10_000, "at": closed, "accepted": True,
                            "workload": kind, "examples": 0 if kind == "inference" else 3200,
                            "steps": 0 if kind == "inference" else 100, "tokens": 0,
                            "rejected": None if r_reject > 0.01 else "no quorum", "plugged_in": r_plug < 0.5})
            if len(batch_u) >= CHUNK:
                _flush(store, batch_u, batch_l, batch_g)
        _flush(store, batch_u, batch_l, batch_g)
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect() as c:
            c.exec_driver_sql("ANALYZE")
            c.commit()
    return rows


def _flush(store: SQLStore, *batches: list[dict]) -> None:
    with store.engine.begin() as c:
        for table, batch in zip((units, leases, ledger), batches, strict=True):
            if batch:
                c.execute(insert(table), batch)
                batch.clear()


def measure(store: SQLStore, cars: int, repeat: int) -> dict[str, float]:
    lists = [PriceList.parse(r.currency, r.operator_fee, r.prices, set_at=r.set_at, version=r.version)
             for r in store.price_lists()]
    start, end = month_bounds(MONTH)
    rng = random.Random(1)
    statement_ms, bill_ms, payout_s = [], [], []
    for _ in range(repeat):
        owner = store.get_owner(f"o{rng.randrange((cars + 1) // 2)}")
        assert owner is not None
        t0 = time.perf_counter()
        st = owner_statement(owner.name, MONTH, owner.cars,
                             price_lines(store.usage_lines(start, end, owner=owner.name), lists), currency="USD",
                             tariff_per_kwh=check_tariff(owner.tariff))
        statement_ms.append((time.perf_counter() - t0) * 1000)
        assert st.work, "the owner's statement is empty: the data set was not built"
        t0 = time.perf_counter()
        bill = tenant_bill("t0", MONTH, price_lines(store.usage_lines(start, end, tenant="t0"), lists),
                           currency="USD")
        bill_ms.append((time.perf_counter() - t0) * 1000)
        assert bill.total > 0
    for _ in range(max(1, repeat // 3)):
        t0 = time.perf_counter()
        # As GET /v1/payouts runs it.
        priced = price_lines(store.usage_lines(start, end, ordered=False), lists)
        owners = [(o.name, o.cars, check_tariff(o.tariff)) for o in store.list_owners()]
        text = payout_csv(payout_statements(MONTH, owners, priced, currency="USD"))
        payout_s.append(time.perf_counter() - t0)
        assert text.count("\n") == (cars + 1) // 2 + 1
    return {"owner_statement_ms": statistics.median(statement_ms), "tenant_bill_ms": statistics.median(bill_ms),
            "payout_export_s": statistics.median(payout_s)}


def calibration_s() -> float:
    """Seconds this machine takes for a million Python additions (~0.03-0.06 s on an idle modern core): the
    figures above scale with it, so a loaded machine's can be read against an idle one's."""
    t0 = time.perf_counter()
    total = 0
    for i in range(1_000_000):
        total += i
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cars", type=int, default=1000, help="cars (two per owner); the issue's figure is 10,000")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--leases-per-day", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-dashboard", action="store_true",
                    help="skip the dashboard's first-render measurement (it needs /usr/bin/chromium)")
    args = ap.parse_args()
    if not args.no_dashboard and not CHROMIUM.exists():
        ap.error(f"the dashboard measurement drives {CHROMIUM} (`make chromium` installs it); or pass --no-dashboard")
    if args.cars < 1 or args.days < 1 or not 1 <= args.days <= calendar.monthrange(2026, 11)[1]:
        ap.error("--cars >= 1 and --days in 1..30")
    results: dict[str, dict] = {"cars": {"n": args.cars}, "rows": {"n": 0}}
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp, contextlib.ExitStack() as stack:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                url = f"sqlite:///{tmp}/ledger.db"
            elif backend == "postgres":
                from postgres import start_postgres

                server = start_postgres()
                stack.callback(server.stop)
                url = server.create_database("ledger_bench")
            else:
                ap.error(f"unknown backend {backend!r}; accepted: sqlite, postgres")
            store = SQLStore(url)
            stack.callback(store.close)
            t0 = time.perf_counter()
            rows = populate(store, args.cars, args.days, args.leases_per_day)
            fill_s = time.perf_counter() - t0
            results["rows"]["n"] = rows
            results[backend] = measure(store, args.cars, args.repeat) | {"fill_s": fill_s}
            if not args.no_dashboard:
                results[backend] |= measure_first_render(store, Path(tmp) / f"coordinator-{backend}", args.cars,
                                                         args.repeat)
    calibration = calibration_s()
    print(f"{args.cars} cars x {args.days} days x {args.leases_per_day} leases/day = {results['rows']['n']} rows; "
          f"1M Python additions took {calibration:.2f} s here")
    print(f"{'backend':<10} {'statement ms':>13} {'bill ms':>9} {'payout s':>9} {'fill s':>7} "
          f"{'dashboard first paint ms':>25}")
    for backend in args.backends.split(","):
        r = results[backend]
        paint = f"{r['dashboard_first_paint_ms']:.0f}" if "dashboard_first_paint_ms" in r else "-"
        print(f"{backend:<10} {r['owner_statement_ms']:>13.1f} {r['tenant_bill_ms']:>9.1f} "
              f"{r['payout_export_s']:>9.2f} {r['fill_s']:>7.1f} {paint:>25}")
    if args.json:
        print(json.dumps({"cars": args.cars, "days": args.days, "leases_per_day": args.leases_per_day,
                          "rows": results["rows"]["n"], "calibration_1m_adds_s": calibration,
                          **{b: results[b] for b in args.backends.split(",")}}))


if __name__ == "__main__":
    main()
