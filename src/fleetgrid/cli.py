"""The ``fleetgrid`` command: serve, agent, submit, status, result, cancel, fleet, models, simulate, demo.

Heavy imports happen inside each command, so ``fleetgrid --help`` is instant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import FleetgridError, InvalidInput

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="fleetgrid: a fleet of parked cars as one distributed AI data center.")
submit_app = typer.Typer(no_args_is_help=True, help="Submit a job to the coordinator.")
app.add_typer(submit_app, name="submit")
console = Console()
err = Console(stderr=True)

DEFAULT_URL = "http://127.0.0.1:8787"
DataDir = Annotated[Path, typer.Option("--data-dir", envvar="FLEETGRID_DATA_DIR",
                                       help="Coordinator data directory (SQLite, artifacts, credentials.json).")]
Url = Annotated[str, typer.Option("--coordinator", envvar="FLEETGRID_URL", help="Coordinator base URL.")]
Token = Annotated[str | None, typer.Option("--token", envvar="FLEETGRID_TOKEN",
                                           help="Tenant (or operator) token; default: from DATA_DIR/credentials.json.")]
CA = Annotated[Path | None, typer.Option("--ca", envvar="FLEETGRID_CA", help="CA bundle to verify a TLS coordinator.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _fail(exc: FleetgridError) -> None:
    err.print(f"[red]error:[/red] {exc.message}", highlight=False)
    raise typer.Exit(2 if 400 <= exc.status < 500 else 1)


def _name_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise InvalidInput(f"--tenant {text!r}: expected NAME=TOKEN, e.g. --tenant acme=fgt_secret")
    return name, value


def _client(url: str, token: str | None, data_dir: Path, ca: Path | None, *, operator: bool = False):
    from .client import FleetgridClient
    from .coordinator.config import Credentials

    if token is None:
        path = data_dir / "credentials.json"
        if not path.exists():
            raise InvalidInput(f"no --token given and {path} does not exist; pass --token or --data-dir of the "
                               "coordinator that printed it")
        creds = Credentials.load(path)
        token = creds.operator if operator else creds.tenants.get("default")
        if token is None:
            raise InvalidInput(f"no --token given and {path} has no 'default' tenant (it has "
                               f"{sorted(creds.tenants)}); pass --token")
    return FleetgridClient(url, token, verify=str(ca) if ca else True)


@app.command()
def serve(
    data_dir: DataDir = Path("fleetgrid-data"),
    db: Annotated[str | None, typer.Option(envvar="FLEETGRID_DB",
                                           help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB")] = None,
    host: str = "127.0.0.1",
    port: int = 8787,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate: serve HTTPS")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert")] = None,
    lease_ttl: Annotated[float, typer.Option(help="Seconds a lease lives without renewal")] = 60.0,
    max_artifact_bytes: Annotated[int, typer.Option(help="Largest artifact upload, in bytes")] = 2 << 30,
    enroll_token: Annotated[str | None, typer.Option(envvar="FLEETGRID_ENROLL_TOKEN",
                                                        help="Fix the fleet enrollment token")] = None,
    operator_token: Annotated[str | None, typer.Option(envvar="FLEETGRID_OPERATOR_TOKEN",
                                                       help="Fix the operator token")] = None,
    tenant: Annotated[list[str] | None,
                      typer.Option(help="NAME=TOKEN: a tenant with a fixed token (repeatable)")] = None,
) -> None:
    """Run the coordinator (embedded SQLite and local artifacts by default).

    Tokens not fixed by options are generated at first start and written to DATA_DIR/credentials.json."""
    from .coordinator.config import CoordinatorConfig
    from .coordinator.server import serve as run_server

    try:
        tenants = dict(_name_value(t) for t in tenant or [])
        config = CoordinatorConfig(data_dir=data_dir, database_url=db, lease_ttl_s=lease_ttl,
                                   max_artifact_bytes=max_artifact_bytes, enroll_token=enroll_token,
                                   operator_token=operator_token, tenant_tokens=tenants)
        scheme = "https" if tls_cert else "http"
        err.print(f"fleetgrid coordinator on {scheme}://{host}:{port}  (docs: /docs)  "
                  f"credentials: {config.credentials_path}", highlight=False)
        run_server(config, host, port, tls_cert=tls_cert, tls_key=tls_key)
    except FleetgridError as exc:
        _fail(exc)


@submit_app.command("infer")
def submit_infer(
    model: Annotated[str, typer.Option(help="Model name (fleetgrid models), or 'torchscript'/'torch-export'")],
    inputs: Annotated[Path, typer.Option(help="Inputs: .npy array or .jsonl text (one string per line)")],
    model_file: Annotated[Path | None, typer.Option(help="Your TorchScript / torch.export file")] = None,
    unit_items: Annotated[int | None, typer.Option(help="Items per work unit")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    replicas: Annotated[int, typer.Option(help="Compute each unit on this many cars")] = 1,
    quorum: Annotated[int, typer.Option(help="Accept a unit when this many replicas agree")] = 1,
    name: str = "",
    wait: Annotated[bool, typer.Option(help="Wait for the job and save its result")] = False,
    out: Annotated[Path | None, typer.Option(help="Where --wait saves the result (.npy)")] = None,
    url: Url = DEFAULT_URL, token: Token = None, data_dir: DataDir = Path("fleetgrid-data"), ca: CA = None,
) -> None:
    """Submit a batch-inference job."""
    try:
        if not inputs.is_file():
            raise InvalidInput(f"inputs file {inputs} does not exist; give a .npy or .jsonl file")
        fmt = {".npy": "npy", ".jsonl": "jsonl"}.get(inputs.suffix)
        if fmt is None:
            raise InvalidInput(f"inputs file {inputs.name} must end in .npy or .jsonl")
        with _client(url, token, data_dir, ca) as client:
            status = client.submit(model, inputs.read_bytes(), input_format=fmt,
                                   model_file=model_file, unit_items=unit_items, batch_size=batch_size,
                                   redundancy={"replicas": replicas, "quorum": quorum}, name=name)
            console.print(f"submitted {status.job_id}: {status.items} items in {status.units_total} units")
            if wait:
                final = _watch(client, status.job_id)
                if final.state == "done":
                    path = out or Path(f"{status.job_id}.npy")
                    path.write_bytes(client.result_bytes(status.job_id))
                    console.print(f"result saved to {path}")
                else:
                    err.print(f"job {final.state}: {final.error}")
                    raise typer.Exit(1)
    except FleetgridError as exc:
        _fail(exc)


def _setting(text: str) -> tuple[list[str], Any]:
    """``local.steps=50`` -> (["local", "steps"], 50): the value is read as JSON, else kept as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise InvalidInput(
            f"--set {text!r}: expected KEY=VALUE, e.g. --set local.steps=50 or --set rounds.deadline_s=120"
        )
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.split("."), value


