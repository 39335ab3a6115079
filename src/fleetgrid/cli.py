"""The ``fleetgrid`` command: serve, credentials, tenant, agent, submit, status, result, cancel, fleet, models,
corpus, simulate, demo, operator, owner.

Heavy imports happen inside each command, so ``fleetgrid --help`` is instant. Every bad input ends with exit code 2
and one line naming the problem and what is accepted, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from . import views
from .errors import FleetgridError, InvalidInput, TransportError

if TYPE_CHECKING:
    from .client import FleetgridClient
    from .coordinator.config import Credentials

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="fleetgrid: a fleet of parked cars as one distributed AI data center.")
submit_app = typer.Typer(no_args_is_help=True, help="Submit a job to the coordinator.")
app.add_typer(submit_app, name="submit")
tenant_app = typer.Typer(no_args_is_help=True, help="Add, list or revoke tenants (needs the operator token).")
app.add_typer(tenant_app, name="tenant")
console = Console(markup=False)  # paths, names and messages are printed as they are, never read as markup
err = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)  # one unwrapped line per message

DEFAULT_URL = "http://127.0.0.1:8787"
DEFAULT_DATA_DIR = Path("fleetgrid-data")
_STARTUP_WAIT_S = 120.0
"""How long ``credentials --wait`` waits for a coordinator to start: it imports torch first, slow on a busy machine."""
DataDir = Annotated[Path, typer.Option("--data-dir", envvar="FLEETGRID_DATA_DIR",
                                       help="Coordinator data directory (SQLite, artifacts, credentials.json).")]
Url = Annotated[str, typer.Option("--coordinator", envvar="FLEETGRID_URL", help="Coordinator base URL.")]
Token = Annotated[str | None, typer.Option("--token", envvar="FLEETGRID_TOKEN",
                                           help="Tenant (or operator) token; default: from DATA_DIR/credentials.json.")]
CA = Annotated[Path | None, typer.Option("--ca", envvar="FLEETGRID_CA", help="CA bundle to verify a TLS coordinator.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"fleetgrid {version('fleetgrid')}")
        except PackageNotFoundError:
            typer.echo("fleetgrid (version unknown: run from a source tree that is not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    _show_version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print fleetgrid's version and exit.")] = False,
) -> None:
    """fleetgrid: a fleet of parked cars as one distributed AI data center."""


def _fail(exc: FleetgridError) -> NoReturn:
    """One line on stderr (never wrapped, never read as markup), then exit 2 for bad input, 1 otherwise."""
    message = exc.message
    if isinstance(exc, TransportError) and _unreachable(exc):
        message += " (is `fleetgrid serve` running there? --coordinator URL names another)"
    err.print(Text.assemble(("error: ", "red"), message))
    raise typer.Exit(2 if 400 <= exc.status < 500 else 1)


def _unreachable(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc.__cause__, httpx.ConnectError)


def _out_path(path: Path) -> Path:
    """``path`` if a file can be written there: checked before a job is submitted and waited for, not after."""
    if path.is_dir():
        raise InvalidInput(f"--out {path} is a folder; give a file path, e.g. {path / 'result.npy'}")
    if not path.parent.is_dir():
        raise InvalidInput(f"--out {path}: folder {path.parent} does not exist; create it or give another path")
    return path


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise InvalidInput(f"cannot write {path} ({exc.strerror}); give --out a file path in a folder you may "
                           "write") from exc


def _name_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise InvalidInput(f"--tenant {text!r}: expected NAME=TOKEN, e.g. --tenant acme=fgt_secret")
    return name, value


def _credentials(data_dir: Path) -> tuple[Path, Credentials]:
    from .coordinator.config import Credentials

    path = data_dir / "credentials.json"
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist; `fleetgrid serve --data-dir {shlex.quote(str(data_dir))}` "
                           "writes it at first start (`fleetgrid credentials --wait` waits for one that is "
                           "starting), or pass --data-dir of a coordinator's data folder")
    try:
        return path, Credentials.load(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"{path} cannot be read as credentials ({type(exc).__name__}: {exc}); expected the "
                           "JSON `fleetgrid serve` writes, with enroll, operator and tenants") from exc


def _client(url: str, token: str | None, data_dir: Path, ca: Path | None, *,
            operator: bool = False) -> FleetgridClient:
    from .client import FleetgridClient

    if token is None:
        path, creds = _credentials(data_dir)
        token = creds.operator if operator else creds.tenants.get("default")
        if token is None:
            raise InvalidInput(f"no --token given and {path} has no 'default' tenant (it has "
                               f"{sorted(creds.tenants)}); pass --token")
    if ca is not None and not ca.is_file():
        raise InvalidInput(f"--ca {ca} does not exist; give the PEM certificate (or CA bundle) the coordinator "
                           "serves with --tls-cert")
    return FleetgridClient(url, token, verify=str(ca) if ca else True)


def _credentials_command(data_dir: Path) -> str:
    """The command that shows ``data_dir``'s tokens, as a user would type it."""
    if data_dir == DEFAULT_DATA_DIR:
        return "fleetgrid credentials"
    return f"fleetgrid credentials --data-dir {shlex.quote(str(data_dir))}"


