"""Flower's own FedAvg on Flower's Ray simulation runtime, on fleetgrid's model, data split and local loop.

The peer that ``bench/training.py`` compares fleetgrid's federated training against: each Flower client is one
car (partition id = car index) training with fleetgrid's ``train_locally`` from the global weights, so the only
differences left are Flower's (sampling, aggregation, serialization, runtime). Standalone:

    python bench/flower_fedavg.py --json

Bytes are measured on the ``Parameters`` objects the strategy actually sends and receives (Flower's numpy
serialization, one ``.npy`` blob per tensor): ``bytes_down`` sums every sampled client's copy of the global,
``bytes_up`` every returned local model. Flower samples clients with node ids drawn from ``os.urandom``, so which
cars train in a round is not reproducible from ``seed``; the initial weights, split and batch order are.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import warnings


def _offline_quiet_env() -> None:
    """Flower and Ray phone home and write under $HOME unless told otherwise; set before either is imported."""
    scratch = tempfile.mkdtemp(prefix="flwr-bench-")
    for key, value in {
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_HOME": scratch,
        "RAY_USAGE_STATS_ENABLED": "0",
        "MPLCONFIGDIR": scratch,
        # Ray workers inherit this: one intra-op thread per client, as fleetgrid's simulated cars use.
        "OMP_NUM_THREADS": "1",
    }.items():
        os.environ.setdefault(key, value)


_offline_quiet_env()

import numpy as np
import torch
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context, FitIns, FitRes, Parameters, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.simulation import run_simulation
from rss import TreeRssSampler

from fleetgrid.workloads.training.config import LocalTrainingConfig
from fleetgrid.workloads.training.flat import FlatLayout
from fleetgrid.workloads.training.local import evaluate_model, train_locally
from fleetgrid.workloads.training.messages import TrainInstructions, params_digest
from fleetgrid.workloads.training.tasks import (
    DataSpec,
    build_eval_set,
    build_local_dataset,
    build_model,
)

__all__ = ["run_flower_fedavg"]

MODEL = "mnist1d-cnn"


def _to_arrays(layout: FlatLayout, flat: torch.Tensor) -> list[np.ndarray]:
    """One array per tensor, as a Flower user's ``get_parameters`` returns them."""
    arrays, offset = [], 0
    for shape in layout.shapes:
        n = int(torch.Size(shape).numel())
        arrays.append(flat[offset : offset + n].reshape(shape).numpy().copy())
        offset += n
    return arrays


def _to_flat(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(
        np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays])
    )


def _batch_seed(*parts: object) -> int:
    return (
        int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")
        & 0x7FFFFFFF
    )


def _wire_bytes(parameters: Parameters) -> int:
    return sum(len(t) for t in parameters.tensors)


class CarClient(NumPyClient):
    """One car: fleetgrid's local SGD loop on its private shard, from the global weights Flower sends."""

    def __init__(
        self, spec: DataSpec, car_index: int, local: LocalTrainingConfig, seed: int
    ) -> None:
        torch.set_num_threads(1)
        self.car_index = car_index
        self.dataset = build_local_dataset(spec, car_index)
        self.model = build_model(MODEL)
        self.layout = FlatLayout.of(self.model)
        self.local = local
        self.seed = seed

    def fit(self, parameters, config):
        global_params = _to_flat(parameters)
        server_round = int(config["server_round"])
        instructions = TrainInstructions(
            round=server_round,
            base_version=server_round - 1,
            model_digest=params_digest(global_params),
            local=self.local,
            seed=_batch_seed(self.seed, server_round, self.car_index),
        )
        result = train_locally(
            self.model,
            global_params,
            self.dataset,
            instructions,
            client_id=f"car-{self.car_index}",
        )
        local_params = self.layout.flatten(
            self.model
        )  # train_locally leaves the local weights in the model
        return (
            _to_arrays(self.layout, local_params),
            len(self.dataset),
            {"train_loss": result.train_loss},
        )