def _nested(pairs: list[tuple[list[str], Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in pairs:
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InvalidInput(f"--set {'.'.join(path)}: {part} was already given a value")
        node[path[-1]] = value
    return out


@submit_app.command("train")
def submit_train(
    model: Annotated[str, typer.Option(help="Trainable model: 'mnist1d-cnn' or 'charlm'")] = "mnist1d-cnn",
    strategy: Annotated[str, typer.Option(help="fedavg, diloco or fedbuff")] = "fedavg",
    rounds: Annotated[int, typer.Option(help="Global versions to train for")] = 10,
    dataset: Annotated[str | None, typer.Option(help="mnist1d or stdlib_text (default: the model's)")] = None,
    shards: Annotated[int, typer.Option(help="Shards the data is split into (one per car)")] = 8,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration of the label split (mnist1d)")] = 0.5,
    steps: Annotated[int | None, typer.Option(help="H: local steps per round on each car")] = None,
    bits: Annotated[int | None, typer.Option(help="Quantize updates and model deltas to 4 or 8 bits")] = None,
    clients: Annotated[int | None, typer.Option(help="Reports wanted per round")] = None,
    target_accuracy: Annotated[float | None, typer.Option(help="Stop once held-out accuracy reaches this")] = None,
    setting: Annotated[list[str] | None, typer.Option("--set", help="Strategy setting KEY=VALUE, dotted for "
                                                         "nested ones, e.g. local.lr=0.02 (repeatable)")] = None,
    name: str = "",
    wait: Annotated[bool, typer.Option(help="Follow the job, then save the trained model")] = False,
    out: Annotated[Path | None, typer.Option(help="Where --wait saves the model (.safetensors)")] = None,
    url: Url = DEFAULT_URL, token: Token = None, data_dir: DataDir = Path("fleetgrid-data"), ca: CA = None,
) -> None:
    """Submit a federated training job: each car trains on data it derives itself; only compressed updates travel."""
    try:
        pairs = [_setting(t) for t in setting or []]
        if steps is not None:
            pairs.append((["local", "steps"], steps))
        if bits is not None:
            pairs += [(["local", "compression", "bits"], bits), (["downlink", "bits"], bits)]
        if clients is not None:
            pairs.append((["rounds", "clients_per_round"], clients))
        data = {"dataset": dataset or ("stdlib_text" if model == "charlm" else "mnist1d"),
                "num_vehicles": shards, "alpha": alpha}
        target = {"accuracy": target_accuracy} if target_accuracy is not None else None
        with _client(url, token, data_dir, ca) as client:
            status = client.submit_train(model, data=data, strategy=strategy, settings=_nested(pairs),
                                         rounds=rounds, target_metric=target, name=name)
            console.print(f"submitted {status.job_id}: {strategy} on {model}, {rounds} rounds over {shards} shards")
            if wait:
                final = _watch_training(client, status.job_id)
                if final.state != "done":
                    err.print(f"job {final.state}: {final.error}")
                    raise typer.Exit(1)
                path = out or Path(f"{status.job_id}.safetensors")
                path.write_bytes(client.result_bytes(status.job_id))
                console.print(f"model saved to {path}")
    except FleetgridError as exc:
        _fail(exc)


def _watch_training(client, job_id: str):
    """Print each new global version's held-out metrics as it lands."""
    shown = 0

    def update(s) -> None:
        nonlocal shown
        rows = s.training.history if s.training else []
        for row in rows[shown:]:
            acc, loss = row.get("accuracy"), row.get("loss")
            console.print(f"version {row.get('version')}: accuracy {acc if acc is None else f'{acc:.3f}'}  "
                          f"loss {loss if loss is None else f'{loss:.3f}'}  "
                          f"reports {row.get('used', '-')}  "
                          f"up {s.training.bytes_up:,} B  down {s.training.bytes_down:,} B")
        shown = len(rows)

    return client.wait(job_id, on_update=update, poll_s=1.0)


def _watch(client, job_id: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task(job_id, total=None)

        def update(s) -> None:
            progress.update(task, total=s.units_total, completed=s.units_done,
                            description=f"{job_id} {s.state} re-issued={s.reissued_units}")

        return client.wait(job_id, on_update=update)


def _job_table(jobs) -> Table:
    table = Table("job", "name", "model", "state", "items", "units", "in flight", "re-issued", "preempted")
    for j in jobs:
        table.add_row(j.job_id, j.name, j.model, j.state, str(j.items), f"{j.units_done}/{j.units_total}",
                      str(j.units_in_flight), str(j.reissued_units), str(j.preemptions))
    return table


@app.command()
def status(
    job_id: Annotated[str | None, typer.Argument(help="A job id; omit to list your jobs")] = None,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL, token: Token = None, data_dir: DataDir = Path("fleetgrid-data"), ca: CA = None,
) -> None:
    """Show one job, or all of yours."""
    try:
        with _client(url, token, data_dir, ca) as client:
            jobs = [client.job(job_id)] if job_id else client.jobs()
    except FleetgridError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps([j.model_dump(mode="json") for j in jobs], indent=2))
    else:
        console.print(_job_table(jobs))


@app.command()
def result(
    job_id: str,
    out: Annotated[
        Path, typer.Option(help="Where to save the result (.npy; .safetensors for training)")
    ] = Path("result.npy"),
    url: Url = DEFAULT_URL, token: Token = None, data_dir: DataDir = Path("fleetgrid-data"), ca: CA = None,
) -> None:
    """Save a finished job's result."""
    try:
        with _client(url, token, data_dir, ca) as client:
            out.write_bytes(client.result_bytes(job_id))
    except FleetgridError as exc:
        _fail(exc)
    console.print(f"saved {out}")


@app.command()
def cancel(job_id: str, url: Url = DEFAULT_URL, token: Token = None, data_dir: DataDir = Path("fleetgrid-data"),
           ca: CA = None) -> None:
    """Cancel a queued or running job."""
    try:
        with _client(url, token, data_dir, ca) as client:
            console.print(_job_table([client.cancel(job_id)]))
    except FleetgridError as exc:
        _fail(exc)


@app.command()
def fleet(as_json: AsJson = False, url: Url = DEFAULT_URL, token: Token = None,
          data_dir: DataDir = Path("fleetgrid-data"), ca: CA = None) -> None:
    """Operator view: vehicles by state, eligible now, work in flight (needs the operator token)."""
    try:
        with _client(url, token, data_dir, ca, operator=True) as client:
            overview, vehicles = client.fleet(), client.vehicles()
    except FleetgridError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(overview.model_dump(mode="json"), indent=2))
        return
    console.print(f"vehicles {overview.vehicles}  online {overview.online}  eligible now {overview.eligible_now}  "
                  f"leases in flight {overview.leases_in_flight}  units pending {overview.units_pending}")
    console.print(f"by state: {overview.by_state}   jobs: {overview.jobs}")
    table = Table("vehicle", "name", "hw", "drive", "soc", "network", "eligible", "leases")
    for v in vehicles:
        table.add_row(v.vehicle_id, v.name, v.hardware, v.drive or "-", f"{v.soc:.2f}" if v.soc is not None else "-",
                      v.network or "-", "yes" if v.eligible else "no", str(v.active_leases))
    console.print(table)


@app.command()
def models() -> None:
    """List the built-in models."""
    from .models.registry import list_models

    table = Table("name", "input", "item shape", "output", "description")
    for m in list_models():
        table.add_row(m.name, m.input_kind, str(m.item_shape or "from file"), str(m.output_shape or "from file"),
                      m.description)
    console.print(table)


@app.command()
def corpus(out: Annotated[Path, typer.Option(help="JSON Lines file to write")] = Path("corpus.jsonl"),
           limit: Annotated[int | None, typer.Option(help="At most this many texts")] = None) -> None:
    """Write a real text corpus (the Python standard library's docstrings) as JSON Lines."""
    from .data.corpus import stdlib_docstrings

    texts = stdlib_docstrings(limit=limit)
    out.write_text("".join(json.dumps(t) + "\n" for t in texts))
    console.print(f"wrote {len(texts)} texts to {out}")


def _register_subcommands() -> None:
    """Commands whose code lives in their own packages (each imports its heavy parts only when run)."""
    from .agent.cli import agent_command
    from .demo import demo_command
    from .sim.cli import simulate

    app.command("agent", help="Run the vehicle agent: take work only while the car is free.")(agent_command)
    app.command("simulate", help="Simulate what a fleet of parked cars delivers, hour by hour.")(simulate)
    app.command("demo", help="The main job: coordinator + N cars + a MiniLM embedding job, end to end.")(demo_command)


_register_subcommands()


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
