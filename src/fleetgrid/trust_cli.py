"""``fleetgrid operator reputation [VEHICLE_ID]``: how far the coordinator trusts each car's results (checks passed
and failed, spot-check rate, suspension). Registered by :mod:`fleetgrid.cli` under the operator commands."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from fleetgrid import cli as base
from fleetgrid.errors import FleetgridError

__all__ = ["register"]


def reputation(vehicle_id: Annotated[str | None, typer.Argument(help="One car; default: every car checked")] = None,
               as_json: base.AsJson = False, url: base.Url = base.DEFAULT_URL, token: base.Token = None,
               data_dir: base.DataDir = base.DEFAULT_DATA_DIR, ca: base.CA = None) -> None:
    """Cars' reputations: results confirmed and outvoted, implausible reports, spot-check rate, suspension."""
    try:
        with base._client(url, token, data_dir, ca, operator=True) as client:
            rows = client.reputations(vehicle_id)
    except FleetgridError as exc:
        base._fail(exc)
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    if not rows:
        base.console.print("no car's results were checked yet (the coordinator verifies them with --verify-results)")
        return
    t = Table("vehicle", "agreed", "streak", "faults", "implausible", "trusted", "check rate", "suspended")
    for r in rows:
        t.add_row(r.vehicle_id, str(r.agreed), str(r.streak), str(r.faults), str(r.implausible),
                  "yes" if r.trusted else "no", f"{r.check_rate:.0%}", r.suspended_reason or ("yes" if r.suspended
                                                                                             else ""))
    base.console.print(t)


def register(app: typer.Typer) -> None:
    """Onto ``fleetgrid operator`` (billing's group, which :mod:`fleetgrid.billing.cli` registers on ``app``)."""
    from fleetgrid.billing.cli import operator_app

    del app  # the group is shared; nothing is added at the top level
    operator_app.command("reputation")(reputation)
