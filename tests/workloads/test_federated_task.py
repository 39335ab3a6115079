"""The worker side of a training share: the car's shard outlives the worker (a preemption kills it), so the next
worker trains at once instead of regenerating its data."""

import numpy as np
import pytest
import torch

from fleetgrid.workloads.base import WorkerCache
from fleetgrid.workloads.federated import task as federated_task
from fleetgrid.workloads.training import build_local_dataset
from fleetgrid.workloads.training.tasks import DataSpec

DATA = {"dataset": "mnist1d", "num_vehicles": 4, "alpha": 1.0, "num_samples": 400, "seed": 5}


def test_a_restarted_worker_loads_the_cars_shard_from_disk(tmp_path, monkeypatch):
    built = federated_task.local_dataset(WorkerCache(threads=1), DATA, 2, tmp_path)
    assert len(list(tmp_path.glob("shard-*.npz"))) == 1

    def regenerate(*args):
        raise AssertionError("the shard was regenerated, not loaded")

    monkeypatch.setattr("fleetgrid.workloads.training.build_local_dataset", regenerate)
    loaded = federated_task.local_dataset(WorkerCache(threads=1), DATA, 2, tmp_path)  # a fresh worker's cache
    expected = build_local_dataset(DataSpec(**DATA), 2)
    assert torch.equal(loaded.x, expected.x) and torch.equal(loaded.y, expected.y) and len(built) == len(loaded)
    with pytest.raises(AssertionError, match="regenerated"):  # another shard is not in the folder
        federated_task.local_dataset(WorkerCache(threads=1), DATA, 1, tmp_path)


def test_a_torn_shard_file_is_built_again(tmp_path):
    federated_task.local_dataset(WorkerCache(threads=1), DATA, 0, tmp_path)
    (path,) = tmp_path.glob("shard-*.npz")
    path.write_bytes(b"not an npz")
    again = federated_task.local_dataset(WorkerCache(threads=1), DATA, 0, tmp_path)
    assert len(again) == len(build_local_dataset(DataSpec(**DATA), 0))
    with np.load(path, allow_pickle=False) as saved:  # and written whole once more
        assert len(saved["x"]) == len(again)
