"""``fleetgrid operator prices|payouts``, ``fleetgrid owner add|attach|list|statement`` and ``fleetgrid tenant
bill``: the billing commands, with table, ``--json`` and ``--csv`` output. Registered by :mod:`fleetgrid.cli`."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fleetgrid import cli as base
from fleetgrid.errors import FleetgridError, InvalidInput

from .money import format_micro
from .protocol import OwnerStatementView, TenantBillView

__all__ = ["operator_app", "owner_app", "register"]

operator_app = typer.Typer(no_args_is_help=True, help="Operator commands: prices and payouts; enrollment tokens, "
                                                          "suspensions, reputations and the audit log.")
owner_app = typer.Typer(no_args_is_help=True, help="Owners: add one, attach cars, read a month's statement.")

Month = Annotated[str | None, typer.Option("--month", help="YYYY-MM (UTC); default: the current month.")]
AsCsv = Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")]


def _price(text: str) -> tuple[str, str, str]:
    key, sep, value = text.partition("=")
    workload, dot, unit = key.partition(".")
    if not sep or not dot or not workload or not unit or not value:
        raise InvalidInput(f"--price {text!r}: expected WORKLOAD.UNIT=DECIMAL, e.g. --price inference.per_item="
                           "0.00001 (units: per_accelerator_s, per_item, per_1k_tokens, per_step, per_example)")
    return workload, unit, value


def _one_format(as_json: bool, as_csv: bool) -> None:
    if as_json and as_csv:
        raise InvalidInput("--json and --csv both given; choose one")


@operator_app.command("prices")
def prices(currency: Annotated[str | None, typer.Option(help="ISO 4217 code, e.g. USD")] = None,
           fee: Annotated[str | None, typer.Option("--fee", help="Operator fee, a decimal in [0, 1), e.g. 0.15")]
           = None,
           price: Annotated[list[str] | None, typer.Option("--price", help="WORKLOAD.UNIT=DECIMAL (repeat)")]
           = None,
           as_json: base.AsJson = False, url: base.Url = base.DEFAULT_URL, token: base.Token = None,
           data_dir: base.DataDir = base.DEFAULT_DATA_DIR, ca: base.CA = None) -> None:
    """Show the price list, or set a new one (in force from now): --currency, --fee and one --price per price."""
    try:
        with base._client(url, token, data_dir, ca, operator=True) as client:
            if currency is None and fee is None and not price:
                view = client.prices()
            else:
                if currency is None or fee is None or not price:
                    raise InvalidInput("setting prices needs --currency, --fee and at least one --price "
                                       "WORKLOAD.UNIT=DECIMAL; give none of them to show the price list")
                table: dict[str, dict[str, str]] = {}
                for workload, unit, value in map(_price, price):
                    table.setdefault(workload, {})[unit] = value
                view = client.set_prices(currency, fee, table)
    except FleetgridError as exc:
        base._fail(exc)
    if as_json:
        print(json.dumps(view.model_dump(mode="json"), indent=2))
        return
    t = Table(title=f"price list v{view.version}: {view.currency}, operator fee {view.operator_fee}")
    for col in ("workload", "unit", "price"):
        t.add_column(col)
    for workload, units in view.prices.items():
        for unit, value in units.items():
            if Decimal(value) != 0:
                t.add_row(workload, unit, value)
    base.console.print(t)


@operator_app.command("payouts")
def payouts(month: Month = None, out: Annotated[Path | None, typer.Option(help="CSV file; default: stdout")] = None,
            url: base.Url = base.DEFAULT_URL, token: base.Token = None,
            data_dir: base.DataDir = base.DEFAULT_DATA_DIR, ca: base.CA = None) -> None:
    """Every owner's earnings for a month, as CSV for a payment provider."""
    try:
        if out is not None:
            base._out_path(out)
        with base._client(url, token, data_dir, ca, operator=True) as client:
            text = client.payouts(month)
        if out is not None:
            base._write(out, text.encode())
    except FleetgridError as exc:
        base._fail(exc)
    if out is None:
        print(text, end="")
    else:
        base.err.print(f"wrote {text.count(chr(10)) - 1} owners' payouts to {out}")


