"""``fleetgrid deploy``, ``deployments`` and ``undeploy``: a tenant's serving deployments from the shell."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from fleetgrid.cli import CA, DEFAULT_DATA_DIR, DEFAULT_URL, AsJson, DataDir, Token, Url, _client, _fail, console
from fleetgrid.errors import FleetgridError

__all__ = ["deploy", "deployments", "register", "undeploy"]


def deploy(model: Annotated[str, typer.Argument(help="A text-embedding model, e.g. minilm-l6-v2")],
           replicas: Annotated[int, typer.Option(min=1, max=256, help="Cars holding the model (the floor)")] = 1,
           max_replicas: Annotated[int | None, typer.Option(
               min=1, max=256, help="Scale up to this many cars with demand (default: a fixed count)")] = None,
           spares: Annotated[int, typer.Option(min=0, max=64, help="Warm replicas kept beyond demand")] = 0,
           name: Annotated[str, typer.Option(help="What clients call it (default: the model's name)")] = "",
           from_job: Annotated[str | None, typer.Option(
               help="charlm: serve this finished training job's model")] = None,
           weights: Annotated[str | None, typer.Option(
               help="charlm: serve these weights (the sha256 of an artifact of yours)")] = None,
           as_json: AsJson = False, url: Url = DEFAULT_URL, token: Token = None,
           data_dir: DataDir = DEFAULT_DATA_DIR, ca: CA = None) -> None:
    """Serve MODEL from parked cars behind the OpenAI-compatible API: /v1/embeddings for an embedding model,
    /v1/completions and /v1/chat/completions for charlm (a fleet-trained model: --from-job)."""
    try:
        with _client(url, token, data_dir, ca) as client:
            job = client.deploy(model, replicas=replicas, name=name, weights=weights, from_job=from_job,
                                max_replicas=max_replicas, spares=spares)
    except FleetgridError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(job.model_dump(mode="json"), indent=2))
        return
    console.print(f"deployed {job.name} ({model}, {replicas} replica(s)) as job {job.job_id}; call it with any "
                  f"OpenAI client: base_url={url.rstrip('/')}/v1, api_key=<your tenant token>, model={job.name!r}")


def deployments(as_json: AsJson = False, url: Url = DEFAULT_URL, token: Token = None,
                data_dir: DataDir = DEFAULT_DATA_DIR, ca: CA = None) -> None:
    """Your live deployments: replicas wanted and connected, requests served."""
    try:
        with _client(url, token, data_dir, ca) as client:
            found = client.deployments()
    except FleetgridError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps([d.model_dump(mode="json") for d in found], indent=2))
        return
    if not found:
        console.print("no deployments; `fleetgrid deploy minilm-l6-v2` makes one")
        return
    table = Table()
    table.add_column("name", no_wrap=True)
    table.add_column("model")
    table.add_column("job", no_wrap=True)
    for header in ("replicas", "connected", "served", "in flight"):
        table.add_column(header, justify="right")
    for d in found:
        table.add_row(d.name, d.model, d.job_id, str(d.replicas), str(d.connected), str(d.served), str(d.in_flight))
    console.print(table)


def undeploy(name: Annotated[str, typer.Argument(help="The deployment to end")], url: Url = DEFAULT_URL,
             token: Token = None, data_dir: DataDir = DEFAULT_DATA_DIR, ca: CA = None) -> None:
    """End a deployment: its cars give the model up."""
    try:
        with _client(url, token, data_dir, ca) as client:
            job = client.undeploy(name)
    except FleetgridError as exc:
        _fail(exc)
    console.print(f"undeployed {name} (job {job.job_id} {job.state})")


def register(app: typer.Typer) -> None:
    """Add ``deploy``, ``deployments`` and ``undeploy`` to the ``fleetgrid`` command."""
    for command in (deploy, deployments, undeploy):
        app.command()(command)
