"""The main job, ``fleetgrid demo``: a coordinator, N cars through an accelerated day, a real embedding job and a
federated training job.

Starts the coordinator on embedded defaults (SQLite, local artifacts) and N agent processes whose simulated cars
drive, park and charge, replaying days drawn by the fleet simulator, on a shared accelerated clock. Submits
all-MiniLM-L6-v2 embeddings of a real corpus (the Python standard library's docstrings) and, alongside it, a
DiLoCo training job of the MNIST-1D CNN in which every car trains on its own non-IID shard and sends only int8
updates. Shows live progress and the held-out accuracy of every new global version; checks the embeddings
against a plain local run; prints a summary (``--json``: one JSON object, last line).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from .errors import FleetgridError, InvalidInput

__all__ = ["DemoConfig", "demo_command", "run_demo"]

#: 06:30 local on a Tuesday: the morning commute starts soon after, so cars leave mid-job and hand work back.
_DAY_START = 5 * 86400 + 6.5 * 3600


@dataclass(kw_only=True)
class DemoConfig:
    cars: int = 8
    items: int = 1200
    """Docstrings to embed."""
    max_chars: int = 200
    """Each docstring is cut to this many characters."""
    model: str = "minilm-l6-v2"
    speed: float | None = None
    """Simulated seconds per wall second; None: paced from this machine's measured speed (see :class:`Pace`)."""
    unit_items: int = 128
    """Items per work unit: two MiniLM batches, so every car gets work and a trip costs little."""
    threads: int = 1
    """Torch threads per car's worker process (and for the local reference run)."""
    seed: int = 0
    train_rounds: int = 12
    """Global versions of the training job (0: no training job)."""
    train_steps: int = 100
    """H: local steps per car per round."""
    train_bits: int = 8
    serve_replicas: int | None = None
    """Cars holding MiniLM for the OpenAI-compatible API while the jobs run; None: a quarter of the cars."""
    """Updates and model deltas travel quantized to this many bits (4 or 8)."""
    timeout_s: float | None = None
    """Give up when the jobs have not ended after this many wall seconds; None: 900 s or more on a slow machine."""
    keep: Path | None = None
    """Keep the coordinator's data and agents' state here instead of a temporary directory."""

    def __post_init__(self) -> None:
        if not 1 <= self.cars <= 64:
            raise InvalidInput(f"--cars {self.cars}: give 1 to 64 cars on one machine")
        if self.items < 1:
            raise InvalidInput(f"--items {self.items}: give at least 1 item")
        if self.speed is not None and self.speed <= 0:
            raise InvalidInput(f"--speed {self.speed}: must be > 0 simulated seconds per wall second")
        if self.serve_replicas is None:
            self.serve_replicas = self.cars // 4
        if not 0 <= self.serve_replicas < self.cars:
            raise InvalidInput(f"--serve-replicas {self.serve_replicas}: give 0 (no serving) to {self.cars - 1}, "
                               "leaving at least one car for the jobs")
        if self.train_rounds < 0:
            raise InvalidInput(f"--train-rounds {self.train_rounds}: give 0 (no training job) or more")