def _again(args: list[str], url: str, data_dir: Path) -> str:
    """``fleetgrid ARGS`` as a user would type it, naming the coordinator and data folder this command used."""
    where = [] if url == DEFAULT_URL else ["--coordinator", url]
    where += [] if data_dir == DEFAULT_DATA_DIR else ["--data-dir", str(data_dir)]
    return shlex.join(["fleetgrid", *args, *where])


@contextlib.contextmanager
def _following(job_id: str, out: Path, url: str, data_dir: Path) -> Iterator[None]:
    """Ctrl-C while ``--wait`` follows a job stops following it, not the job: say so, say how to follow, cancel or
    fetch it, and exit 130 (as a shell does for an interrupted command)."""
    try:
        yield
    except KeyboardInterrupt:
        err.print(f"stopped following {job_id}; the job goes on running on the coordinator.")
        err.print(f"  follow it:  {_again(['status', job_id], url, data_dir)}")
        err.print(f"  cancel it:  {_again(['cancel', job_id], url, data_dir)}")
        err.print(f"  once done:  {_again(['result', job_id, '--out', str(out)], url, data_dir)}")
        raise typer.Exit(130) from None


@app.command()
def serve(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    db: Annotated[str | None, typer.Option(envvar="FLEETGRID_DB",
                                           help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB")] = None,
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="FLEETGRID_PORT", help="TCP port to listen on (0: a free one)")] = 8787,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate: serve HTTPS")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert")] = None,
    lease_ttl: Annotated[float, typer.Option(help="Seconds a lease lives without renewal")] = 60.0,
    max_artifact_bytes: Annotated[int, typer.Option(help="Largest artifact upload, in bytes")] = 2 << 30,
    max_long_poll: Annotated[float, typer.Option(help="Longest a car's request for work waits for some")] = 30.0,
    long_poll_recheck: Annotated[float, typer.Option(
        help="A waiting car is woken when work appears; it also looks again this often on its own")] = 30.0,
    enroll_token: Annotated[str | None, typer.Option(envvar="FLEETGRID_ENROLL_TOKEN",
                                                        help="Fix the fleet enrollment token")] = None,
    operator_token: Annotated[str | None, typer.Option(envvar="FLEETGRID_OPERATOR_TOKEN",
                                                       help="Fix the operator token")] = None,
    tenant: Annotated[list[str] | None,
                      typer.Option(help="NAME=TOKEN: a tenant with a fixed token (repeatable)")] = None,
    serve_hedging: Annotated[bool, typer.Option(
        help="Serving: also send a request slower than the recent p95 to a second car (<= 5% extra work)")] = True,
    verify_results: Annotated[bool, typer.Option(help="Check results on other cars; suspend cheats")] = False,
    log_format: Annotated[str, typer.Option(
        envvar="FLEETGRID_LOG_FORMAT",
        help="'text', or 'json': every log record and one line per request (with its X-Request-ID) as JSON")] = "text",
) -> None:
    """Run the coordinator (embedded SQLite and local artifacts by default).

    Tokens not fixed by options are generated at first start and written to DATA_DIR/credentials.json;
    `fleetgrid credentials` shows them."""
    from .coordinator.config import CoordinatorConfig
    from .coordinator.server import serve as run_server
    from .coordinator.store import engine_url

    try:
        tenants = dict(_name_value(t) for t in tenant or [])
        config = CoordinatorConfig(data_dir=data_dir, database_url=db, lease_ttl_s=lease_ttl,
                                   max_artifact_bytes=max_artifact_bytes, max_long_poll_s=max_long_poll,
                                   long_poll_recheck_s=long_poll_recheck, enroll_token=enroll_token,
                                   operator_token=operator_token, tenant_tokens=tenants, log_format=log_format,
                                   serve_hedging=serve_hedging, verify_results=verify_results)
        if db is not None:
            engine_url(db)  # a database URL we cannot serve fails before anything listens

        def listening(url: str) -> None:
            if log_format == "json":  # every line a JSON object, for the log pipeline
                logging.getLogger("fleetgrid.coordinator").info(
                    "listening", extra={"fields": {"url": url, "credentials": str(config.credentials_path)}})
                return
            err.print(f"fleetgrid coordinator listening on {url} (API docs: {url}/docs); Ctrl-C stops it")
            err.print(f"tokens for cars, the operator and tenants are in {config.credentials_path}; show them "
                      f"with: {_credentials_command(data_dir)}")

        run_server(config, host, port, tls_cert=tls_cert, tls_key=tls_key, on_listening=listening)
    except FleetgridError as exc:
        _fail(exc)


