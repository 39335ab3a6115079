"""A secure round's grid and mean update from its exact sum, against hand-computed arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training import FedAvgConfig, config_from_dict
from fleetgrid.workloads.training.secagg import Quantization, decode_sum, quantize
from fleetgrid.workloads.training.secure import BITS, SPREAD, SecureSum, round_quantization, secure_mean


def config(**settings):
    base = {"secure_aggregation": True, "robust": {"norm_bound": "fixed", "max_norm": 2.0},
            "rounds": {"clients_per_round": 4, "over_selection": 1.0}}
    return config_from_dict(FedAvgConfig, base | settings)


def test_the_grid_reaches_the_clip_and_a_clipless_secure_job_is_refused():
    seed = bytes(range(32))
    # 10 coordinates: 4 spreads of 2 / sqrt(8) would pass the clip itself, which no coordinate can
    assert round_quantization(config(), 10, None, rotation=seed) == Quantization(clip=2.0, bound=2.0, bits=BITS,
                                                                                 rotation=seed)
    with pytest.raises(InvalidInput, match="norm_bound='fixed' with max_norm"):
        round_quantization(config(robust={"norm_bound": "off"}), 10, None)


def test_the_grid_is_8_bits_spread_wide_in_a_fresh_rotation_each_round():
    q = round_quantization(config(), 8010, None)  # the MNIST-1D CNN: rotated in blocks of 4096
    assert (q.bits, q.clip) == (8, 2.0) and q.bound == pytest.approx(SPREAD * 2.0 / 64)
    assert q.rotation is not None and round_quantization(config(), 8010, None).rotation != q.rotation


def test_distributed_dp_widens_the_grid_by_the_cars_noise():
    c = config(robust={"norm_bound": "off"}, privacy={"mode": "distributed", "clip": 1.0, "noise_multiplier": 2.0})
    q = round_quantization(c, 100, 2.0)
    car_std = 2.0 * 1.0 / math.sqrt(4)
    assert q.clip == pytest.approx(1.0 + car_std * (math.sqrt(100) + 6))
    assert q.bound == pytest.approx(SPREAD * q.clip / 8) and q.bound / SPREAD > car_std  # the noise fits too


def test_the_mean_is_the_sum_over_the_survivors():
    total = np.array([1.0, -2.0, 0.5])
    result = SecureSum(total=total, cars=2, asked=4, dropped=2, quantization=round_quantization(config(), 3, None))
    mean, metrics = secure_mean(config(), result, noise_multiplier=None)
    assert torch.equal(mean, torch.tensor([0.5, -1.0, 0.25]))
    assert (metrics["secagg_asked"], metrics["secagg_dropped"], metrics["norm_bound"]) == (4, 2, 2.0)


def test_a_sum_longer_than_the_cars_clips_allow_is_refused():
    q = round_quantization(config(), 3, None)
    result = SecureSum(total=np.array([5.0, 0.0, 0.0]), cars=2, asked=4, quantization=q)  # 2 cars x 2.0 < 5
    with pytest.raises(InvalidInput, match="some car did not clip"):
        secure_mean(config(), result, noise_multiplier=None)


def test_central_dp_noises_the_sum_and_distributed_dp_charges_the_sigma_the_sum_carries():
    c = config(robust={"norm_bound": "off"}, privacy={"mode": "central", "clip": 1.0, "noise_multiplier": 1.0})
    result = SecureSum(total=np.zeros(1000), cars=4, asked=4, quantization=round_quantization(c, 1000, 1.0))
    mean, metrics = secure_mean(c, result, noise_multiplier=1.0, generator=torch.Generator().manual_seed(0))
    assert metrics["dp_sigma"] == 1.0 and float(mean.std()) == pytest.approx(1.0 / 4, rel=0.1)
    d = config(robust={"norm_bound": "off"}, privacy={"mode": "distributed", "clip": 1.0, "noise_multiplier": 1.0})
    short = SecureSum(total=np.zeros(10), cars=3, asked=4, dropped=1, quantization=round_quantization(d, 10, 1.0))
    assert secure_mean(d, short, noise_multiplier=1.0)[1]["dp_sigma"] == pytest.approx(math.sqrt(3 / 4))


def test_honest_cars_on_the_rotated_grid_pass_the_norm_check_even_rounded_all_the_worst_way():
    """Cars at exactly the clip and all alike (the longest honest sum), each coordinate rounded up (what the grid's
    one-step slack allows for): the decoded, unrotated sum still passes; the mean is the float mean within
    rounding; a sum 20% longer is refused."""
    d, cars, rng = 8010, 4, np.random.default_rng(0)
    c = config()
    q = round_quantization(c, d, None)
    x = rng.normal(size=d)
    xs = [2.0 * x / np.linalg.norm(x)] * cars
    fair = sum(quantize(x, q, rng).astype(np.uint64) for x in xs)
    mean, _ = secure_mean(c, SecureSum(total=decode_sum(fair, cars, q), cars=cars, asked=cars, quantization=q),
                          noise_multiplier=None)
    assert torch.linalg.vector_norm(mean - torch.from_numpy(np.mean(xs, axis=0))) < 0.02 * 2.0
    from fleetgrid.workloads.training.secagg import rotate

    assert q.rotation is not None
    up = sum(np.minimum(np.ceil((np.clip(rotate(x, q.rotation), -q.bound, q.bound) + q.bound) / q.step), q.levels)
             .astype(np.uint64) for x in xs)
    worst = SecureSum(total=decode_sum(up, cars, q), cars=cars, asked=cars, quantization=q)
    secure_mean(c, worst, noise_multiplier=None)  # no InvalidInput
    too_long = SecureSum(total=decode_sum(up, cars, q) * 1.2, cars=cars, asked=cars, quantization=q)
    with pytest.raises(InvalidInput, match="some car did not clip"):
        secure_mean(c, too_long, noise_multiplier=None)