@dataclass(frozen=True, kw_only=True)
class Pace:
    """How fast the simulated day runs, and why: on a slow or busy machine a unit takes longer, so the day must
    run slower for a unit to fit between two trips (every trip kills the worker, and a new one reloads the model).
    """

    speed: float
    """Simulated seconds per wall second."""
    measured: bool
    """False: given with --speed."""
    worker_start_s: float
    """Wall seconds for a car's worker to import torch and load the model (timed here, scaled for contention)."""
    unit_s: float
    """Wall seconds of one unit on one car while every car computes at once."""
    parked_min: float
    """The median parked stretch between two trips in the cars' simulated day, in simulated minutes."""
    units_per_stop: float
    """Units that fit in that stretch after a worker start, at ``speed``."""

    #: Units a typical parked stretch should hold, and the margin for what the timing leaves out (HTTP, polling).
    TARGET_UNITS = 3
    MARGIN = 1.5
    #: Faster than a day a minute, trips come quicker than the coordinator's round trips.
    MAX_SPEED = 1440.0

    @classmethod
    def choose(cls, *, worker_start_s: float, unit_s: float, parked_min: float, given: float | None) -> Pace:
        needed_s = cls.MARGIN * (worker_start_s + cls.TARGET_UNITS * unit_s)
        speed = given if given is not None else min(cls.MAX_SPEED, parked_min * 60.0 / needed_s)
        fits = (parked_min * 60.0 / speed / cls.MARGIN - worker_start_s) / unit_s
        return cls(speed=round(speed, 1), measured=given is None, worker_start_s=round(worker_start_s, 2),
                   unit_s=round(unit_s, 2), parked_min=round(parked_min), units_per_stop=round(max(fits, 0.0), 1))

    def describe(self) -> str:
        day_s = 86400 / self.speed
        why = (f"a car's worker starts in ~{self.worker_start_s:.1f} s and a unit takes ~{self.unit_s:.1f} s here "
               f"with every car busy, so a median parked stretch ({self.parked_min:.0f} min) holds "
               f"~{self.units_per_stop:g} units")
        head = "measured" if self.measured else "as given by --speed"
        return f"pace x{self.speed:g} ({head}; a day in {day_s / 60:.1f} min): {why}"

    def to_json(self) -> dict[str, Any]:
        return {"speed": self.speed, "measured": self.measured, "worker_start_s": self.worker_start_s,
                "unit_s": self.unit_s, "parked_min": self.parked_min, "units_per_stop": self.units_per_stop}


def _inputs(config: DemoConfig) -> list[str]:
    from .data.corpus import stdlib_docstrings

    # The opening of each docstring (its summary) keeps the job to minutes on a 2-core machine; MiniLM truncates
    # long texts at 256 word pieces anyway.
    texts = stdlib_docstrings(limit=config.items, max_chars=config.max_chars)
    if len(texts) < config.items:
        raise FleetgridError(f"the standard library gave only {len(texts)} docstrings; use --items {len(texts)}")
    return texts


def _calibrated_buses(path: Path, cars: int, seed: int) -> list[str]:
    """One day per car from the fleet simulator's central scenario (sourced trip, plug-in and Wi-Fi behaviour),
    replayed by each car's simulated vehicle bus."""
    from .sim import load_scenario
    from .sim.traces import export_traces
    from .vehicle.schedule import load_traces

    export_traces(path, load_scenario("central"), vehicles=cars, days=1, seed=seed)
    return [f"trace:{path}#{trace.vehicle_id}" for trace in load_traces(path)]


def _median_parked_min(path: Path) -> float:
    """The median stretch between two trips over the cars' first day, in minutes (the day wraps, as replayed)."""
    from .vehicle.schedule import load_traces

    stretches = []
    for trace in load_traces(path):
        trips = sorted(trace.day(0).trips)
        if not trips:
            stretches.append(1440.0)
            continue
        ends = [end for _, end in trips]
        starts = [start for start, _ in trips[1:]] + [trips[0][0] + 1440]
        stretches += [start - end for end, start in zip(ends, starts, strict=True) if start > end]
    return float(np.median(stretches)) if stretches else 1440.0


