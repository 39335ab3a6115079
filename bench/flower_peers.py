"""Flower's FedAvg, FedAdam and FedProx as peers of a fleetgrid configuration, driven in this process.

Flower's own ``Server`` round loop and strategies run unchanged; the only stand-in is the transport: each car is an
in-process ``ClientProxy`` around a ``NumPyClient`` (so parameters still go through Flower's serialization) instead
of a Ray actor, which changes wall time, not accuracy or bytes, and lets a 2-core machine run the matrix. Each
client trains with fleetgrid's ``train_locally`` on the same shard and local loop as a fleetgrid car.

Bytes are measured on the ``Parameters`` the strategy sends and receives: ``bytes_down`` is every sampled client's
copy of the global (round 1 sends the initial model, so it is counted), ``bytes_up`` every returned model. Flower's
FedAdam sends float64 globals (its bias-corrected step is a float64 numpy scalar, which promotes the float32
weights), so its downloads weigh twice FedAvg's. With churn, each sampled client is preempted with the fleet's
probability: it fails (as a Flower client that loses its connection does), after having downloaded the global.
Client sampling is seeded.

Import this module only where Flower is installed (the ``bench`` extra); it is never a product dependency.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
import warnings
from dataclasses import dataclass

_scratch = tempfile.mkdtemp(prefix="flwr-bench-")
for _key, _value in {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_HOME": _scratch}.items():
    os.environ.setdefault(_key, _value)  # before Flower is imported: it phones home and writes under $HOME

import torch  # noqa: E402
from flower_fedavg import _to_arrays, _to_flat  # noqa: E402 - one conversion for both Flower benches
from flwr.client import NumPyClient  # noqa: E402
from flwr.common import FitIns, FitRes, Parameters, ndarrays_to_parameters  # noqa: E402
from flwr.server import Server, SimpleClientManager  # noqa: E402
from flwr.server.client_proxy import ClientProxy  # noqa: E402
from flwr.server.strategy import FedAdam, FedAvg, FedProx  # noqa: E402
from training_runs import Task, eval_set, sync_dp_bytes  # noqa: E402

from fleetgrid.workloads.training.config import LocalTrainingConfig  # noqa: E402
from fleetgrid.workloads.training.flat import FlatLayout  # noqa: E402
from fleetgrid.workloads.training.local import cross_entropy_loss, evaluate_model, train_locally  # noqa: E402
from fleetgrid.workloads.training.messages import TrainInstructions, params_digest  # noqa: E402
from fleetgrid.workloads.training.tasks import DataSpec, build_local_dataset, build_model  # noqa: E402

__all__ = ["FLOWER_STRATEGIES", "FlowerBudget", "run_flower"]

FLOWER_STRATEGIES = {"flower_fedavg": FedAvg, "flower_fedadam": FedAdam, "flower_fedprox": FedProx}


@dataclass(frozen=True, kw_only=True)
class FlowerBudget:
    """What the compared fleetgrid configuration gets: rounds, cars asked per round, the cars' local loop."""

    rounds: int
    cohort: int
    """Clients sampled per round (fleetgrid's over-selected cohort: the cars it dispatches work to)."""
    local: LocalTrainingConfig
    preempt_prob: float = 0.0
    proximal_mu: float = 0.01
    """FedProx's mu, which Flower leaves to the user (Li et al. try 0.001-1)."""


def _wire_bytes(parameters: Parameters) -> int:
    return sum(len(t) for t in parameters.tensors)


class Preempted(RuntimeError):
    """The car's owner drove off mid-round; Flower records the client as a failure."""


class CarClient(NumPyClient):
    """One car: fleetgrid's local loop on its private shard, from the global weights Flower sends."""

    def __init__(self, task: Task, spec: DataSpec, car: int, budget: FlowerBudget, seed: int) -> None:
        self.car, self.budget, self.seed = car, budget, seed
        self.dataset = build_local_dataset(spec, car)
        self.model = build_model(task.model)
        self.layout = FlatLayout.of(self.model)
        self.steps_done = 0

    def fit(self, parameters, config):
        server_round = int(config["server_round"])
        if random.Random(f"{self.seed}-{server_round}-{self.car}").random() < self.budget.preempt_prob:
            raise Preempted(f"car-{self.car} preempted in round {server_round}")
        global_params = _to_flat(parameters)
        mu = float(config.get("proximal_mu", 0.0))
        self.layout.load(self.model, global_params)
        anchor = [p.detach().clone() for p in self.model.parameters()]

        def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            loss = cross_entropy_loss(logits, targets)
            if mu:  # FedProx: + mu/2 ||w - w_global||^2
                params = self.model.parameters()
                loss = loss + mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
            return loss

        instructions = TrainInstructions(
            round=server_round,
            base_version=server_round - 1,
            model_digest=params_digest(global_params),
            local=self.budget.local,
            seed=random.Random(f"batches-{self.seed}-{server_round}-{self.car}").getrandbits(31),
        )
        result = train_locally(
            self.model, global_params, self.dataset, instructions, client_id=f"car-{self.car}", loss_fn=loss_fn
        )
        self.steps_done += result.steps_done
        return _to_arrays(self.layout, self.layout.flatten(self.model)), len(self.dataset), {}