def _wait_for_coordinator(path: Path, url: str, ca: Path | None) -> None:
    """Return once ``path`` exists and the coordinator at ``url`` answers its health check; TransportError if that
    does not happen within ``_STARTUP_WAIT_S``."""
    import httpx
    import tenacity

    from .retry import backoff

    if not url.startswith(("http://", "https://")):
        raise InvalidInput(f"coordinator URL {url!r} must start with http:// or https://, e.g. http://127.0.0.1:8787")
    if ca is not None and not ca.is_file():
        raise InvalidInput(f"--ca {ca} does not exist; give the PEM certificate (or CA bundle) the coordinator "
                           "serves with --tls-cert")
    told = False

    def ready() -> None:
        nonlocal told
        try:
            up = path.is_file() and httpx.get(f"{url.rstrip('/')}/healthz", timeout=5.0,
                                              verify=str(ca) if ca else True).status_code == 200
        except httpx.HTTPError:
            up = False
        if up:
            return
        if not told:
            err.print(f"waiting for the coordinator at {url} to start and write {path} ...")
            told = True
        raise TransportError(f"no coordinator answered at {url} with {path} written within {_STARTUP_WAIT_S:.0f} s;"
                             " start one with `fleetgrid serve` (its --data-dir and --port must match)")

    tenacity.Retrying(retry=tenacity.retry_if_exception_type(TransportError), wait=backoff(0.1, 1.0),
                      stop=tenacity.stop_after_delay(_STARTUP_WAIT_S), reraise=True)(ready)


@app.command()
def credentials(
    which: Annotated[str | None, typer.Argument(
        help="Print only this token, bare (for scripts): 'enroll', 'operator' or a tenant's name")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print every token as one JSON object.")] = False,
    wait: Annotated[bool, typer.Option(
        "--wait", help=f"First wait (up to {_STARTUP_WAIT_S:.0f} s) for a coordinator that is starting: until it has "
        "written the file and answers at --coordinator")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR, url: Url = DEFAULT_URL, ca: CA = None,
) -> None:
    """Show the tokens `fleetgrid serve` wrote to DATA_DIR/credentials.json: enroll (for cars), operator, tenants."""
    try:
        if wait:
            _wait_for_coordinator(data_dir / "credentials.json", url, ca)
        path, creds = _credentials(data_dir)
        tokens = {**{f"tenant {n}": t for n, t in creds.tenants.items()}, "enroll": creds.enroll,
                  "operator": creds.operator}
        if which is not None:
            token = tokens.get(which) or tokens.get(f"tenant {which}")
            if token is None:
                raise InvalidInput(f"{path} holds no token {which!r}; expected 'enroll', 'operator' or a tenant: "
                                   f"{', '.join(sorted(creds.tenants)) or 'none'}")
            print(token)
            return
    except FleetgridError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps({"enroll": creds.enroll, "operator": creds.operator, "tenants": creds.tenants}, indent=2))
        return
    uses = {"enroll": "for cars: fleetgrid agent --enroll-token TOKEN", "operator": "fleetgrid fleet, tenant",
            "tenant default": "fleetgrid submit, status, result"}
    print(f"tokens in {path} (keep them secret):")
    for role in ("enroll", "operator", *(f"tenant {n}" for n in sorted(creds.tenants))):
        print(f"  {role:<15} {tokens[role]}  {uses.get(role, 'pass as --token')}")


def _tenant_name(name: str) -> str:
    """``name`` if the coordinator would accept it (the wire model's rule), else InvalidInput saying what would."""
    import pydantic

    from .protocol import TenantCreate

    try:
        TenantCreate(name=name)
    except pydantic.ValidationError:
        raise InvalidInput(f"tenant name {name!r}: expected 1 to 64 lowercase letters, digits, '-' or '_', starting "
                           "with a letter or digit, e.g. acme") from None
    return name


@tenant_app.command("add")
def tenant_add(name: Annotated[str, typer.Argument(help="The tenant's name, e.g. acme")], as_json: AsJson = False,
               url: Url = DEFAULT_URL, token: Token = None, data_dir: DataDir = DEFAULT_DATA_DIR,
               ca: CA = None) -> None:
    """Create a tenant and print its token: shown this once, the coordinator keeps only its hash."""
    try:
        with _client(url, token, data_dir, ca, operator=True) as client:
            secret = client.add_tenant(_tenant_name(name))
    except FleetgridError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps({"tenant": name, "token": secret}))
        return
    print(secret)
    err.print(f"tenant {name!r} added; its token above is shown only now: give it to fleetgrid submit, status and "
              "result as --token or FLEETGRID_TOKEN")


