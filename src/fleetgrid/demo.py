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

import json
import os
import shutil
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
    speed: float = 720.0
    """Simulated seconds per wall second: 720 plays a day in two minutes (1440: a day a minute). Every trip
    stops a car's worker, and a restarted worker reloads the model: on 2 cores, faster days mostly reload."""
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
    """Updates and model deltas travel quantized to this many bits (4 or 8)."""
    timeout_s: float = 900.0
    keep: Path | None = None
    """Keep the coordinator's data and agents' state here instead of a temporary directory."""

    def __post_init__(self) -> None:
        if not 1 <= self.cars <= 64:
            raise InvalidInput(f"--cars {self.cars}: give 1 to 64 cars on one machine")
        if self.items < 1:
            raise InvalidInput(f"--items {self.items}: give at least 1 item")
        if self.speed <= 0:
            raise InvalidInput(f"--speed {self.speed}: must be > 0 simulated seconds per wall second")
        if self.train_rounds < 0:
            raise InvalidInput(f"--train-rounds {self.train_rounds}: give 0 (no training job) or more")


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


def run_demo(config: DemoConfig, console: Console) -> dict[str, Any]:
    from .client import FleetgridClient
    from .localfleet import AgentProcess, CoordinatorProcess
    from .workloads.inference import run_local

    root = config.keep or Path(tempfile.mkdtemp(prefix="fleetgrid-demo-"))
    texts = _inputs(config)
    coordinator = CoordinatorProcess(root / "coordinator").start()
    creds = coordinator.credentials()
    clock_args = ["--clock-speed", str(config.speed), "--clock-start", str(_DAY_START),
                  "--clock-origin", str(time.time() + 2.0)]
    buses = _calibrated_buses(root / "traces.jsonl", config.cars, config.seed)
    agents = [
        AgentProcess(coordinator.url, root / f"car-{i}", creds.enroll, name=f"car-{i}", bus=bus,
                     hardware=("ai4", "hw3")[i % 4 == 3], threads=config.threads, extra_args=clock_args).start()
        for i, bus in enumerate(buses)
    ]
    try:
        console.print(f"coordinator {coordinator.url}  cars {config.cars}  corpus {len(texts)} docstrings  "
                      f"clock x{config.speed:g} from Tue 06:30  data {root}")
        with FleetgridClient(coordinator.url, creds.tenants["default"]) as client:
            started = time.monotonic()
            job = client.submit(config.model, texts, unit_items=config.unit_items, name="demo: stdlib docstrings")
            train = _submit_training(client, config) if config.train_rounds else None
            final, trained = _watch(client, job.job_id, train, config, console)
            wall = time.monotonic() - started
            for status in (final, trained):
                if status is not None and status.state != "done":
                    raise FleetgridError(f"job {status.job_id} ended {status.state}: {status.error}")
            fleet_result = client.result(job.job_id)
        console.print("computing the same embeddings locally to check the fleet's result ...")
        local = run_local(config.model, texts, threads=os.cpu_count())
    finally:
        for agent in agents:
            agent.stop()
        coordinator.stop()
    summary = _summary(config, final, wall, fleet_result, local, agents) | _train_summary(trained)
    if config.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return summary


