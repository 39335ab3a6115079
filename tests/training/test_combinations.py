"""Which robust aggregators, norm bounds, DP modes and secure aggregation compose: every refusal says why and
what works instead, and the allowed combinations build."""

import pytest
import torch

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.config import (
    DiLoCoConfig,
    FedAvgConfig,
    FedBuffConfig,
    PrivacyConfig,
    RobustConfig,
    RoundConfig,
)
from fleetgrid.workloads.training.strategies import FedAvg

DP = PrivacyConfig(mode="central", clip=1.0, noise_multiplier=1.0)
DDP = PrivacyConfig(mode="distributed", clip=1.0, noise_multiplier=1.0)
ROUNDS = RoundConfig(clients_per_round=8, min_reports=8)


@pytest.mark.parametrize("aggregator", ["krum", "median", "trimmed_mean"])
def test_order_statistics_are_refused_under_secure_aggregation(aggregator):
    with pytest.raises(InvalidInput, match=rf"aggregator '{aggregator}' cannot run with secure aggregation: .*only "
                                           r"the sum.*use aggregator 'mean' with a fixed clip"):
        FedAvgConfig(robust=RobustConfig(aggregator=aggregator, norm_bound="fixed", max_norm=1.0), rounds=ROUNDS,
                     secure_aggregation=True)


@pytest.mark.parametrize("aggregator", ["krum", "median", "trimmed_mean"])
def test_order_statistics_are_refused_under_differential_privacy(aggregator):
    with pytest.raises(InvalidInput, match=rf"aggregator '{aggregator}' cannot run with differential privacy: "
                                           r".*sensitivity"):
        FedAvgConfig(robust=RobustConfig(aggregator=aggregator, norm_bound="off"), rounds=ROUNDS, privacy=DP)


def test_the_adaptive_bound_is_refused_under_secure_aggregation_without_dp():
    with pytest.raises(InvalidInput, match="cannot see the individual norms.*norm_bound='fixed' with max_norm"):
        FedAvgConfig(secure_aggregation=True)  # the default bound is adaptive


def test_the_adaptive_bound_is_refused_under_dp():
    with pytest.raises(InvalidInput, match="one car changes how everyone else is clipped"):
        DiLoCoConfig(privacy=DP)


@pytest.mark.parametrize(("privacy", "secagg"), [(DP, False), (PrivacyConfig(), True), (DDP, True)])
def test_fedbuff_is_refused_with_dp_or_secure_aggregation(privacy, secagg):
    with pytest.raises(InvalidInput, match="asynchronous strategy.*use fedavg, fedadam or diloco"):
        FedBuffConfig(privacy=privacy, secure_aggregation=secagg,
                      robust=RobustConfig(norm_bound="fixed", max_norm=1.0))


@pytest.mark.parametrize(
    "config",
    [
        {"privacy": DP, "robust": RobustConfig(norm_bound="off")},
        {"privacy": DP, "robust": RobustConfig(norm_bound="fixed", max_norm=2.0)},
        {"privacy": DDP, "robust": RobustConfig(norm_bound="off"), "secure_aggregation": True},
        {"privacy": DP, "robust": RobustConfig(norm_bound="off"), "secure_aggregation": True},
        {"robust": RobustConfig(norm_bound="fixed", max_norm=1.0), "secure_aggregation": True},
        {"robust": RobustConfig(aggregator="krum", byzantine=2), "rounds": ROUNDS},
    ],
)
def test_the_allowed_combinations_build(config):
    built = FedAvgConfig(**config)
    assert built.robust.aggregator in ("mean", "krum")


def test_secure_aggregation_makes_each_car_clip_to_the_fixed_bound():
    config = FedAvgConfig(robust=RobustConfig(norm_bound="fixed", max_norm=0.7), secure_aggregation=True)
    assert FedAvg(torch.zeros(4), config).instructions("car-1").local.update_clip == 0.7
    assert FedAvg(torch.zeros(4), FedAvgConfig()).instructions("car-1").local.update_clip is None
