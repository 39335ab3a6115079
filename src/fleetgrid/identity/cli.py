"""``fleetgrid operator enrollment-tokens issue|list|revoke``, ``fleetgrid operator suspend|unsuspend`` and
``fleetgrid operator audit``: the identity commands (operator token). Registered by :mod:`fleetgrid.cli`."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Annotated

import typer
from rich.table import Table

from fleetgrid import cli as base
from fleetgrid.billing.cli import operator_app
from fleetgrid.errors import FleetgridError, InvalidInput

from .protocol import EnrollmentTokenView

__all__ = ["parse_duration", "register", "tokens_app"]

tokens_app = typer.Typer(no_args_is_help=True, help="Enrollment tokens for cars: issue, list, revoke.")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '12h' or '7d' in seconds; InvalidInput naming the forms accepted otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None or float(match.group(1)) <= 0:
        raise InvalidInput(f"--expires-in {text!r} is not a duration; give seconds or a number with s, m, h or d "
                           "(e.g. 3600, 15m, 12h, 7d), more than 0")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _when(t: float | None) -> str:
    return "-" if t is None else dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _print_tokens(tokens: list[EnrollmentTokenView], as_json: bool) -> None:
    if as_json:
        print(json.dumps([t.model_dump(mode="json") for t in tokens], indent=2))
        return
    table = Table(title="enrollment tokens")
    for col in ("id", "label", "state", "used", "uses left", "expires", "issued"):
        table.add_column(col)
    for t in tokens:
        left = "unlimited" if t.uses_left is None else str(t.uses_left)
        table.add_row(t.token_id, t.label or "-", t.state, str(t.used), left, _when(t.expires_at), _when(t.created_at))
    base.console.print(table)


@tokens_app.command("issue")
def issue(uses: Annotated[int, typer.Option(help="Enrollments it allows (1: single-use)")] = 1,
          unlimited: Annotated[bool, typer.Option("--unlimited", help="Any number of enrollments (give an expiry)")]
          = False,
          expires_in: Annotated[str | None, typer.Option(help="e.g. 3600, 15m, 12h, 7d; default: never")] = None,
          label: Annotated[str, typer.Option(help="What it is for, e.g. 'garage 4'")] = "",
          as_json: base.AsJson = False, url: base.Url = base.DEFAULT_URL, token: base.Token = None,
          data_dir: base.DataDir = base.DEFAULT_DATA_DIR, ca: base.CA = None) -> None:
    """Issue an enrollment token and print it: shown this once (the coordinator keeps its hash)."""
    try:
        if uses < 1:
            raise InvalidInput(f"--uses {uses} must be at least 1 (or give --unlimited)")
        expires_in_s = parse_duration(expires_in) if expires_in is not None else None
        with base._client(url, token, data_dir, ca, operator=True) as client:
            issued = client.issue_enrollment_token(uses=None if unlimited else uses, expires_in_s=expires_in_s,
                                                   label=label)
    except FleetgridError as exc:
        base._fail(exc)
    if as_json:
        print(issued.model_dump_json(indent=2))
        return
    print(issued.token)
    allows = "any number of enrollments" if issued.uses is None else f"{issued.uses} enrollment(s)"
    base.err.print(f"enrollment token {issued.token_id} allows {allows}, expires {_when(issued.expires_at)}; the "
                   "token above is shown only now: give it to the car as `fleetgrid agent --enroll-token`")


@tokens_app.command("list")
def list_tokens(as_json: base.AsJson = False, url: base.Url = base.DEFAULT_URL, token: base.Token = None,
                data_dir: base.DataDir = base.DEFAULT_DATA_DIR, ca: base.CA = None) -> None:
    """Every issued token: uses left, expiry, state (never the tokens themselves)."""
    try:
        with base._client(url, token, data_dir, ca, operator=True) as client:
            tokens = client.enrollment_tokens()
    except FleetgridError as exc:
        base._fail(exc)
    _print_tokens(tokens, as_json)


@tokens_app.command("revoke")
def revoke(token_id: Annotated[str, typer.Argument(help="The token's id (et-...), as `list` shows it")],
           url: base.Url = base.DEFAULT_URL, token: base.Token = None,
           data_dir: base.DataDir = base.DEFAULT_DATA_DIR, ca: base.CA = None) -> None:
    """The token stops working at once (cars it enrolled keep theirs)."""
    try:
        with base._client(url, token, data_dir, ca, operator=True) as client:
            revoked = client.revoke_enrollment_token(token_id)
    except FleetgridError as exc:
        base._fail(exc)
    base.console.print(f"enrollment token {revoked.token_id} revoked ({revoked.used} enrollment(s) made with it)")


def suspend(vehicle_id: Annotated[str, typer.Argument(help="The car's id (fleetgrid fleet lists them)")],
            reason: Annotated[str, typer.Option(help="Why, for the audit log and the car's refusals")],
            url: base.Url = base.DEFAULT_URL, token: base.Token = None,
            data_dir: base.DataDir = base.DEFAULT_DATA_DIR, ca: base.CA = None) -> None:
    """Suspend a car: every request it makes is refused (403) from now on, its leases go to other cars."""
    try:
        with base._client(url, token, data_dir, ca, operator=True) as client:
            done = client.suspend(vehicle_id, reason)
    except FleetgridError as exc:
        base._fail(exc)
    base.console.print(f"vehicle {vehicle_id} " + ("suspended" if done.changed else "was already suspended"))


def unsuspend(vehicle_id: Annotated[str, typer.Argument(help="The car's id")],
              url: base.Url = base.DEFAULT_URL, token: base.Token = None,
              data_dir: base.DataDir = base.DEFAULT_DATA_DIR, ca: base.CA = None) -> None:
    """Lift a car's suspension."""
    try:
        with base._client(url, token, data_dir, ca, operator=True) as client:
            done = client.unsuspend(vehicle_id)
    except FleetgridError as exc:
        base._fail(exc)
    base.console.print(f"vehicle {vehicle_id} " + ("unsuspended" if done.changed else "was not suspended"))


def audit(limit: Annotated[int, typer.Option(min=1, max=1000, help="How many entries, newest first")] = 50,
          as_json: base.AsJson = False, url: base.Url = base.DEFAULT_URL, token: base.Token = None,
          data_dir: base.DataDir = base.DEFAULT_DATA_DIR, ca: base.CA = None) -> None:
    """The audit log: operator actions and automatic suspensions, newest first."""
    try:
        with base._client(url, token, data_dir, ca, operator=True) as client:
            entries = client.audit(limit=limit)
    except FleetgridError as exc:
        base._fail(exc)
    if as_json:
        print(json.dumps([e.model_dump(mode="json") for e in entries], indent=2))
        return
    table = Table(title="audit log")
    for col in ("#", "when", "actor", "action", "target", "details"):
        table.add_column(col)
    for e in entries:
        details = ", ".join(f"{k}={v}" for k, v in e.details.items() if v is not None) or "-"
        table.add_row(str(e.seq), _when(e.at), e.actor, e.action, e.target, details)
    base.console.print(table)


def register(app: typer.Typer) -> None:
    """Onto ``fleetgrid operator`` (billing's group, which :mod:`fleetgrid.billing.cli` registers on ``app``)."""
    del app  # the group is shared; nothing is added at the top level
    operator_app.add_typer(tokens_app, name="enrollment-tokens")
    operator_app.command("suspend")(suspend)
    operator_app.command("unsuspend")(unsuspend)
    operator_app.command("audit")(audit)