def _submit_training(client, config: DemoConfig):
    """DiLoCo on the MNIST-1D CNN: one non-IID shard per car (Dirichlet alpha 1), compressed both ways."""
    bits = config.train_bits
    settings = {
        "local": {"optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "steps": config.train_steps, "batch_size": 32,
                  "compression": {"bits": bits}},
        "downlink": {"bits": bits},
        "rounds": {"clients_per_round": max(2, config.cars // 2), "over_selection": 1.3, "min_reports": 1,
                   "deadline_s": 30.0, "max_retries": 20},
        "outer_lr": 0.7, "outer_momentum": 0.9, "lr_decay_versions": config.train_rounds, "seed": config.seed,
    }
    data = {"dataset": "mnist1d", "num_vehicles": config.cars, "alpha": 1.0, "seed": config.seed}
    return client.submit_train("mnist1d-cnn", data=data, strategy="diloco", settings=settings,
                               rounds=config.train_rounds, name="demo: federated MNIST-1D")


def _watch(client, job_id: str, train, config: DemoConfig, console: Console):
    """Follow the embedding job (a progress bar) and the training job (a line per new global version) until both
    end; returns their final statuses."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    terminal = ("done", "failed", "cancelled")
    until = time.monotonic() + config.timeout_s
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
                raise FleetgridError(f"demo jobs still running after {config.timeout_s:.0f} s")
            time.sleep(0.5)


def _train_summary(trained) -> dict[str, Any]:
    if trained is None or trained.training is None:
        return {}
    t = trained.training
    return {
        "train_accuracy": round(t.history[-1]["accuracy"], 4),
        "train_rounds": t.version,
        "train_bytes_up": t.bytes_up,
        "train_bytes_down": t.bytes_down,
        "train_accuracy_curve": [round(h["accuracy"], 4) for h in t.history],
    }


def _summary(config: DemoConfig, job, wall: float, fleet: np.ndarray, local: np.ndarray, agents) -> dict[str, Any]:
    max_diff = float(np.max(np.abs(fleet - local))) if fleet.shape == local.shape else None
    per_car = []
    for agent in agents:
        stats = agent.stats()
        per_car.append({
            "car": agent.name, "hardware": agent.hardware, "units": stats.get("units_done", 0),
            "items": stats.get("items_done", 0), "preemptions": stats.get("preemptions", 0),
            "cellular_bytes": stats.get("cellular_bytes", 0), "wifi_bytes": stats.get("wifi_bytes", 0),
            "preempt_p50_ms": (stats.get("preemption_latency_ms") or {}).get("p50"),
        })
    return {
        "items": job.items,
        "units": job.units_total,
        "cars": config.cars,
        "wall_s": round(wall, 2),
        "items_per_s": round(job.items / wall, 1),
        "matches_local": bool(fleet.shape == local.shape and np.allclose(fleet, local, atol=1e-4, rtol=1e-3)),
        "max_abs_diff": max_diff,
        "preemptions": job.preemptions,
        "reissued_units": job.reissued_units,
        "cellular_bytes": sum(c["cellular_bytes"] for c in per_car),
        "wifi_bytes": sum(c["wifi_bytes"] for c in per_car),
        "per_car": per_car,
    }


def _print(summary: dict[str, Any], console: Console) -> None:
    table = Table("car", "hw", "units", "items", "preempted", "cellular bytes", "Wi-Fi bytes", "preempt p50 ms")
    for c in summary["per_car"]:
        p50 = c["preempt_p50_ms"]
        table.add_row(c["car"], c["hardware"], str(c["units"]), str(c["items"]), str(c["preemptions"]),
                      f"{c['cellular_bytes']:,}", f"{c['wifi_bytes']:,}", f"{p50:.1f}" if p50 is not None else "-")
    console.print(table)
    ok = "[green]yes[/green]" if summary["matches_local"] else "[red]NO[/red]"
    console.print(
        f"items {summary['items']:,} in {summary['wall_s']} s = [bold]{summary['items_per_s']} items/s[/bold]  "
        f"units {summary['units']}  re-issued {summary['reissued_units']}  preemptions {summary['preemptions']}\n"
        f"cellular {summary['cellular_bytes']:,} B  Wi-Fi {summary['wifi_bytes']:,} B  "
        f"matches local run: {ok} (max |diff| {summary['max_abs_diff']})"
    )
    if "train_accuracy" in summary:
        console.print(
            f"training: {summary['train_rounds']} versions, held-out accuracy [bold]{summary['train_accuracy']:.3f}"
            f"[/bold]; updates up {summary['train_bytes_up']:,} B, models down {summary['train_bytes_down']:,} B "
            "(no training sample left any car)"
        )


def demo_command(
    cars: Annotated[int, typer.Option(help="Agent processes (simulated cars)")] = 8,
    items: Annotated[int, typer.Option(help="Docstrings to embed")] = 1200,
    speed: Annotated[float, typer.Option(help="Simulated seconds per wall second (720: a day in two minutes)")] = 720.0,
    threads: Annotated[int, typer.Option(help="Torch threads per car")] = 1,
    seed: int = 0,
    train_rounds: Annotated[int, typer.Option(help="Global versions of the federated training job (0: none)")] = 12,
    keep: Annotated[Path | None, typer.Option(help="Keep coordinator data and car state in this directory")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object, last line")] = False,
) -> None:
    """Run the main job end to end on this machine."""
    console = Console(stderr=as_json)
    try:
        summary = run_demo(DemoConfig(cars=cars, items=items, speed=speed, threads=threads, seed=seed,
                                      train_rounds=train_rounds, keep=keep), console)
    except FleetgridError as exc:
        console.print(f"[red]demo failed:[/red] {exc.message}")
        raise typer.Exit(2 if isinstance(exc, InvalidInput) else 1) from None
    _print(summary, console)
    if as_json:
        print(json.dumps(summary, default=float))
    if not summary["matches_local"]:
        raise typer.Exit(1)
