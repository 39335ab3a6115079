"""A secure round's grid and mean update from its exact sum, against hand-computed arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training import FedAvgConfig, config_from_dict
from fleetgrid.workloads.training.secagg import Quantization
from fleetgrid.workloads.training.secure import BITS, SecureSum, round_quantization, secure_mean


def config(**settings):
    base = {"secure_aggregation": True, "robust": {"norm_bound": "fixed", "max_norm": 2.0},
            "rounds": {"clients_per_round": 4, "over_selection": 1.0}}
    return config_from_dict(FedAvgConfig, base | settings)


def test_the_grid_reaches_the_clip_and_a_clipless_secure_job_is_refused():
    assert round_quantization(config(), 10, None) == Quantization(clip=2.0, bound=2.0, bits=BITS)
    with pytest.raises(InvalidInput, match="norm_bound='fixed' with max_norm"):
        round_quantization(config(robust={"norm_bound": "off"}), 10, None)


def test_distributed_dp_widens_the_grid_by_the_cars_noise():
    c = config(robust={"norm_bound": "off"}, privacy={"mode": "distributed", "clip": 1.0, "noise_multiplier": 2.0})
    q = round_quantization(c, 100, 2.0)
    car_std = 2.0 * 1.0 / math.sqrt(4)
    assert q.clip == pytest.approx(1.0 + car_std * (math.sqrt(100) + 6))


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