@owner_app.command("add")
def owner_add(name: Annotated[str, typer.Argument(help="The owner's name, e.g. alice")],
              tariff: Annotated[str | None, typer.Option(help="Electricity price per kWh, e.g. 0.1747")] = None,
              as_json: base.AsJson = False, url: base.Url = base.DEFAULT_URL, token: base.Token = None,
              data_dir: base.DataDir = base.DEFAULT_DATA_DIR, ca: base.CA = None) -> None:
    """Create an owner and print their token: shown this once (needs the operator token)."""
    try:
        with base._client(url, token, data_dir, ca, operator=True) as client:
            secret = client.add_owner(name, tariff)
    except FleetgridError as exc:
        base._fail(exc)
    if as_json:
        print(json.dumps({"owner": name, "token": secret}))
        return
    print(secret)
    base.err.print(f"owner {name!r} added; the token above is shown only now: give it to `fleetgrid owner "
                   "statement` as --token or FLEETGRID_TOKEN")


@owner_app.command("attach")
def owner_attach(name: Annotated[str, typer.Argument(help="The owner")],
                 vehicle_id: Annotated[str, typer.Argument(help="An enrolled car's id (fleetgrid fleet lists them)")],
                 url: base.Url = base.DEFAULT_URL, token: base.Token = None,
                 data_dir: base.DataDir = base.DEFAULT_DATA_DIR, ca: base.CA = None) -> None:
    """Make NAME the owner of a car (needs the operator token)."""
    try:
        with base._client(url, token, data_dir, ca, operator=True) as client:
            owner = client.attach_car(name, vehicle_id)
    except FleetgridError as exc:
        base._fail(exc)
    base.console.print(f"owner {owner.name!r} has {len(owner.cars)} car(s): {', '.join(owner.cars)}")


@owner_app.command("list")
def owner_list(as_json: base.AsJson = False, url: base.Url = base.DEFAULT_URL, token: base.Token = None,
               data_dir: base.DataDir = base.DEFAULT_DATA_DIR, ca: base.CA = None) -> None:
    """List the owners with their cars and tariffs (needs the operator token)."""
    try:
        with base._client(url, token, data_dir, ca, operator=True) as client:
            owners = client.owners()
    except FleetgridError as exc:
        base._fail(exc)
    if as_json:
        print(json.dumps([o.model_dump(mode="json") for o in owners], indent=2))
        return
    t = Table(title="owners")
    for col in ("owner", "tariff / kWh", "cars"):
        t.add_column(col)
    for o in owners:
        t.add_row(o.name, o.tariff, ", ".join(o.cars) or "-")
    base.console.print(t)


@owner_app.command("statement")
def owner_statement(month: Month = None,
                    owner: Annotated[str | None, typer.Option(help="Operator: this owner's statement")] = None,
                    as_json: base.AsJson = False, as_csv: AsCsv = False, url: base.Url = base.DEFAULT_URL,
                    token: base.Token = None, data_dir: base.DataDir = base.DEFAULT_DATA_DIR,
                    ca: base.CA = None) -> None:
    """An owner's month: hours lent, work by workload, energy and its cost, gross and net earnings. Run with the
    owner's token (--token or FLEETGRID_TOKEN), or as the operator with --owner NAME."""
    try:
        _one_format(as_json, as_csv)
        if token is None and owner is None:
            raise InvalidInput("an owner statement needs the owner's token: --token fgown_... (or FLEETGRID_TOKEN); "
                               "the operator passes --owner NAME instead")
        with base._client(url, token, data_dir, ca, operator=owner is not None) as client:
            st = client.owner_statement(month, owner)
    except FleetgridError as exc:
        base._fail(exc)
    if as_json:
        print(json.dumps(st.model_dump(mode="json"), indent=2))
    elif as_csv:
        print(statement_csv(st), end="")
    else:
        _print_statement(st)