def _time_this_machine(config: DemoConfig, texts: list[str]) -> tuple[float, float]:
    """(worker start, one unit) in wall seconds on one car's share of this machine while all cars compute.

    Loads the model and runs one batch here, on ``config.threads`` threads like a car's worker, and scales both by
    how many cars share the cores this process may use (``taskset`` limits count; other load is in the timing).
    """
    started = time.monotonic()
    from .models.registry import get_model_spec, load_runner
    from .workloads.inference import run_items

    runner = load_runner(config.model, threads=config.threads)
    loaded = time.monotonic()
    batch = get_model_spec(config.model).default_batch_size
    run_items(runner, texts[:batch], batch)
    batch_s = time.monotonic() - loaded
    sharing = max(1.0, config.cars * config.threads / _cores())
    unit_batches = -(-min(config.unit_items, config.items) // batch)
    return (loaded - started) * sharing, batch_s * unit_batches * sharing


def _cores() -> int:
    """The cores this process may run on (``taskset`` narrows them; ``os.cpu_count`` counts the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_demo(config: DemoConfig, console: Console) -> dict[str, Any]:
    """Run the demo and return its summary. On Ctrl-C, stops every process it started within ~2 s, removes its
    temporary folder (not a --keep one), says so, and re-raises KeyboardInterrupt."""
    from .localfleet import AgentProcess, CoordinatorProcess, stop_fleet

    root = config.keep or Path(tempfile.mkdtemp(prefix="fleetgrid-demo-"))
    coordinator: CoordinatorProcess | None = None
    agents: list[AgentProcess] = []
    interrupted = False
    try:
        coordinator = CoordinatorProcess(root / "coordinator").start(wait=False)
        texts = _inputs(config)
        traces = root / "traces.jsonl"
        buses = _calibrated_buses(traces, config.cars, config.seed)
        console.print(f"timing {config.model} on this machine (load, one batch) to pace the simulated day ...")
        worker_start_s, unit_s = _time_this_machine(config, texts)
        pace = Pace.choose(worker_start_s=worker_start_s, unit_s=unit_s, parked_min=_median_parked_min(traces),
                           given=config.speed)
        console.print(pace.describe())
        coordinator.wait_healthy()
        creds = coordinator.credentials()
        clock_args = ["--clock-speed", str(pace.speed), "--clock-start", str(_DAY_START),
                      "--clock-origin", str(time.time() + 2.0)]
        agents = [
            AgentProcess(coordinator.url, root / f"car-{i}", creds.enroll, name=f"car-{i}", bus=bus,
                         hardware=("ai4", "hw3")[i % 4 == 3], threads=config.threads, extra_args=clock_args).start()
            for i, bus in enumerate(buses)
        ]
        pids = [str(p.pid) for p in (a.proc for a in agents) if p is not None]
        console.print(f"coordinator {coordinator.url} (pid {coordinator.proc.pid if coordinator.proc else '?'})  "
                      f"cars {config.cars} (pids {' '.join(pids)})  corpus {len(texts)} docstrings  "
                      f"clock from Tue 06:30  data {root}", soft_wrap=True)  # a path, pids: never broken
        summary = _run_jobs(config, pace, coordinator, agents, texts, console)
    except KeyboardInterrupt:
        interrupted = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        raise
    finally:
        stop_fleet(coordinator, agents, grace_s=1.0 if interrupted else 15.0, at_once=interrupted)
        per_car = _per_car(agents)  # their stats files, before the folder goes
        if config.keep is None:
            shutil.rmtree(root, ignore_errors=True)
        if interrupted:
            console.print(f"Ctrl-C: coordinator and {len(agents)} cars stopped; "
                          + (f"kept {root}" if config.keep else f"removed {root}"), soft_wrap=True)
    summary["per_car"] = per_car
    summary["cellular_bytes"] = sum(c["cellular_bytes"] for c in per_car)
    summary["wifi_bytes"] = sum(c["wifi_bytes"] for c in per_car)
    return summary


def _run_jobs(config: DemoConfig, pace: Pace, coordinator, agents, texts: list[str],
              console: Console) -> dict[str, Any]:
    """Submit both jobs, follow them to the end, and check the embeddings against a local run."""
    from .client import FleetgridClient
    from .workloads.inference import run_local

    creds = coordinator.credentials()
    # A round waits for its cars at least as long as a few worker starts take on this machine.
    deadline_s = max(30.0, 4 * pace.worker_start_s)
    timeout_s = config.timeout_s or max(900.0, 40 * (pace.worker_start_s + pace.unit_s))
    with FleetgridClient(coordinator.url, creds.tenants["default"]) as client:
        stream = _start_serving(client, coordinator.url, creds.tenants["default"], config, texts, console)
        started = time.monotonic()
        job = client.submit(config.model, texts, unit_items=config.unit_items, name="demo: stdlib docstrings")
        train = _submit_training(client, config, deadline_s) if config.train_rounds else None
        try:
            final, trained = _watch(client, job.job_id, train, config, timeout_s, console)
        finally:
            served = _stop_serving(client, stream)
        wall = time.monotonic() - started
        for status in (final, trained):
            if status is not None and status.state != "done":
                raise FleetgridError(f"job {status.job_id} ended {status.state}: {status.error}")
        fleet_result = client.result(job.job_id)
    console.print("computing the same embeddings locally to check the fleet's result ...")
    local = run_local(config.model, texts, threads=_cores())
    return (_summary(config, final, wall, fleet_result, local) | _train_summary(trained) | served
            | {"pace": pace.to_json(), "pids": {"coordinator": coordinator.proc.pid,
                                                "cars": [a.proc.pid for a in agents]}})


SERVED_AS = "demo-embeddings"


def _start_serving(client, url: str, token: str, config: DemoConfig, texts: list[str], console: Console):
    """Deploy the model on ``serve_replicas`` cars and send it a request every quarter second through the
    official ``openai`` client while the jobs run; None when serving is off or the client is not installed."""
    if not config.serve_replicas:
        return None
    try:
        import openai  # noqa: F401 - the stream's client, an optional extra
    except ImportError:
        console.print("serving skipped: the openai client is not installed (pip install 'fleetgrid[serve]')")
        return None
    from .workloads.serving.load import RequestStream

    client.deploy(config.model, replicas=config.serve_replicas, name=SERVED_AS)
    console.print(f"serving {config.model} on {config.serve_replicas} car(s) as {SERVED_AS!r}: an openai client "
                  f"sends it a request every 0.25 s while the jobs run ({url}/v1/embeddings)")
    # A patient client (30 tries, each after the Retry-After the coordinator sends): while every car that could
    # hold the model is driving or busy finishing a unit, requests are refused, not lost.
    return RequestStream(url, token, SERVED_AS, texts, max_retries=30).start()


def _stop_serving(client, stream) -> dict[str, Any]:
    if stream is None:
        return {}
    summary = stream.stop()
    with contextlib.suppress(FleetgridError):
        client.undeploy(SERVED_AS)
    return summary


def _submit_training(client, config: DemoConfig, deadline_s: float):
    """DiLoCo on the MNIST-1D CNN: one non-IID shard per car (Dirichlet alpha 1), compressed both ways."""
    bits = config.train_bits
    settings = {
        "local": {"optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 0.0, "prox_mu": 0.0,
                  "steps": config.train_steps, "batch_size": 32, "compression": {"bits": bits}},
        "downlink": {"bits": bits},
        "rounds": {"clients_per_round": max(2, config.cars // 2), "over_selection": 1.3, "min_reports": 1,
                   "deadline_s": deadline_s, "max_retries": 20},
        "outer_lr": 0.7, "outer_momentum": 0.9, "lr_decay_versions": config.train_rounds, "seed": config.seed,
    }
    data = {"dataset": "mnist1d", "num_vehicles": config.cars, "alpha": 1.0, "seed": config.seed}
    return client.submit_train("mnist1d-cnn", data=data, strategy="diloco", settings=settings,
                               rounds=config.train_rounds, name="demo: federated MNIST-1D")


def _watch(client, job_id: str, train, config: DemoConfig, timeout_s: float, console: Console):
    """Follow the embedding job (a progress bar) and the training job (a line per new global version) until both
    end; returns their final statuses."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    terminal = ("done", "failed", "cancelled")
    until = time.monotonic() + timeout_s
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=not console.is_terminal) as progress:
        embed_task = progress.add_task("embedding", total=None)
        train_task = progress.add_task("training", total=config.train_rounds) if train is not None else None
        shown = 0
        while True:
            status = client.job(job_id)
            progress.update(embed_task, total=status.units_total, completed=status.units_done,
                            description=f"embedding units  in flight {status.units_in_flight}  "
                                        f"preempted {status.preemptions}  re-issued {status.reissued_units}")
            trained = client.job(train.job_id) if train is not None else None
            if trained is not None and trained.training is not None and train_task is not None:
                t = trained.training
                for row in t.history[shown:]:
                    progress.console.print(
                        f"  training version {row['version']:>2}: held-out accuracy {row['accuracy']:.3f}"
                        + (f"  ({row.get('used')} cars, {row.get('steps')} steps)" if row["version"] else ""))
                shown = len(t.history)
                progress.update(train_task, completed=t.version,
                                description=f"training versions  up {t.bytes_up:,} B  down {t.bytes_down:,} B")
            if status.state in terminal and (trained is None or trained.state in terminal):
                return status, trained
            if time.monotonic() > until:
                raise FleetgridError(f"demo jobs still running after {timeout_s:.0f} s")
            time.sleep(0.5)


