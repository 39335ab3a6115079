"""The runs the training benchmarks compare, in this process: centralized training and a simulated fleet.

``bench/training_local.py`` and ``bench/training_matrix.py`` share them (``bench/training.py`` uses the
centralized run too), so every benchmark trains and counts bytes the same way:

- A car holds no model until it is first given work, and then fetches the version it trains from as a real car
  with nothing fetches it (``federated/car.py``): that version's compact snapshot with
  ``StrategyConfig.snapshot_bits`` set (the default), else its float32 snapshot. ``bytes_down`` counts it
  (``initial_download_bytes``: those first downloads), as Flower's bytes count the model it sends each car.
- Uploads are counted when the car sends them, so a report the strategy then refuses still counts, as do
  downloads to cars whose work was revoked, preempted or retried.
- ``sync_dp_bytes = 2 x params x 4 bytes x (local steps done)``: what synchronous data-parallel training moves
  for the same optimizer steps (a ring all-reduce moves ~2x the float32 gradient per worker per step).
- ``refused``: reports the strategy refused as malformed or hostile; ``clipped``: deltas whose norm it bounded;
  ``hostile_reports``: doctored reports the fleet's hostile cars sent (``SimulationConfig.hostile``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from fleetgrid.workloads.training.config import StrategyConfig
from fleetgrid.workloads.training.flat import FlatLayout
from fleetgrid.workloads.training.local import evaluate_model, heldout_prior, make_evaluator
from fleetgrid.workloads.training.simulate import SimulatedFleet, SimulationConfig
from fleetgrid.workloads.training.strategies import make_strategy
from fleetgrid.workloads.training.tasks import DataSpec, build_eval_set, build_local_dataset, build_model

__all__ = ["CENTRAL_LR", "TASKS", "Task", "centralized", "eval_set", "fleet_run", "sync_dp_bytes"]


@dataclass(frozen=True)
class Task:
    """A model and its data, and the one number its quality is judged by."""

    name: str
    model: str
    """A name in ``tasks.MODELS``."""
    dataset: str
    """A name in ``tasks.DATASETS``."""
    metric: str
    """'accuracy' (higher is better) or 'perplexity' (exp of the held-out loss; lower is better)."""

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    def quality(self, metrics: dict[str, float]) -> float:
        return metrics["accuracy"] if self.metric == "accuracy" else math.exp(metrics["loss"])

    def at_least_as_good(self, a: float, b: float) -> bool:
        """Whether quality ``a`` is equal to or better than ``b``."""
        return a >= b if self.higher_is_better else a <= b


TASKS = {
    "mnist1d": Task("mnist1d", "mnist1d-cnn", "mnist1d", "accuracy"),
    "charlm": Task("charlm", "charlm", "stdlib_text", "perplexity"),
}


def sync_dp_bytes(params: int, steps: int) -> int:
    return 2 * params * 4 * steps


def eval_set(task: Task, spec: DataSpec, max_windows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out set every peer of a benchmark cell is scored on (``max_windows`` caps the text one)."""
    return build_eval_set(spec, max_windows=max_windows) if task.dataset == "stdlib_text" else build_eval_set(spec)


CENTRAL_LR = 3e-3
"""Centralized training's AdamW lr (the synchronous data-parallel reference scales it with its batch)."""


def centralized(
    task: Task,
    spec: DataSpec,
    steps: int,
    seed: int,
    *,
    batch_size: int = 64,
    lr: float = CENTRAL_LR,
    eval_windows: int = 2048,
) -> dict:
    """One machine holding every car's data (a fleet of one car), AdamW with a cosine schedule."""
    started = time.perf_counter()
    train = build_local_dataset(dataclasses.replace(spec, num_vehicles=1), 0)
    model = build_model(task.model, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x, y = train.sample_batch(gen, batch_size)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    metrics = evaluate_model(model, *eval_set(task, spec, eval_windows))
    return {
        "label": "centralized",
        **metrics,
        "quality": task.quality(metrics),
        "bytes_up": 0,
        "bytes_down": 0,
        "steps": steps,
        "batch_size": batch_size,
        "seconds": round(time.perf_counter() - started, 1),
    }


class _MeteredFleet(SimulatedFleet):
    """The simulated fleet, also remembering which cars were ever given work and what their first download (the
    whole model: they held none) weighed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.took_part: set[str] = set()
        self.first_download_bytes = 0

    def dispatch(self, assignments, strategy) -> None:
        new = [c for c in assignments if c not in self.took_part]
        self.took_part.update(assignments)
        super().dispatch(assignments, strategy)
        self.first_download_bytes += sum(self.cars[c].bytes_down for c in new)


def fleet_run(
    task: Task,
    label: str,
    strategy: str,
    config: StrategyConfig,
    spec: DataSpec,
    sim: SimulationConfig,
    versions: int,
    *,
    seed: int,
    eval_windows: int = 2048,
    evaluate_every_version: bool = True,
) -> dict:
    """``strategy`` with ``config`` on a simulated fleet of ``spec.num_vehicles`` cars until global version
    ``versions``; the model starts from ``seed``. Without ``evaluate_every_version`` only the final global is
    scored (a text model's evaluation costs as much as many training steps)."""
    started = time.perf_counter()
    datasets = [build_local_dataset(spec, i) for i in range(spec.num_vehicles)]
    x_test, y_test = eval_set(task, spec, eval_windows)
    model = build_model(task.model, seed=seed)
    params = FlatLayout.of(model).flatten(model)
    strat = make_strategy(strategy, params, config)
    strat.target_prior = heldout_prior(model, x_test, y_test)  # as the coordinator does
    fleet = _MeteredFleet(model, datasets, sim)  # no car holds a model before its first work (module docstring)
    evaluate = make_evaluator(build_model(task.model), x_test, y_test)
    history = strat.run(fleet, versions, evaluate_fn=evaluate if evaluate_every_version else None)
    final = history[-1] if evaluate_every_version else evaluate(strat.params)
    stats = fleet.stats()
    bytes_down = stats["bytes_down"]
    moved = stats["bytes_up"] + bytes_down
    sync_dp = sync_dp_bytes(params.numel(), stats["steps"])
    out = {
        "label": label,
        "strategy": strategy,
        "accuracy": final["accuracy"],
        "loss": final["loss"],
        "quality": task.quality(final),
        "bytes_up": stats["bytes_up"],
        "bytes_down": bytes_down,
        "initial_download_bytes": fleet.first_download_bytes,
        "sync_dp_bytes": sync_dp,
        "reduction_vs_sync_dp": sync_dp / moved,
        "steps": stats["steps"],
        "versions": versions,
        "retries": sum(h.get("attempts", 1) - 1 for h in history[1:]),
        "rejected": sum(h.get("rejected", 0) for h in history[1:]),
        "refused": sum(h.get("refused", 0) for h in history[1:]),
        "clipped": sum(h.get("clipped", 0) for h in history[1:]),
        "hostile_reports": stats["hostile"],
        "dispatched": stats["dispatched"],
        "preempted": stats["preempted"],
        "revoked": stats["revoked"],
        "full_downloads": stats["full_downloads"],
        "full_download_bytes": stats["full_download_bytes"],
        "compact_downloads": stats["compact_downloads"],
        "compact_download_bytes": stats["compact_download_bytes"],
        "deltas_down": stats["deltas_down"],
        "cars_took_part": len(fleet.took_part),
        "params": params.numel(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if evaluate_every_version:
        out["quality_curve"] = [round(task.quality(h), 4) for h in history]
    return out
