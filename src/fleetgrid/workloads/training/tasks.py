"""The models and local-data specs a training job may name, each a small bundle looked up by name.

A car turns a :class:`DataSpec` plus its ``vehicle_index`` into its private :class:`LocalDataset` here; the
coordinator turns the same spec into the held-out evaluation set. Nothing else in training knows a model or a
dataset by name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fleetgrid.errors import InvalidInput, UnknownModel
from fleetgrid.workloads.training.local import ArrayDataset, LocalDataset

__all__ = ["DATASETS", "MODELS", "DataSpec", "build_eval_set", "build_local_dataset", "build_model", "load_weights",
           "shard_sizes"]


def _mnist1d_cnn() -> nn.Module:
    from fleetgrid.models.mnist1d_cnn import MNIST1DCNN

    return MNIST1DCNN()


def _charlm() -> nn.Module:
    from fleetgrid.models.charlm import CharLM

    return CharLM()


MODELS: dict[str, Callable[[], nn.Module]] = {"mnist1d-cnn": _mnist1d_cnn, "charlm": _charlm}
DATASETS = ("mnist1d", "stdlib_text")


def build_model(name: str, *, seed: int = 0) -> nn.Module:
    """A freshly initialised trainable model; the same ``seed`` gives the same initial weights everywhere."""
    if name not in MODELS:
        raise UnknownModel(f"unknown training model {name!r}; accepted: {sorted(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name]()


def load_weights(name: str, data: bytes) -> nn.Module:
    """Model ``name`` holding the safetensors state dict ``data``; InvalidInput (naming what is wrong) when the
    bytes are not one of that model."""
    from safetensors.torch import load

    model = build_model(name)
    try:
        model.load_state_dict(load(data))
    except Exception as exc:  # safetensors and torch raise several types on a file of another model
        raise InvalidInput(f"weights of {len(data)} bytes are not a safetensors state dict of {name!r}: {exc}"
                           ) from exc
    return model


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """How every car derives its own shard locally; no example is ever sent."""

    dataset: str = "mnist1d"
    """'mnist1d' (generated locally, split by Dirichlet over labels) or 'stdlib_text' (split by source file)."""
    num_vehicles: int = 10
    seed: int = 0
    """Seeds the data generation and the split; all cars of a job must share it."""
    alpha: float = 0.5
    """Dirichlet concentration for 'mnist1d': > 0, small = each car sees few labels."""
    num_samples: int = 5000
    """MNIST-1D samples generated (80% train, 20% held out)."""
    block_size: int = 64
    """Context length for 'stdlib_text' windows."""
    max_files: int | None = None
    """Use only the first N stdlib files (None: all) for 'stdlib_text'."""

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise InvalidInput(f"unknown dataset {self.dataset!r}; accepted: {list(DATASETS)}")
        if not isinstance(self.num_vehicles, int) or self.num_vehicles < 1:
            raise InvalidInput(f"num_vehicles must be an integer >= 1, got {self.num_vehicles!r}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise InvalidInput(f"Dirichlet alpha must be > 0, got {self.alpha!r}")
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise InvalidInput(f"block_size must be an integer >= 1, got {self.block_size!r}")


@functools.lru_cache(maxsize=4)
def _mnist1d(seed: int, num_samples: int) -> dict[str, np.ndarray]:
    from fleetgrid.data.mnist1d import make_mnist1d

    return make_mnist1d(seed=seed, num_samples=num_samples)


@functools.lru_cache(maxsize=2)
def _text_split(seed: int, num_vehicles: int, max_files: int | None):
    from fleetgrid.data.text import split_by_file, stdlib_sources

    return split_by_file(stdlib_sources(max_files=max_files), num_vehicles, seed=seed)


def build_local_dataset(spec: DataSpec, vehicle_index: int) -> LocalDataset:
    """Car ``vehicle_index``'s private shard. Raises InvalidInput when this car cannot build it."""
    if not isinstance(vehicle_index, int) or not 0 <= vehicle_index < spec.num_vehicles:
        raise InvalidInput(f"vehicle_index must be in [0, {spec.num_vehicles}), got {vehicle_index!r}")
    if spec.dataset == "mnist1d":
        from fleetgrid.data.partition import vehicle_shard

        data = _mnist1d(spec.seed, spec.num_samples)
        idx = vehicle_shard(data["y"], vehicle_index, spec.num_vehicles, alpha=spec.alpha, seed=spec.seed)
        return ArrayDataset(data["x"][idx], data["y"][idx])
    from fleetgrid.data.text import TokenWindows

    shards, _ = _text_split(spec.seed, spec.num_vehicles, spec.max_files)
    return TokenWindows.from_files(shards[vehicle_index], spec.block_size)


@functools.lru_cache(maxsize=8)
def shard_sizes(spec: DataSpec) -> tuple[int, ...]:
    """How many examples each shard of the split holds: what an honest car reports as ``num_examples``, so the
    coordinator refuses a report claiming more than the car's shard."""
    if spec.dataset == "mnist1d":
        from fleetgrid.data.partition import dirichlet_partition

        data = _mnist1d(spec.seed, spec.num_samples)  # the split vehicle_shard takes one shard of
        return tuple(len(s) for s in dirichlet_partition(data["y"], spec.num_vehicles, alpha=spec.alpha,
                                                         seed=spec.seed))
    return tuple(len(build_local_dataset(spec, i)) for i in range(spec.num_vehicles))


def build_eval_set(spec: DataSpec, *, max_windows: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out (x, y) the coordinator scores every new global on."""
    if spec.dataset == "mnist1d":
        data = _mnist1d(spec.seed, spec.num_samples)
        return torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"])
    from fleetgrid.data.text import TokenWindows

    _, heldout = _text_split(spec.seed, spec.num_vehicles, spec.max_files)
    if not heldout:
        raise InvalidInput(f"no held-out stdlib file among max_files={spec.max_files}; allow more files")
    return TokenWindows.from_files(heldout, spec.block_size).eval_windows(max_windows)