def _job_wall_s(status) -> float:
    """The job's own wall time on the coordinator, from its submission to its end."""
    return max((status.finished_at or time.time()) - status.created_at, 1e-3)


def _train_summary(trained) -> dict[str, Any]:
    if trained is None or trained.training is None:
        return {}
    t = trained.training
    wall = _job_wall_s(trained)
    return {
        "train_accuracy": round(t.history[-1]["accuracy"], 4),
        "train_rounds": t.version,
        "train_wall_s": round(wall, 2),
        "train_versions_per_min": round(t.version / wall * 60, 2),
        "train_bytes_up": t.bytes_up,
        "train_bytes_down": t.bytes_down,
        "train_accuracy_curve": [round(h["accuracy"], 4) for h in t.history],
    }


def _summary(config: DemoConfig, job, wall: float, fleet: np.ndarray, local: np.ndarray) -> dict[str, Any]:
    max_diff = float(np.max(np.abs(fleet - local))) if fleet.shape == local.shape else None
    embed_wall = _job_wall_s(job)
    return {
        "items": job.items,
        "units": job.units_total,
        "cars": config.cars,
        "wall_s": round(wall, 2),
        "embed_wall_s": round(embed_wall, 2),
        "items_per_s": round(job.items / embed_wall, 1),
        "matches_local": bool(fleet.shape == local.shape and np.allclose(fleet, local, atol=1e-4, rtol=1e-3)),
        "max_abs_diff": max_diff,
        "preemptions": job.preemptions,
        "reissued_units": job.reissued_units,
    }