@tenant_app.command("list")
def tenant_list(as_json: AsJson = False, url: Url = DEFAULT_URL, token: Token = None,
                data_dir: DataDir = DEFAULT_DATA_DIR, ca: CA = None) -> None:
    """List the tenants, revoked ones included."""
    try:
        with _client(url, token, data_dir, ca, operator=True) as client:
            tenants = client.tenants()
    except FleetgridError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps([t.model_dump(mode="json") for t in tenants], indent=2))
        return
    console.print(views.tenant_table(tenants))


@tenant_app.command("revoke")
def tenant_revoke(name: Annotated[str, typer.Argument(help="The tenant whose token stops working")],
                  url: Url = DEFAULT_URL, token: Token = None, data_dir: DataDir = DEFAULT_DATA_DIR,
                  ca: CA = None) -> None:
    """Revoke a tenant's token at once; the jobs it submitted are left as they are."""
    try:
        with _client(url, token, data_dir, ca, operator=True) as client:
            client.revoke_tenant(_tenant_name(name))
    except FleetgridError as exc:
        _fail(exc)
    console.print(f"tenant {name!r} revoked: its token no longer works")


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
    url: Url = DEFAULT_URL, token: Token = None, data_dir: DataDir = DEFAULT_DATA_DIR, ca: CA = None,
) -> None:
    """Submit a batch-inference job."""
    try:
        if not inputs.is_file():
            raise InvalidInput(f"inputs file {inputs} does not exist; give a .npy or .jsonl file")
        fmt = {".npy": "npy", ".jsonl": "jsonl"}.get(inputs.suffix)
        if fmt is None:
            raise InvalidInput(f"inputs file {inputs.name} must end in .npy or .jsonl")
        if model_file is not None and not model_file.is_file():
            raise InvalidInput(f"--model-file {model_file} does not exist; give the path of your TorchScript "
                               "(torch.jit.save, .pt) or torch.export (torch.export.save, .pt2) file")
        if not 1 <= quorum <= replicas:
            raise InvalidInput(f"--quorum {quorum} with --replicas {replicas}: expected 1 <= --quorum <= --replicas, "
                               "e.g. --replicas 3 --quorum 2")
        if wait and out is not None:
            _out_path(out)
        with _client(url, token, data_dir, ca) as client:
            status = client.submit(model, inputs.read_bytes(), input_format=fmt,
                                   model_file=model_file, unit_items=unit_items, batch_size=batch_size,
                                   redundancy={"replicas": replicas, "quorum": quorum}, name=name or inputs.name)
            console.print(f"submitted {status.job_id}: {status.items} items in {status.units_total} units")
            if wait:
                with _following(status.job_id, out or Path(f"{status.job_id}.npy"), url, data_dir):
                    final = views.watch_items(client, status.job_id, console)
                if final.state != "done":
                    err.print(f"job {final.state}: {final.error}")
                    raise typer.Exit(1)
                path = out or Path(f"{status.job_id}.npy")
                _write(path, client.result_bytes(status.job_id))
                console.print(f"result saved to {path}")
    except FleetgridError as exc:
        _fail(exc)


