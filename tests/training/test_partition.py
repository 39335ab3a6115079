import numpy as np
import pytest

from fleetgrid.data.partition import dirichlet_partition, label_histogram, vehicle_shard
from fleetgrid.errors import InvalidInput

LABELS = np.random.default_rng(0).integers(0, 10, size=2000)


def test_covers_every_sample_exactly_once():
    shards = dirichlet_partition(LABELS, 7, alpha=0.5, seed=3)
    assert len(shards) == 7
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(LABELS.size))


def test_deterministic_and_each_car_derives_its_own_shard():
    a = dirichlet_partition(LABELS, 5, alpha=0.3, seed=1)
    b = dirichlet_partition(LABELS, 5, alpha=0.3, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for v in range(5):
        np.testing.assert_array_equal(vehicle_shard(LABELS, v, 5, alpha=0.3, seed=1), a[v])
    c = dirichlet_partition(LABELS, 5, alpha=0.3, seed=2)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_small_alpha_is_more_skewed_than_large_alpha():
    def mean_label_entropy(alpha):
        h = label_histogram(LABELS, dirichlet_partition(LABELS, 10, alpha=alpha, seed=0), 10).astype(float)
        p = h / h.sum(1, keepdims=True)
        return float(-(p * np.log(np.where(p > 0, p, 1))).sum(1).mean())

    assert mean_label_entropy(0.1) < mean_label_entropy(100.0) - 0.5
    assert mean_label_entropy(100.0) > 0.95 * np.log(10)


def test_min_samples_is_honoured():
    assert min(map(len, dirichlet_partition(LABELS, 20, alpha=0.1, seed=0, min_samples=10))) >= 10


@pytest.mark.parametrize("alpha", [0, -1, float("nan"), float("inf"), "1"])
def test_alpha_validation(alpha):
    with pytest.raises(InvalidInput, match="alpha"):
        dirichlet_partition(LABELS, 4, alpha=alpha, seed=0)


def test_other_validation():
    with pytest.raises(InvalidInput, match="num_vehicles"):
        dirichlet_partition(LABELS, 0, alpha=1.0, seed=0)
    with pytest.raises(InvalidInput, match="vehicle_index"):
        vehicle_shard(LABELS, 4, 4, alpha=1.0, seed=0)
    with pytest.raises(InvalidInput, match="labels"):
        dirichlet_partition(np.array([0.5, 1.5]), 2, alpha=1.0, seed=0)
    with pytest.raises(InvalidInput, match="min_samples"):
        dirichlet_partition(LABELS, 4, alpha=1.0, seed=0, min_samples=1000)