def _per_car(agents) -> list[dict[str, Any]]:
    """Each car's work of both kinds, from the stats file its agent writes after every lease and at exit."""
    per_car = []
    for agent in agents:
        stats = agent.stats()
        per_car.append({
            "car": agent.name, "hardware": agent.hardware, "units": stats.get("units_done", 0),
            "items": stats.get("items_done", 0), "train_leases": stats.get("train_leases", 0),
            "train_updates": stats.get("train_updates", 0), "leases_done": stats.get("leases_done", 0),
            "preemptions": stats.get("preemptions", 0),
            "cellular_bytes": stats.get("cellular_bytes", 0), "wifi_bytes": stats.get("wifi_bytes", 0),
            "preempt_p50_ms": (stats.get("preemption_latency_ms") or {}).get("p50"),
        })
    return per_car


def _print(summary: dict[str, Any], console: Console) -> None:
    table = Table("car", "hw", "units", "items", "train leases", "updates", "preempted", "cellular B", "Wi-Fi B",
                  "preempt p50 ms")
    for c in summary["per_car"]:
        p50 = c["preempt_p50_ms"]
        table.add_row(c["car"], c["hardware"], str(c["units"]), str(c["items"]), str(c["train_leases"]),
                      str(c["train_updates"]), str(c["preemptions"]), f"{c['cellular_bytes']:,}",
                      f"{c['wifi_bytes']:,}", f"{p50:.1f}" if p50 is not None else "-")
    console.print(table)
    ok = "[green]yes[/green]" if summary["matches_local"] else "[red]NO[/red]"
    console.print(
        f"embedding: {summary['items']:,} items in {summary['embed_wall_s']} s = "
        f"[bold]{summary['items_per_s']} items/s[/bold]  units {summary['units']}  "
        f"re-issued {summary['reissued_units']}  preemptions {summary['preemptions']}  matches local run: {ok} "
        f"(max |diff| {summary['max_abs_diff']})"
    )
    if "train_accuracy" in summary:
        console.print(
            f"training: {summary['train_rounds']} versions in {summary['train_wall_s']} s "
            f"({summary['train_versions_per_min']} per min), held-out accuracy [bold]{summary['train_accuracy']:.3f}"
            f"[/bold]; updates up {summary['train_bytes_up']:,} B, models down {summary['train_bytes_down']:,} B "
            "(no training sample left any car)"
        )
    if "serve_requests" in summary:
        failed = summary["serve_failed"]
        console.print(
            f"serving: {summary['serve_requests']} requests through the openai client at {summary['serve_rps']}/s, "
            f"p50 {summary['serve_p50_ms']} ms, p99 {summary['serve_p99_ms']} ms, "
            + (f"[red]{failed} failed[/red]: {summary['serve_errors']}" if failed else "0 failed")
        )
    console.print(f"both jobs: {summary['wall_s']} s  cellular {summary['cellular_bytes']:,} B  "
                  f"Wi-Fi {summary['wifi_bytes']:,} B  pace x{summary['pace']['speed']:g}")


