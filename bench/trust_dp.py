"""Differential privacy's price in accuracy: DP-FedAvg on MNIST-1D over a large simulated fleet.

    python bench/trust_dp.py [--quick] [--json]

20,000 cars (quick: 2,000) each hold 3 MNIST-1D examples of their own (IID); every round asks 2,000 of them
(quick: 200), q = 0.1, for 30 rounds (quick: 10). Each car runs 10 full-batch SGD steps (lr 0.3) of the MNIST-1D
CNN on its examples; the server steps the mean update with DiLoCo's outer Nesterov momentum (lr 0.7, 0.9), which
learned twice as fast as plain FedAvg here in 30 rounds (DP-FedAvg with server momentum, "DP-FedAvgM"). The
strategy is fleetgrid's real DiLoCo with its real privacy wrapper and accountant (``workloads/training/privacy.py``);
only the fleet is a vectorised stand-in for SimulatedFleet (one ``torch.func`` call trains a whole cohort), because
60,000 car-rounds one at a time would take hours on two cores. Reports travel as the real compressed payloads and
pass the strategy's validation.

Rows: the non-private run (fleetgrid's default adaptive norm bound, 2x the round's median norm), then central DP
with the noise multiplier calibrated to epsilon 1, 3 and 8 at delta 1e-5 over the planned rounds (RDP accountant,
Poisson sampling, the privacy unit one car's whole data). Target: epsilon 8 within 3 accuracy points of the
non-private run. Prints a table and, last, one JSON line; writes bench/results/trust_dp.json (``--quick``:
trust_dp_quick.json). ``run(quick)`` is what bench/trust.py composes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from fleetgrid.data.mnist1d import make_mnist1d
from fleetgrid.workloads.training.compression import CompressionConfig, encode
from fleetgrid.workloads.training.config import DiLoCoConfig, LocalTrainingConfig, RobustConfig, RoundConfig
from fleetgrid.workloads.training.flat import FlatLayout
from fleetgrid.workloads.training.local import make_evaluator, private_delta
from fleetgrid.workloads.training.messages import ClientUpdate, TrainInstructions
from fleetgrid.workloads.training.privacy import PrivacyConfig
from fleetgrid.workloads.training.strategies import DiLoCo, Strategy
from fleetgrid.workloads.training.tasks import build_model

RESULTS = Path(__file__).parent / "results" / "trust_dp.json"
EXAMPLES_PER_CAR = 3
DELTA = 1e-5
TARGETS = (1.0, 3.0, 8.0)


class VectorFleet:
    """The :class:`~fleetgrid.workloads.training.base.Fleet` protocol over cars whose local training runs as one
    vectorised call per cohort. Every car is always idle and always reports (no churn: what is measured is the
    noise's cost)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y  # (cars, k, L), (cars, k)
        self.cars = [f"car-{i}" for i in range(x.shape[0])]
        self.model = build_model("mnist1d-cnn", seed=0)
        self.names = [n for n, _ in self.model.named_parameters()]
        self.shapes = [p.shape for _, p in self.model.named_parameters()]
        self.queue: deque[ClientUpdate] = deque()
        self.clock = 0.0
        self.diverged = 0
        """Cars whose local training diverged (non-finite weights) and so sent nothing."""

    def now(self) -> float:
        return self.clock

    def idle_clients(self) -> list[str]:
        return self.cars

    def busy_count(self) -> int:
        return len(self.queue)

    def max_examples(self, client_id: str) -> int | None:
        return EXAMPLES_PER_CAR

    def cancel_outstanding(self) -> None:
        self.queue.clear()

    def next_update(self, deadline: float) -> ClientUpdate | None:
        self.clock += 1e-3
        return self.queue.popleft() if self.queue else None

    def _params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, at = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            n = math.prod(shape)
            out[name] = flat[at : at + n].view(shape)
            at += n
        return out

    def _loss(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(self.model, self._params(flat), (x,)), y)

    def dispatch(self, assignments: Mapping[str, TrainInstructions], strategy: Strategy) -> None:
        ids = list(assignments)
        local = next(iter(assignments.values())).local
        idx = torch.tensor([int(c.split("-")[1]) for c in ids])
        start = strategy.params
        flat = start.expand(len(ids), -1).clone()  # (C, P)
        step = vmap(grad(self._loss))
        for _ in range(local.steps):
            flat -= local.lr * step(flat, self.x[idx], self.y[idx])  # full-batch GD on each car's examples
        deltas = start - flat  # (C, P): global - local
        for car, ins, delta in zip(ids, assignments.values(), deltas, strict=True):
            if not bool(torch.isfinite(delta).all()):  # its local steps diverged: the worker fails, nothing is sent
                self.diverged += 1
                continue
            sent = private_delta(delta, ins.local)  # the car's clip (and distributed noise), as a real car does
            self.queue.append(ClientUpdate(
                client_id=car, round=ins.round, base_version=ins.base_version,
                payload=encode(sent.numpy(), CompressionConfig()), num_examples=EXAMPLES_PER_CAR,
                steps_done=local.steps, steps_planned=local.steps, examples_seen=local.steps * EXAMPLES_PER_CAR))


def fleet_data(cars: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each car's own examples (IID, none shared) and a held-out set."""
    need = cars * EXAMPLES_PER_CAR
    data = make_mnist1d(seed=seed, num_samples=math.ceil(need / 0.8) + 10)
    x = torch.from_numpy(np.asarray(data["x"][:need], dtype=np.float32)).view(cars, EXAMPLES_PER_CAR, -1)
    y = torch.from_numpy(np.asarray(data["y"][:need], dtype=np.int64)).view(cars, EXAMPLES_PER_CAR)
    xt = torch.from_numpy(np.asarray(data["x_test"][:2000], dtype=np.float32))
    yt = torch.from_numpy(np.asarray(data["y_test"][:2000], dtype=np.int64))
    return x, y, xt, yt


def one_run(fleet: VectorFleet, evaluate, *, rounds: int, cohort: int, privacy: PrivacyConfig) -> dict[str, Any]:
    model = build_model("mnist1d-cnn", seed=0)
    p0 = FlatLayout.of(model).flatten(model)
    config = DiLoCoConfig(
        local=LocalTrainingConfig(optimizer="sgd", lr=0.3, momentum=0.0, steps=10, batch_size=EXAMPLES_PER_CAR),
        rounds=RoundConfig(clients_per_round=cohort, over_selection=1.0, deadline_s=1e9),
        # DP's clip bounds every update; without DP, fleetgrid's default adaptive bound does (with no bound at all,
        # one car in 2,000 whose local steps blew up to a huge finite update wrecked the non-private global)
        robust=RobustConfig(norm_bound="off") if privacy.enabled else RobustConfig(),
        privacy=privacy, outer_lr=0.7, outer_momentum=0.9)
    strategy = DiLoCo(p0, config)
    fleet.diverged = 0
    t0 = time.perf_counter()
    history = strategy.run(fleet, rounds, evaluate_fn=evaluate)
    report = strategy.privacy_report() or {}
    eps = report.get("epsilon")
    return {
        "mode": privacy.mode,
        "target_epsilon": privacy.target_epsilon,
        "noise_multiplier": report.get("noise_multiplier"),
        "epsilon": eps if eps is not None and math.isfinite(eps) else None,
        "accuracy": history[-1]["accuracy"],
        "loss": history[-1]["loss"],
        "versions": strategy.version,
        "diverged_cars": fleet.diverged,
        "clipped_share": (sum(h.get("clipped", 0) for h in history[1:]) / max(1, strategy.version * cohort)
                          if privacy.enabled else None),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float as None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def run(quick: bool) -> dict[str, Any]:
    cars, cohort, rounds = (2000, 200, 10) if quick else (20_000, 2000, 30)
    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # noisy globals leave subnormal floats that slowed the cohort's training 3x
    x, y, xt, yt = fleet_data(cars)
    fleet = VectorFleet(x, y)
    evaluate = make_evaluator(build_model("mnist1d-cnn", seed=0), xt, yt)
    clip = 2.5  # about the median norm of the cars' first updates (1.9 / 2.4 / 3.0: 10th / 50th / 90th percentile)
    rows = [one_run(fleet, evaluate, rounds=rounds, cohort=cohort, privacy=PrivacyConfig())]
    print(f"  non-private: accuracy {rows[-1]['accuracy']:.3f}", file=sys.stderr, flush=True)
    for target in TARGETS:
        privacy = PrivacyConfig(mode="central", clip=clip, target_epsilon=target, delta=DELTA, population=cars)
        rows.append(one_run(fleet, evaluate, rounds=rounds, cohort=cohort, privacy=privacy))
        print(f"  epsilon target {target:g}: accuracy {rows[-1]['accuracy']:.3f}", file=sys.stderr, flush=True)
    baseline = rows[0]["accuracy"]
    for row in rows:
        row["points_vs_non_private"] = round(100 * (row["accuracy"] - baseline), 2)
    eps8 = next(r for r in rows if r["target_epsilon"] == 8.0)
    return _finite({
        "rows": rows,
        "cars": cars,
        "cohort": cohort,
        "rounds": rounds,
        "sampling_rate": cohort / cars,
        "clip": clip,
        "delta": DELTA,
        "eps8_points_below_non_private": round(100 * (baseline - eps8["accuracy"]), 2),
        "met": bool(eps8["accuracy"] >= baseline - 0.03),
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 cars, 200 a round, 10 rounds")
    parser.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = {"quick": args.quick, **run(args.quick)}
    cols = ["mode", "target_epsilon", "noise_multiplier", "epsilon", "accuracy", "points_vs_non_private",
            "clipped_share", "diverged_cars", "versions", "wall_s"]
    print(f"{result['cars']} cars, {result['cohort']} a round (q = {result['sampling_rate']:g}), {result['rounds']} "
          f"rounds, clip {result['clip']}, delta {result['delta']:g}")
    print("  ".join(f"{c:>22}" for c in cols))
    for row in result["rows"]:
        print("  ".join(f"{(f'{v:.4g}' if isinstance(v, float) else str(v)):>22}" for v in (row[c] for c in cols)))
    print(f"epsilon 8 is {result['eps8_points_below_non_private']} points below non-private (target <= 3): "
          f"{'met' if result['met'] else 'NOT met'}")
    out = RESULTS.with_name("trust_dp_quick.json") if args.quick else RESULTS  # a quick run keeps the full figures
    out.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(result, allow_nan=False)
    out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