@base.tenant_app.command("bill")
def tenant_bill(month: Month = None, as_json: base.AsJson = False, as_csv: AsCsv = False,
                url: base.Url = base.DEFAULT_URL, token: base.Token = None,
                data_dir: base.DataDir = base.DEFAULT_DATA_DIR, ca: base.CA = None) -> None:
    """A tenant's month: charges by job (with the tenant's token; default: the 'default' tenant's)."""
    try:
        _one_format(as_json, as_csv)
        with base._client(url, token, data_dir, ca) as client:
            bill = client.tenant_bill(month)
    except FleetgridError as exc:
        base._fail(exc)
    if as_json:
        print(json.dumps(bill.model_dump(mode="json"), indent=2))
    elif as_csv:
        print(bill_csv(bill), end="")
    else:
        _print_bill(bill)


def statement_csv(st: OwnerStatementView) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["line", "workload_or_reason", "leases", "items", "examples", "steps", "tokens", "accelerator_s",
                "charge_micro", "fee_micro", "credit_micro"])
    for x in st.work:
        w.writerow(["work", x.workload, x.leases, x.items, x.examples, x.steps, x.tokens, f"{x.accelerator_s:.3f}",
                    x.charge_micro, x.fee_micro, x.credit_micro])
    for u in st.unpaid:
        w.writerow(["unpaid", u.reason, u.leases, u.items, u.examples, "", "", f"{u.accelerator_s:.3f}", 0, 0, 0])
    w.writerow(["total", st.currency, "", "", "", "", "", "", st.charges_micro, st.fee_micro, st.gross_micro])
    w.writerow(["energy", f"{st.energy_wh:.3f} Wh at {st.tariff_per_kwh}/kWh", "", "", "", "", "", "",
                st.energy_cost_micro, "", ""])
    w.writerow(["net", st.currency, "", "", "", "", "", "", "", "", st.net_micro])
    return buf.getvalue()


def bill_csv(bill: TenantBillView) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["job_id", "name", "workload", "leases", "items", "examples", "steps", "tokens", "accelerator_s",
                "charge_micro", "unpaid_leases"])
    for j in bill.jobs:
        w.writerow([j.job_id, j.name, j.workload, j.leases, j.items, j.examples, j.steps, j.tokens,
                    f"{j.accelerator_s:.3f}", j.charge_micro, j.unpaid_leases])
    w.writerow(["total", "", "", "", "", "", "", "", "", bill.total_micro, ""])
    return buf.getvalue()


def _print_statement(st: OwnerStatementView) -> None:
    def money(micro: int) -> str:
        return format_micro(micro, st.currency)

    t = Table(title=f"{st.owner}, {st.month}: {len(st.cars)} car(s), {st.hours_lent:.2f} h lent")
    for col in ("workload", "leases", "items", "examples", "steps", "accel. s", "charged", "fee", "earned"):
        t.add_column(col, justify="left" if col == "workload" else "right")
    for x in st.work:
        t.add_row(x.workload, str(x.leases), str(x.items), str(x.examples), str(x.steps), f"{x.accelerator_s:.1f}",
                  money(x.charge_micro), money(x.fee_micro), money(x.credit_micro))
    base.console.print(t)
    for u in st.unpaid:
        base.console.print(f"not paid: {u.leases} lease(s), {u.items} items, {u.accelerator_s:.1f} accel. s: "
                           f"{u.reason}")
    base.console.print(f"gross {money(st.gross_micro)}; energy {st.energy_wh / 1000:.3f} kWh at "
                       f"{st.tariff_per_kwh}/kWh = {money(st.energy_cost_micro)}; net {money(st.net_micro)}")


def _print_bill(bill: TenantBillView) -> None:
    t = Table(title=f"{bill.tenant}, {bill.month}: {format_micro(bill.total_micro, bill.currency)}")
    for col in ("job", "name", "workload", "leases", "items", "examples", "steps", "accel. s", "charged",
                "not charged"):
        t.add_column(col)
    for j in bill.jobs:
        t.add_row(j.job_id, j.name, j.workload, str(j.leases), str(j.items), str(j.examples), str(j.steps),
                  f"{j.accelerator_s:.1f}", format_micro(j.charge_micro, bill.currency), str(j.unpaid_leases))
    base.console.print(t)


def register(app: typer.Typer) -> None:
    app.add_typer(operator_app, name="operator")
    app.add_typer(owner_app, name="owner")