def demo_command(
    cars: Annotated[int, typer.Option(help="Agent processes (simulated cars)")] = 8,
    items: Annotated[int, typer.Option(help="Docstrings to embed")] = 1200,
    speed: Annotated[float | None, typer.Option(
        help="Simulated seconds per wall second (720: a day in two minutes); default: paced to this machine")] = None,
    threads: Annotated[int, typer.Option(help="Torch threads per car")] = 1,
    seed: int = 0,
    train_rounds: Annotated[int, typer.Option(help="Global versions of the federated training job (0: none)")] = 12,
    serve_replicas: Annotated[int | None, typer.Option(
        help="Cars serving MiniLM to an openai client meanwhile (0: none); default: a quarter of the cars")] = None,
    keep: Annotated[Path | None, typer.Option(help="Keep coordinator data and car state in this directory")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object, last line")] = False,
) -> None:
    """Run the main job end to end on this machine. Ctrl-C stops every process it started (exit code 130)."""
    console = Console(stderr=as_json)
    try:
        config = DemoConfig(cars=cars, items=items, speed=speed, threads=threads, seed=seed,
                            train_rounds=train_rounds, serve_replicas=serve_replicas, keep=keep)
        console.print(f"fleetgrid demo: starting a coordinator and {cars} cars for {items} docstring embeddings"
                      + (f" and {train_rounds} training versions" if train_rounds else "")
                      + " (loading torch and MiniLM takes a while on a slow machine; Ctrl-C stops it all)")
        summary = run_demo(config, console)
    except FleetgridError as exc:
        console.print(f"[red]demo failed:[/red] {exc.message}")
        raise typer.Exit(2 if isinstance(exc, InvalidInput) else 1) from None
    except KeyboardInterrupt:
        console.print("demo stopped (Ctrl-C)")
        # Every process it started is gone and its folder removed; tearing down an interpreter that loaded torch
        # and MiniLM takes seconds more (4x that on a slow machine), which is no use to someone who pressed Ctrl-C.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    _print(summary, console)
    if as_json:
        print(json.dumps(summary, default=float))
    if not summary["matches_local"]:
        raise typer.Exit(1)
