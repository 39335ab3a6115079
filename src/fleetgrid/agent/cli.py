"""``fleetgrid agent``: the command-line face of :func:`fleetgrid.agent.runtime.run_agent`.

Only argument parsing lives here; the lead's CLI registers :func:`agent_command` as a typer command, and
``python -m fleetgrid.agent`` runs it on its own.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fleetgrid.errors import FleetgridError, InvalidInput

if TYPE_CHECKING:
    from fleetgrid.agent.statedir import AgentStats

__all__ = ["agent_command", "configure_logging", "parse_hours"]

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_CHATTY = ("httpx", "httpcore")
"""Libraries that log every request at INFO: one line per heartbeat would bury the agent's own lines."""


def parse_hours(text: str) -> tuple[int, int]:
    """``"22-7"`` -> ``(22, 7)``: the owner's allowed local hours, wrapping past midnight when start > end."""
    start, sep, end = text.partition("-")
    try:
        if not sep:
            raise ValueError
        return int(start), int(end)
    except ValueError:
        raise InvalidInput(f"--hours {text!r} is not START-END in whole hours, e.g. 22-7 or 0-24") from None


class _EventLines(logging.Formatter):
    """``12:01:05 enrolled as vehicle v-3b46``, with ``warning:`` or ``error:`` before what needs attention."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        prefix = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        return f"{record.asctime} {prefix}{record.message}"


def configure_logging(level: str) -> None:
    """One short line per agent event on stderr; per-request HTTP lines and logger names only at DEBUG."""
    name = level.upper()
    if name not in _LEVELS:
        raise InvalidInput(f"--log-level {level!r}; expected one of {', '.join(_LEVELS)} (any case)")
    debug = name == "DEBUG"
    handler = logging.StreamHandler()
    if debug:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    else:
        handler.setFormatter(_EventLines("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=name, handlers=[handler], force=True)
    for chatty in _CHATTY:
        logging.getLogger(chatty).setLevel(logging.DEBUG if debug else logging.WARNING)


def _read_policy(path: Path) -> dict[str, Any]:
    """The owner policy file as a dict, or InvalidInput naming the file and what it should hold."""
    accepted = 'a JSON object of owner policy fields, e.g. {"min_soc": 0.5, "allowed_hours": [22, 7]}'
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"policy file {path} cannot be read ({exc.strerror}); expected {accepted}") from exc
    except ValueError as exc:
        raise InvalidInput(f"policy file {path} is not valid JSON ({exc}); expected {accepted}") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"policy file {path} holds a JSON {type(data).__name__}; expected {accepted}")
    from fleetgrid.vehicle.policy import OwnerPolicy

    try:
        OwnerPolicy.from_json(data)  # the file on its own, so that its mistakes are reported as the file's
    except InvalidInput as exc:
        raise InvalidInput(f"policy file {path}: {exc.message}") from exc
    return data


def _summary_line(stats: AgentStats, state_dir: Path) -> str:
    """What one run did, in one line: the whole record is in ``state_dir/stats.json``."""
    mb = 1e6
    return (
        f"agent stopped: {stats.leases} lease{'' if stats.leases == 1 else 's'} ({stats.leases_done} done, "
        f"{stats.preemptions} preempted, {stats.unit_failures} failed), {stats.items_done} items, "
        f"{stats.compute_s:.1f} s of compute, "
        f"{stats.wifi_bytes / mb:.1f} MB over Wi-Fi, {stats.cellular_bytes / mb:.1f} MB over cellular; "
        f"details in {state_dir / 'stats.json'}"
    )


def agent_command(
    coordinator: Annotated[str, typer.Option(envvar="FLEETGRID_URL", help="Coordinator base URL.")] = (
        "http://127.0.0.1:8787"
    ),
    state_dir: Annotated[Path, typer.Option(help="Credential, key, data plan, stats, models (kept 0600/0700).")] = Path(
        "fleetgrid-agent"
    ),
    enroll_token: Annotated[
        str | None, typer.Option(
            envvar="FLEETGRID_ENROLL_TOKEN",
            help="Enrollment token from the operator (`fleetgrid operator enrollment-tokens issue`: single-use "
            "unless issued for more); needed only to enroll. Enrolling makes the car's key, STATE_DIR/car_key.pem.")
    ] = None,
    name: Annotated[str, typer.Option(help="The car's display name.")] = "fleetgrid-car",
    hardware: Annotated[str, typer.Option(help="Hardware profile: hw3, ai4 or ai5.")] = "ai4",
    bus: Annotated[str, typer.Option(help="Vehicle bus: manual, synthetic:SEED, trace:FILE#VEHICLE_ID.")] = "manual",
    clock_speed: Annotated[float, typer.Option(help="Simulated seconds per wall second (1440: a day a minute).")] = 1.0,
    clock_start: Annotated[
        float | None, typer.Option(help="Simulated epoch seconds at --clock-origin (default: now).")
    ] = None,
    clock_origin: Annotated[
        float | None, typer.Option(help="Wall epoch seconds where the simulated clock starts (default: now).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="Torch threads in the worker (default: torch's).")] = None,
    policy: Annotated[Path | None, typer.Option(help="Owner policy JSON file (OwnerPolicy fields).")] = None,
    min_soc: Annotated[float | None, typer.Option(help="Stop below this state of charge on battery.")] = None,
    hours: Annotated[str | None, typer.Option(help="Allowed local hours START-END, e.g. 22-7.")] = None,
    plugged_in_only: Annotated[bool, typer.Option("--plugged-in-only", help="Work only while plugged in.")] = False,
    cellular_cap_mb: Annotated[float | None, typer.Option(help="Monthly cellular cap in MiB.")] = None,
    no_cellular: Annotated[bool, typer.Option("--no-cellular", help="Never move bytes over cellular.")] = False,
    heartbeat: Annotated[float, typer.Option(help="Wall seconds between heartbeats.")] = 15.0,
    lease_wait: Annotated[float, typer.Option(help="Long-poll wall seconds per lease request (<= 60).")] = 10.0,
    progress_interval: Annotated[float, typer.Option(help="Wall seconds between progress reports.")] = 10.0,
    max_units: Annotated[int | None, typer.Option(help="Exit after this many units.")] = None,
    ca: Annotated[Path | None, typer.Option(envvar="FLEETGRID_CA", help="CA bundle for a TLS coordinator.")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Do not verify the coordinator's TLS certificate (tests only).")
    ] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG (adds every HTTP request), INFO, WARNING or ERROR.")] = "INFO",
    as_json: Annotated[bool, typer.Option("--json", help="At exit, print the run's stats as one JSON object.")] = False,
) -> None:
    """Run the vehicle agent: take work only while the car is free, give the computer back the instant it is not."""
    from fleetgrid.agent.config import AgentConfig
    from fleetgrid.agent.runtime import run_agent
    from fleetgrid.clock import Clock, ScaledClock, WallClock
    from fleetgrid.vehicle.bus import load_bus
    from fleetgrid.vehicle.policy import OwnerPolicy

    try:
        configure_logging(log_level)
        owner = _read_policy(policy) if policy is not None else {}
        overrides = {
            "min_soc": min_soc,
            "allowed_hours": parse_hours(hours) if hours else None,
            "plugged_in_only": plugged_in_only or None,
            "monthly_cellular_cap_bytes": int(cellular_cap_mb * 1024**2) if cellular_cap_mb is not None else None,
            "allow_cellular": False if no_cellular else None,
        }
        owner.update({key: value for key, value in overrides.items() if value is not None})
        clock: Clock
        if clock_speed == 1.0 and clock_start is None:
            clock = WallClock()
        else:
            clock = ScaledClock(clock_speed, start=time.time() if clock_start is None else clock_start,
                                wall_origin=clock_origin)
        config = AgentConfig(
            coordinator=coordinator, state_dir=state_dir, enrollment_token=enroll_token, name=name,
            hardware=hardware, policy=OwnerPolicy.from_json(owner), heartbeat_interval_s=heartbeat,
            lease_wait_s=lease_wait, progress_interval_s=progress_interval, threads=threads,
            verify=False if insecure else (str(ca) if ca else True), max_units=max_units,
        )
        vehicle_bus = load_bus(bus, clock)
        logging.getLogger("fleetgrid.agent").info(
            "agent %r starting for %s, state in %s; Ctrl-C stops it", name, coordinator, state_dir
        )
        stats = run_agent(config, vehicle_bus, clock)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except FleetgridError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2 if 400 <= exc.status < 500 else 1) from exc
    typer.echo(json.dumps(stats.to_json()) if as_json else _summary_line(stats, state_dir))