@app.command()
def status(
    job_id: Annotated[str | None, typer.Argument(help="A job id; omit to list your jobs")] = None,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL, token: Token = None, data_dir: DataDir = DEFAULT_DATA_DIR, ca: CA = None,
) -> None:
    """Show one job, or all of yours."""
    try:
        with _client(url, token, data_dir, ca) as client:
            jobs = [client.job(job_id)] if job_id else client.jobs()
    except FleetgridError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps([j.model_dump(mode="json") for j in jobs], indent=2))
        return
    console.print(views.job_table(jobs))
    for line in views.training_lines(jobs[0]) if job_id else []:
        console.print(line, highlight=False, soft_wrap=True)


@app.command()
def result(
    job_id: str,
    out: Annotated[
        Path, typer.Option(help="Where to save the result (.npy; .safetensors for training)")
    ] = Path("result.npy"),
    url: Url = DEFAULT_URL, token: Token = None, data_dir: DataDir = DEFAULT_DATA_DIR, ca: CA = None,
) -> None:
    """Save a finished job's result."""
    try:
        _out_path(out)
        with _client(url, token, data_dir, ca) as client:
            _write(out, client.result_bytes(job_id))
    except FleetgridError as exc:
        _fail(exc)
    console.print(f"saved {out}")


@app.command()
def cancel(job_id: str, url: Url = DEFAULT_URL, token: Token = None, data_dir: DataDir = DEFAULT_DATA_DIR,
           ca: CA = None) -> None:
    """Cancel a queued or running job."""
    try:
        with _client(url, token, data_dir, ca) as client:
            console.print(views.job_table([client.cancel(job_id)]))
    except FleetgridError as exc:
        _fail(exc)


@app.command()
def fleet(as_json: AsJson = False, url: Url = DEFAULT_URL, token: Token = None,
          data_dir: DataDir = DEFAULT_DATA_DIR, ca: CA = None) -> None:
    """Operator view: vehicles by state, eligible now, work in flight (needs the operator token)."""
    try:
        with _client(url, token, data_dir, ca, operator=True) as client:
            overview, vehicles = client.fleet(), client.vehicles()
    except FleetgridError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(overview.model_dump(mode="json"), indent=2))
        return
    console.print(views.fleet_table(overview))
    if vehicles:
        console.print(views.vehicle_table(vehicles))
    else:
        console.print("no vehicles enrolled yet; a car joins with: fleetgrid agent --enroll-token "
                      f"$({_credentials_command(data_dir)} enroll)")


@app.command()
def models() -> None:
    """List the models jobs can name (no model is loaded to list them)."""
    from .models.registry import list_models

    console.print(views.model_table(list_models()))


@app.command()
def corpus(out: Annotated[Path, typer.Option(help="JSON Lines file to write")] = Path("corpus.jsonl"),
           limit: Annotated[int | None, typer.Option(help="At most this many texts")] = None) -> None:
    """Write a real text corpus (the Python standard library's docstrings) as JSON Lines."""
    from .data.corpus import stdlib_docstrings

    try:
        _out_path(out)
        texts = stdlib_docstrings(limit=limit)
        _write(out, "".join(json.dumps(t) + "\n" for t in texts).encode())
    except FleetgridError as exc:
        _fail(exc)
    console.print(f"wrote {len(texts)} texts to {out}")


def _register_subcommands() -> None:
    """Commands whose code lives in their own packages (each imports its heavy parts only when run)."""
    from importlib import import_module

    from .agent.cli import agent_command
    from .demo import demo_command
    from .sim.cli import simulate

    app.command("agent", help="Run the vehicle agent: take work only while the car is free.")(agent_command)
    app.command("simulate", help="Simulate what a fleet of parked cars delivers, hour by hour.")(simulate)
    app.command("demo", help="The main job: coordinator + N cars + a MiniLM embedding job, end to end.")(demo_command)
    # billing's makes `operator`; train_cli adds `submit train`
    for module in ("billing.cli", "workloads.serving.cli", "identity.cli", "trust_cli", "train_cli"):
        import_module(f"fleetgrid.{module}").register(app)


_register_subcommands()


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch threads that sleep, not spin (see agent/worker.py)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