class MeteredFedAvg(FedAvg):
    """Flower's FedAvg, unchanged, plus a tally of the serialized parameters each round sends and receives."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bytes_down = 0
        self.bytes_up = 0
        self.fits = 0

    def configure_fit(
        self, server_round, parameters, client_manager
    ) -> list[tuple[ClientProxy, FitIns]]:
        instructions = super().configure_fit(server_round, parameters, client_manager)
        self.bytes_down += sum(
            _wire_bytes(fit_ins.parameters) for _, fit_ins in instructions
        )
        return instructions

    def aggregate_fit(
        self, server_round, results: list[tuple[ClientProxy, FitRes]], failures
    ):
        if failures:
            raise RuntimeError(
                f"{len(failures)} Flower client(s) failed in round {server_round}: {failures[:1]}"
            )
        self.bytes_up += sum(_wire_bytes(fit_res.parameters) for _, fit_res in results)
        self.fits += len(results)
        return super().aggregate_fit(server_round, results, failures)


def run_flower_fedavg(
    *,
    data: dict,
    num_cars: int,
    rounds: int,
    clients_per_round: int,
    local_steps: int,
    lr: float,
    momentum: float,
    batch_size: int,
    seed: int,
    init_seed: int = 0,
    num_cpus: int = 2,
) -> dict:
    """Run Flower's FedAvg for ``rounds`` rounds of ``clients_per_round`` of ``num_cars`` cars; see the module
    docstring for what the byte counts cover. ``data`` is ``DataSpec``'s keywords; its ``num_vehicles`` must be
    ``num_cars``."""
    spec = DataSpec(**data)
    if spec.num_vehicles != num_cars:
        raise ValueError(
            f"data['num_vehicles'] is {spec.num_vehicles} but num_cars is {num_cars}; they must agree"
        )
    if not 1 <= clients_per_round <= num_cars:
        raise ValueError(
            f"clients_per_round must be in [1, num_cars={num_cars}], got {clients_per_round}"
        )
    torch.set_num_threads(1)
    local = LocalTrainingConfig(
        optimizer="sgd",
        lr=lr,
        momentum=momentum,
        steps=local_steps,
        batch_size=batch_size,
    )

    model = build_model(MODEL, seed=init_seed)
    layout = FlatLayout.of(model)
    initial = ndarrays_to_parameters(_to_arrays(layout, layout.flatten(model)))
    x_test, y_test = build_eval_set(spec)
    curve: list[dict[str, float]] = []

    def evaluate_global(server_round, arrays, config):
        layout.load(model, _to_flat(arrays))
        metrics = evaluate_model(model, x_test, y_test)
        curve.append(metrics)
        return metrics["loss"], {"accuracy": metrics["accuracy"]}

    strategy = MeteredFedAvg(
        fraction_fit=clients_per_round / num_cars,
        min_fit_clients=clients_per_round,
        fraction_evaluate=0.0,
        min_evaluate_clients=0,
        min_available_clients=num_cars,
        initial_parameters=initial,
        evaluate_fn=evaluate_global,
        on_fit_config_fn=lambda server_round: {"server_round": server_round},
    )

    def server_fn(context: Context) -> ServerAppComponents:
        return ServerAppComponents(
            strategy=strategy, config=ServerConfig(num_rounds=rounds)
        )

    def client_fn(context: Context):
        car_index = int(context.node_config["partition-id"])
        return CarClient(spec, car_index, local, seed).to_client()

    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": num_cpus,
            "num_gpus": 0,
            "include_dashboard": False,
            "logging_level": "ERROR",
            "log_to_driver": False,
            "object_store_memory": 200 * 1024 * 1024,
        },
    }
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(
        logging.ERROR
    )  # per-round INFO lines and the run_simulation deprecation notice
    try:
        with warnings.catch_warnings(), TreeRssSampler() as rss:
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            run_simulation(
                server_app=ServerApp(server_fn=server_fn),
                client_app=ClientApp(client_fn=client_fn),
                num_supernodes=num_cars,
                backend_name="ray",
                backend_config=backend_config,
            )
            wall_s = time.perf_counter() - t0
    finally:
        flwr_logger.setLevel(level)
        import ray

        if (
            ray.is_initialized()
        ):  # the Ray backend shuts Ray down itself; this covers a run that failed early
            ray.shutdown()

    if len(curve) != rounds + 1:
        raise RuntimeError(
            f"Flower evaluated {len(curve)} global models, expected {rounds + 1} (initial + rounds)"
        )
    return {
        "label": "flower_fedavg",
        "accuracy": curve[-1]["accuracy"],
        "loss": curve[-1]["loss"],
        "bytes_up": strategy.bytes_up,
        "bytes_down": strategy.bytes_down,
        "wall_s": wall_s,
        "peak_rss_mb": rss.peak_bytes / 2**20,
        "rounds": rounds,
        "steps": strategy.fits * local_steps,
        "accuracy_curve": [round(m["accuracy"], 4) for m in curve],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print a last line of JSON")
    ap.add_argument("--cars", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients-per-round", type=int, default=4)
    ap.add_argument("--local-steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--alpha",
        type=float,
        default=1.0,
        help="Dirichlet concentration of the label split",
    )
    ap.add_argument(
        "--num-cpus", type=int, default=2, help="CPUs Ray may use (one client per CPU)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    result = run_flower_fedavg(
        data={
            "dataset": "mnist1d",
            "num_vehicles": args.cars,
            "alpha": args.alpha,
            "seed": args.seed,
        },
        num_cars=args.cars,
        rounds=args.rounds,
        clients_per_round=args.clients_per_round,
        local_steps=args.local_steps,
        lr=args.lr,
        momentum=args.momentum,
        batch_size=args.batch_size,
        seed=args.seed,
        init_seed=args.seed,
        num_cpus=args.num_cpus,
    )
    print(
        f"flower_fedavg: acc {result['accuracy']:.4f} loss {result['loss']:.4f} after {result['rounds']} rounds "
        f"({result['steps']} local steps), up {result['bytes_up']:,} B, down {result['bytes_down']:,} B, "
        f"{result['wall_s']:.1f}s, peak RSS {result['peak_rss_mb']:.0f} MiB",
        file=sys.stderr,
    )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
