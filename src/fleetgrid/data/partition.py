"""Non-IID splits of one dataset across a fleet, derived so each car can compute its own shard locally.

Every car generates the same dataset from the same seed and runs :func:`dirichlet_partition` with the same
``(seed, num_vehicles, alpha)``: the split is a pure function of those, so the coordinator only tells a car its
``vehicle_index`` and no example ever travels.
"""

from __future__ import annotations

import math

import numpy as np

from fleetgrid.errors import InvalidInput

__all__ = ["dirichlet_partition", "label_histogram", "vehicle_shard"]


def _check(labels: np.ndarray, num_vehicles: int, alpha: float, min_samples: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidInput(f"labels must be a non-empty 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.min() < 0:
        raise InvalidInput(f"labels must be >= 0 class indices, got min {labels.min()}")
    if not isinstance(num_vehicles, (int, np.integer)) or num_vehicles < 1:
        raise InvalidInput(f"num_vehicles must be an integer >= 1, got {num_vehicles!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise InvalidInput(f"Dirichlet alpha must be a finite number > 0 (small = more skewed), got {alpha!r}")
    if min_samples < 0 or min_samples * num_vehicles > labels.size:
        raise InvalidInput(
            f"min_samples={min_samples} per vehicle x {num_vehicles} vehicles exceeds the "
            f"{labels.size} samples; lower min_samples or num_vehicles"
        )
    return labels


def dirichlet_partition(
    labels: np.ndarray, num_vehicles: int, *, alpha: float, seed: int, min_samples: int = 1, max_tries: int = 1000
) -> list[np.ndarray]:
    """Split sample indices over ``num_vehicles`` cars: for each class, its samples are shuffled and cut in
    proportions drawn from Dirichlet(alpha, ..., alpha) (Hsu et al., 2019). Small alpha gives each car few
    classes; large alpha approaches an IID split. Draws are repeated (deterministically) until every car holds
    at least ``min_samples``. Returns one sorted index array per car; together they cover every index once."""
    labels = _check(labels, num_vehicles, alpha, min_samples)
    rng = np.random.default_rng([seed, num_vehicles, 0xD1])  # independent of any global RNG state
    classes = np.unique(labels)
    for _ in range(max_tries):
        shards: list[list[np.ndarray]] = [[] for _ in range(num_vehicles)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(num_vehicles, float(alpha)))
            cuts = (np.cumsum(props)[:-1] * idx.size).round().astype(int)
            for v, part in enumerate(np.split(idx, cuts)):
                shards[v].append(part)
        out = [np.sort(np.concatenate(parts)).astype(np.int64) for parts in shards]
        if min(len(s) for s in out) >= min_samples:
            return out
    raise InvalidInput(
        f"no Dirichlet(alpha={alpha}) split of {labels.size} samples over {num_vehicles} vehicles "
        f"gave each >= {min_samples} samples in {max_tries} draws; raise alpha or lower num_vehicles"
    )


def vehicle_shard(
    labels: np.ndarray, vehicle_index: int, num_vehicles: int, *, alpha: float, seed: int, min_samples: int = 1
) -> np.ndarray:
    """The sample indices of car ``vehicle_index`` (0-based) in :func:`dirichlet_partition`."""
    if not isinstance(vehicle_index, (int, np.integer)) or not 0 <= vehicle_index < num_vehicles:
        raise InvalidInput(f"vehicle_index must be an integer in [0, {num_vehicles}), got {vehicle_index!r}")
    return dirichlet_partition(labels, num_vehicles, alpha=alpha, seed=seed, min_samples=min_samples)[vehicle_index]


def label_histogram(labels: np.ndarray, shards: list[np.ndarray], num_classes: int) -> np.ndarray:
    """(num_vehicles, num_classes) counts: how skewed a partition is."""
    return np.stack([np.bincount(np.asarray(labels)[s], minlength=num_classes) for s in shards])
