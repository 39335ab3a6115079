"""Federated training through the real coordinator and agents vs centralized training vs Flower's FedAvg.

One run, same model (MNIST-1D CNN), same data and Dirichlet split over the same cars, same seeds:

- ``centralized``: the model trained on all the training data in this process (the limit);
- ``fleetgrid_fedavg``, ``fleetgrid_diloco_int8``, ``fleetgrid_diloco_int4``: jobs submitted to a real
  coordinator process and trained by real agent processes, half of whose cars drive off at random moments (their
  vehicle bus replays short trips), so their workers are killed mid-round and hand back partial work;
- ``flower_fedavg``: Flower's FedAvg on its Ray simulation (the ``bench`` extra), same model, split, local steps.

For each: held-out ``accuracy``, ``bytes_up``, ``bytes_down`` (every byte of every update and model download the
coordinator served, framing included), ``wall_s``, ``peak_rss_mb`` (the whole process tree), and
``sync_dp_bytes``: what synchronous data-parallel training moves for the same optimizer steps (each step, every
worker sends and receives its float32 gradient: a ring all-reduce moves ~2x the model per worker, so
``2 x params x 4 B x steps``). Prints a table and, with ``--json``, one JSON object on the last line.

    python bench/training.py --json

Any point of ``bench/training_matrix.py``'s MNIST-1D matrix runs end to end through real processes with
``--alpha`` (Dirichlet concentration of the label split), ``--cars`` (agent processes; half of them take trips)
and ``--seed`` (data, split, the strategies' seed and the trips), e.g. 16 cars at alpha 0.3, seed 7:

    python bench/training.py --alpha 0.3 --cars 16 --clients 10 --seed 7 --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))

import torch
from rss import TreeRssSampler

from fleetgrid.client import FleetgridClient
from fleetgrid.localfleet import AgentProcess, CoordinatorProcess
from fleetgrid.vehicle.schedule import DaySchedule, VehicleTrace, save_traces
from fleetgrid.workloads.training import DataSpec, FlatLayout, build_model

OUT = Path(__file__).parent / "results" / "training.json"
SPEED = 60.0  # simulated seconds per wall second: a one-minute trip stops a car for a wall second


def centralized(data: dict, steps: int, seed: int) -> dict:
    """The limit: one process, all the training data, AdamW with a cosine schedule (batch 64)."""
    from training_runs import TASKS
    from training_runs import centralized as train_centrally

    result = train_centrally(TASKS["mnist1d"], DataSpec(**data), steps, seed)
    return result | {"wall_s": result["seconds"]}


def trip_traces(path: Path, cars: int, preempted: int, mean_gap_min: float, trip_min: int, seed: int) -> list[str]:
    """Bus specs: every car parked, plugged in and on Wi-Fi all day; the first ``preempted`` cars also take
    one-minute trips at random (exponential gaps), each of which kills their worker mid-round."""
    rng = random.Random(seed)
    traces = []
    for i in range(cars):
        trips: list[tuple[int, int]] = []
        t = rng.expovariate(1 / mean_gap_min)
        while i < preempted and t + trip_min < 1440:
            start = int(t)
            trips.append((start, start + trip_min))
            t = start + trip_min + 1 + rng.expovariate(1 / mean_gap_min)
        parked = _gaps(trips)
        traces.append(VehicleTrace(f"bench-{i}", (DaySchedule(trips=tuple(trips), plugged=parked, wifi=parked,
                                                             soc_start=0.9),)))
    save_traces(path, traces)
    return [f"trace:{path}#bench-{i}" for i in range(cars)]


def _gaps(trips: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out, at = [], 0
    for start, end in trips:
        if start > at:
            out.append((at, start))
        at = end
    if at < 1440:
        out.append((at, 1440))
    return tuple(out)


class Fleet:
    """A coordinator and N agent processes on this machine, reused by every fleet configuration."""

    def __init__(self, root: Path, cars: int, preempted: int, mean_gap_min: float, seed: int) -> None:
        self.coordinator = CoordinatorProcess(root / "coordinator").start()
        creds = self.coordinator.credentials()
        self.token = creds.tenants["default"]
        buses = trip_traces(root / "traces.jsonl", cars, preempted, mean_gap_min, 1, seed)
        clock = ["--clock-speed", str(SPEED), "--clock-start", "0", "--clock-origin", str(time.time())]
        self.agents = []
        for i, bus in enumerate(buses):  # one at a time, so car i enrolls i-th and holds shard i
            agent = AgentProcess(self.coordinator.url, root / f"car-{i}", creds.enroll, name=f"car-{i}", bus=bus,
                                 extra_args=clock).start()
            _until(lambda a=agent: (a.state_dir / "enrollment.json").exists() or not a.alive(), 60)
            self.agents.append(agent)

    def stats(self) -> list[dict]:
        return [a.stats() for a in self.agents]

    def close(self) -> None:
        for agent in self.agents:
            agent.stop()
        self.coordinator.stop()


def _until(predicate, timeout_s: float) -> None:
    until = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > until:
            raise TimeoutError(f"condition not met within {timeout_s} s")
        time.sleep(0.05)


def fleet_run(fleet: Fleet, label: str, strategy: str, settings: dict, data: dict, rounds: int,
              numel: int, timeout_s: float) -> dict:
    before = [s.get("preemptions", 0) for s in fleet.stats()]
    with TreeRssSampler() as rss, FleetgridClient(fleet.coordinator.url, fleet.token) as client:
        started = time.perf_counter()
        job = client.submit_train("mnist1d-cnn", data=data, strategy=strategy, settings=settings, rounds=rounds,
                                  name=label)
        shown = 0

        def progress(status) -> None:
            nonlocal shown
            rows = status.training.history if status.training else []
            for row in rows[shown:]:
                print(f"  {label} v{row['version']:>3}: accuracy {row['accuracy']:.4f}", file=sys.stderr)
            shown = len(rows)

        final = client.wait(job.job_id, timeout_s=timeout_s, poll_s=0.5, on_update=progress)
        wall = time.perf_counter() - started
    if final.state != "done":
        raise RuntimeError(f"{label}: job ended {final.state}: {final.error}")
    t = final.training
    history = t.history
    steps = sum(h.get("steps", 0) for h in history)
    preempted = sum(s.get("preemptions", 0) for s in fleet.stats()) - sum(before)
    sync_dp = 2 * numel * 4 * steps
    return {
        "label": label, "accuracy": history[-1]["accuracy"], "loss": history[-1]["loss"],
        "best_accuracy": max(h["accuracy"] for h in history), "bytes_up": t.bytes_up, "bytes_down": t.bytes_down,
        "wall_s": round(wall, 1), "peak_rss_mb": round(rss.peak_bytes / 2**20), "rounds": t.version,
        "round_attempts": t.round, "steps": steps, "reports": t.reports, "rejected": t.rejected,
        "preemptions": preempted, "sync_dp_bytes": sync_dp,
        "reduction_vs_sync_dp": round(sync_dp / max(t.bytes_up + t.bytes_down, 1), 1),
        "accuracy_curve": [round(h["accuracy"], 4) for h in history],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--cars", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=1.0, help="Dirichlet concentration of the label split")
    ap.add_argument("--num-samples", type=int, default=10000, help="MNIST-1D samples generated (80%% train)")
    ap.add_argument("--clients", type=int, default=6, help="reports wanted per round (over-selected 1.3x)")
    ap.add_argument("--rounds", type=int, default=20, help="DiLoCo outer rounds")
    ap.add_argument("--local-steps", type=int, default=200, help="H, DiLoCo's inner steps per round")
    ap.add_argument("--inner-optimizer", choices=["sgd", "adamw"], default="sgd")
    ap.add_argument("--inner-lr", type=float, default=0.05)
    ap.add_argument("--outer-lr", type=float, default=1.0)
    ap.add_argument("--fedavg-rounds", type=int, default=20)
    ap.add_argument("--fedavg-steps", type=int, default=50, help="FedAvg's (and Flower's) local steps per round")
    ap.add_argument("--fedavg-lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--central-steps", type=int, default=4000)
    ap.add_argument("--preempted-cars", type=int, default=None, help="cars taking random trips (default: half)")
    ap.add_argument("--trip-gap-min", type=float, default=20.0,
                    help=f"mean simulated minutes between trips (the clock runs x{SPEED:g})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help="comma-separated labels to run (default: all)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per fleet job")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    only = set(args.only.split(",")) if args.only else None

    def wanted(label: str) -> bool:
        return only is None or label in only

    data = {"dataset": "mnist1d", "num_vehicles": args.cars, "alpha": args.alpha, "seed": args.seed,
            "num_samples": args.num_samples}
    model = build_model("mnist1d-cnn", seed=0)
    numel = FlatLayout.of(model).flatten(model).numel()
    rounds = {"clients_per_round": args.clients, "over_selection": 1.3, "min_reports": 2, "deadline_s": 120.0,
              "partial_work": "weighted", "max_retries": 10}
    fedavg = {"local": {"optimizer": "sgd", "lr": args.fedavg_lr, "momentum": 0.9, "steps": args.fedavg_steps,
                        "batch_size": args.batch_size},
              "rounds": rounds, "seed": args.seed}  # constant lr, as Flower's clients train

    def diloco(bits: int) -> dict:
        return {"local": {"optimizer": args.inner_optimizer, "lr": args.inner_lr,
                          "momentum": 0.9 if args.inner_optimizer == "sgd" else 0.0, "steps": args.local_steps,
                          "batch_size": args.batch_size, "compression": {"bits": bits}},
                "downlink": {"bits": bits}, "rounds": rounds, "outer_lr": args.outer_lr, "outer_momentum": 0.9,
                "lr_decay_versions": args.rounds, "seed": args.seed}

    runs = [("fleetgrid_fedavg", "fedavg", fedavg, args.fedavg_rounds),
            ("fleetgrid_diloco_int8", "diloco", diloco(8), args.rounds),
            ("fleetgrid_diloco_int4", "diloco", diloco(4), args.rounds)]
    results = []
    if wanted("centralized"):
        results.append(centralized(data, args.central_steps, args.seed))
        print(f"  centralized: {results[-1]['accuracy']:.4f}", file=sys.stderr)
    if any(wanted(label) for label, *_ in runs):
        root = Path(tempfile.mkdtemp(prefix="fleetgrid-bench-training-"))
        preempted = args.cars // 2 if args.preempted_cars is None else args.preempted_cars
        fleet = Fleet(root, args.cars, preempted, args.trip_gap_min, args.seed)
        try:
            for label, strategy, settings, n in runs:
                if wanted(label):
                    results.append(fleet_run(fleet, label, strategy, settings, data, n, numel, args.timeout))
        finally:
            fleet.close()
            shutil.rmtree(root, ignore_errors=True)
    if wanted("flower_fedavg"):
        from flower_fedavg import run_flower_fedavg

        flower = run_flower_fedavg(data=data, num_cars=args.cars, rounds=args.fedavg_rounds,
                                   clients_per_round=args.clients, local_steps=args.fedavg_steps,
                                   lr=args.fedavg_lr, momentum=0.9, batch_size=args.batch_size, seed=args.seed)
        flower["peak_rss_mb"] = round(flower["peak_rss_mb"])
        flower["sync_dp_bytes"] = 2 * numel * 4 * flower["steps"]
        flower["reduction_vs_sync_dp"] = round(flower["sync_dp_bytes"] / (flower["bytes_up"] + flower["bytes_down"]), 1)
        results.append(flower)

    summary = _summarize(results)
    _print(results, summary, numel, args)
    if args.json:
        payload = {"benchmark": "training", "args": vars(args), "params": numel, "results": results, **summary}
        OUT.parent.mkdir(exist_ok=True)
        OUT.write_text(json.dumps(payload, indent=2))
        print(json.dumps(payload))
    return 0


def _summarize(results: list[dict]) -> dict:
    """Each fleet configuration against the three targets; the best is the most accurate one meeting all of them
    (or, if none does, the most accurate)."""
    by = {r["label"]: r for r in results}
    central = by.get("centralized", {}).get("accuracy")
    flower = by.get("flower_fedavg")
    fleet = [r for r in results if r["label"].startswith("fleetgrid_")]
    for r in fleet:
        moved = r["bytes_up"] + r["bytes_down"]
        targets = {"sync_dp_500x": r["reduction_vs_sync_dp"] >= 500}
        if central is not None:
            r["points_vs_centralized"] = round(100 * (r["accuracy"] - central), 2)
            targets["within_1.5_points"] = r["points_vs_centralized"] >= -1.5
        if flower is not None:
            r["bytes_vs_flower"] = round((flower["bytes_up"] + flower["bytes_down"]) / max(moved, 1), 2)
            targets["flower_4x_at_equal_accuracy"] = r["bytes_vs_flower"] >= 4 and r["accuracy"] >= flower["accuracy"]
        r["targets"] = targets
        r["all_targets_met"] = all(targets.values())
    if not fleet:
        return {}
    meeting = [r for r in fleet if r["all_targets_met"]]
    best = max(meeting or fleet, key=lambda r: r["accuracy"])
    return {"best_fleet": best["label"], "best_fleet_meets_all_targets": best["all_targets_met"],
            "centralized_accuracy": central, "flower_accuracy": flower["accuracy"] if flower else None}


def _print(results: list[dict], summary: dict, numel: int, args) -> None:
    print(f"MNIST-1D CNN ({numel} params), {args.cars} cars (half taking random trips), Dirichlet alpha "
          f"{args.alpha}, {args.clients} reports/round x1.3 over-selected")
    print(f"{'config':<24}{'acc':>8}{'rounds':>8}{'steps':>8}{'bytes_up':>13}{'bytes_down':>13}"
          f"{'sync_dp_bytes':>16}{'vs sync':>9}{'vs flwr':>9}{'wall_s':>8}{'rss_mb':>8}")
    for r in results:
        print(f"{r['label']:<24}{r['accuracy']:>8.4f}{r.get('rounds', '-'):>8}{r.get('steps', '-'):>8}"
              f"{r['bytes_up']:>13,}{r['bytes_down']:>13,}{r.get('sync_dp_bytes', 0):>16,}"
              f"{r.get('reduction_vs_sync_dp', 0):>8.0f}x{r.get('bytes_vs_flower', 1.0):>8.1f}x"
              f"{r.get('wall_s', 0):>8.1f}{round(r.get('peak_rss_mb', 0)):>8}")
    for r in results:
        if "targets" in r:
            print(f"{r['label']}: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in r["targets"].items()))
    for key, value in summary.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    raise SystemExit(main())