class InProcessProxy(ClientProxy):
    """A Flower client proxy that calls its client directly, in the server's thread."""

    def __init__(self, cid: str, client: CarClient) -> None:
        super().__init__(cid)
        self.client = client.to_client()

    def fit(self, ins: FitIns, timeout, group_id) -> FitRes:
        return self.client.fit(ins)

    def get_properties(self, ins, timeout, group_id):
        raise NotImplementedError("the benchmark server never asks a client for properties")

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError("the benchmark server starts from initial_parameters")

    def evaluate(self, ins, timeout, group_id):
        raise NotImplementedError("the benchmark evaluates the global centrally")

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError("the benchmark server never reconnects clients")


class _Metered:
    """Mixed in before a Flower strategy: tallies the serialized parameters each round sends and receives."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bytes_down = self.bytes_up = self.fits = self.failures = 0

    def configure_fit(self, server_round, parameters, client_manager):
        instructions = super().configure_fit(server_round, parameters, client_manager)
        self.bytes_down += sum(_wire_bytes(fit_ins.parameters) for _, fit_ins in instructions)
        return instructions

    def aggregate_fit(self, server_round, results, failures):
        self.bytes_up += sum(_wire_bytes(fit_res.parameters) for _, fit_res in results)
        self.fits += len(results)
        self.failures += len(failures)
        return super().aggregate_fit(server_round, results, failures)


def run_flower(label: str, task: Task, spec: DataSpec, budget: FlowerBudget, *, seed: int, eval_windows: int) -> dict:
    """Flower's ``label`` strategy (a key of FLOWER_STRATEGIES, with Flower's default settings) on ``spec``'s cars
    for ``budget.rounds`` rounds; the model starts from ``seed``. Returns the same fields as a fleetgrid run,
    plus ``curve``: (quality, bytes moved so far) after each round, for comparisons at equal quality."""
    started = time.perf_counter()
    cars = spec.num_vehicles
    if not 1 <= budget.cohort <= cars:
        raise ValueError(f"a Flower cohort must be in [1, {cars}] cars, got {budget.cohort}")
    model = build_model(task.model, seed=seed)
    layout = FlatLayout.of(model)
    initial = layout.flatten(model)
    x_test, y_test = eval_set(task, spec, eval_windows)
    clients = [CarClient(task, spec, i, budget, seed) for i in range(cars)]
    curve: list[tuple[float, int]] = []
    metrics: dict[str, float] = {}

    def evaluate_global(server_round, arrays, config):
        layout.load(model, _to_flat(arrays))
        metrics.update(evaluate_model(model, x_test, y_test))
        curve.append((task.quality(metrics), strategy.bytes_up + strategy.bytes_down))
        return metrics["loss"], {"accuracy": metrics["accuracy"]}

    cls = type(f"Metered{FLOWER_STRATEGIES[label].__name__}", (_Metered, FLOWER_STRATEGIES[label]), {})
    extra = {"proximal_mu": budget.proximal_mu} if label == "flower_fedprox" else {}
    strategy = cls(
        fraction_fit=budget.cohort / cars,
        min_fit_clients=budget.cohort,
        fraction_evaluate=0.0,
        min_evaluate_clients=0,
        min_available_clients=cars,
        initial_parameters=ndarrays_to_parameters(_to_arrays(layout, initial)),
        evaluate_fn=evaluate_global,
        on_fit_config_fn=lambda server_round: {"server_round": server_round},
        **extra,
    )
    manager = SimpleClientManager()
    for i, client in enumerate(clients):
        manager.register(InProcessProxy(str(i), client))
    server = Server(client_manager=manager, strategy=strategy)
    server.set_max_workers(1)  # one client at a time, as fleetgrid's simulated cars train
    flwr_logger = logging.getLogger("flwr")
    level, rng_state = flwr_logger.level, random.getstate()
    flwr_logger.setLevel(logging.ERROR)
    random.seed(seed)  # SimpleClientManager samples clients with the global random module
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.fit(num_rounds=budget.rounds, timeout=None)
    finally:
        flwr_logger.setLevel(level)
        random.setstate(rng_state)
    if len(curve) != budget.rounds + 1:
        raise RuntimeError(f"Flower evaluated {len(curve)} global models, expected {budget.rounds + 1}")
    steps = sum(c.steps_done for c in clients)
    moved = strategy.bytes_up + strategy.bytes_down
    return {
        "label": label,
        "accuracy": metrics["accuracy"],
        "loss": metrics["loss"],
        "quality": curve[-1][0],
        "bytes_up": strategy.bytes_up,
        "bytes_down": strategy.bytes_down,
        "sync_dp_bytes": sync_dp_bytes(initial.numel(), steps),
        "reduction_vs_sync_dp": sync_dp_bytes(initial.numel(), steps) / max(moved, 1),
        "steps": steps,
        "versions": budget.rounds,
        "fits": strategy.fits,
        "failures": strategy.failures,
        "curve": [(round(q, 4), b) for q, b in curve],
        "seconds": round(time.perf_counter() - started, 1),
    }
