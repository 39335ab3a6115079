"""DP-FedAvg: clipping, the noise's scale (measured), the accountant against dp-accounting used directly, the
calibration of sigma from a target epsilon, distributed noise summing to the central variance, the bound on a sum,
and a simulated job that reports epsilon every round and stops when its budget is spent."""

import math

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import pld, rdp

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.config import (
    FedAvgConfig,
    LocalTrainingConfig,
    RobustConfig,
    RoundConfig,
    config_from_dict,
    to_dict,
)
from fleetgrid.workloads.training.flat import FlatLayout
from fleetgrid.workloads.training.local import private_delta
from fleetgrid.workloads.training.privacy import (
    RDP_ORDERS,
    PrivacyConfig,
    calibrate_noise_multiplier,
    car_noise_std,
    check_sum_norm,
    dp_sum,
    epsilon_spent,
    finish_sum,
    private_combine,
)
from fleetgrid.workloads.training.simulate import SimulatedFleet, SimulationConfig
from fleetgrid.workloads.training.strategies import FedAvg, strategy_from_state_bytes
from fleetgrid.workloads.training.tasks import DataSpec, build_local_dataset, build_model


def test_dp_sum_clips_each_update_to_clip_and_adds_nothing_at_zero_noise():
    deltas = [torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4]), torch.tensor([0.0, -10.0])]
    total, clipped = dp_sum(deltas, clip=1.0, noise_std=0.0)
    assert clipped == 2  # norms 5 and 10 are clipped; 0.5 is not
    torch.testing.assert_close(total, torch.tensor([0.6 + 0.3, 0.8 + 0.4 - 1.0], dtype=torch.float64))
    torch.testing.assert_close(finish_sum(total, 3), torch.tensor([0.3, 0.2 / 3]), atol=1e-6, rtol=0)


def test_central_noise_has_standard_deviation_sigma_times_clip():
    dim, sigma, clip = 200_000, 1.5, 0.4
    total, _ = dp_sum([torch.zeros(dim)], clip=clip, noise_std=sigma * clip,
                      generator=torch.Generator().manual_seed(0))
    std = float(total.std())
    # the sample std of 200,000 normals is within 1% of the true one with overwhelming probability
    assert abs(std - sigma * clip) < 0.01 * sigma * clip, std
    assert abs(float(total.mean())) < 5 * sigma * clip / math.sqrt(dim)


def test_distributed_noise_from_n_cars_sums_to_the_central_variance():
    n, dim, sigma, clip = 16, 50_000, 2.0, 0.5
    config = LocalTrainingConfig(update_clip=clip, update_noise_std=car_noise_std(noise_multiplier=sigma, clip=clip,
                                                                                   cars=n))
    total = sum(private_delta(torch.zeros(dim), config).to(torch.float64) for _ in range(n))
    assert abs(float(total.std()) - sigma * clip) < 0.02 * sigma * clip
    one = private_delta(torch.zeros(dim), config)
    assert abs(float(one.std()) - sigma * clip / 4) < 0.02 * sigma * clip / 4  # each car adds 1/sqrt(16) of it


def test_the_car_clips_its_own_update():
    clipped = private_delta(torch.tensor([6.0, 8.0]), LocalTrainingConfig(update_clip=2.0))
    torch.testing.assert_close(clipped, torch.tensor([1.2, 1.6]))


def test_check_sum_norm_accepts_clipped_noisy_sums_and_refuses_an_unclipped_update():
    n, dim, clip, sigma = 10, 1000, 1.0, 1.0
    gen = torch.Generator().manual_seed(1)
    car_std = car_noise_std(noise_multiplier=sigma, clip=clip, cars=n)
    honest = []
    for _ in range(n):
        d = torch.randn(dim, generator=gen)
        honest.append(d / d.norm() * clip + car_std * torch.randn(dim, generator=gen))
    total = torch.stack(honest).sum(dim=0)
    assert check_sum_norm(total, cars=n, clip=clip, noise_std=sigma * clip) > n * clip * 0.5
    cheat = total + 200 * honest[0]  # one car skipped its clip and scaled its update up
    with pytest.raises(InvalidInput, match="some car did not clip its update"):
        check_sum_norm(cheat, cars=n, clip=clip, noise_std=sigma * clip)


def test_distributed_combine_checks_the_sum_and_charges_less_noise_for_a_short_round():
    config = PrivacyConfig(mode="distributed", clip=1.0, noise_multiplier=1.0)
    deltas = [torch.full((4,), 0.25) for _ in range(4)]
    mean, metrics = private_combine(deltas, config, noise_multiplier=1.0, expected_cars=16)
    torch.testing.assert_close(mean, torch.full((4,), 0.25))
    assert metrics["dp_sigma"] == pytest.approx(0.5)  # 4 of 16 noise shares: sigma sqrt(4 / 16)
    with pytest.raises(InvalidInput, match="did not clip"):
        private_combine([torch.full((4,), 50.0)] * 4, config, noise_multiplier=1.0, expected_cars=4)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_matches_dp_accounting_used_directly(accountant):
    q, sigma, rounds, delta = 0.01, 1.1, 50, 1e-5
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), rounds)
    direct = rdp.RdpAccountant(list(RDP_ORDERS)) if accountant == "rdp" else pld.PLDAccountant()
    direct.compose(event)
    ours = epsilon_spent([sigma] * rounds, q=q, delta=delta, accountant=accountant)
    assert ours == pytest.approx(direct.get_epsilon(delta), rel=1e-9)
    assert 0 < ours < math.inf
    assert epsilon_spent([sigma] * (rounds + 10), q=q, delta=delta, accountant=accountant) > ours  # it grows
    assert epsilon_spent([], q=q, delta=delta) == 0.0


def test_rounds_with_different_sigmas_compose():
    mixed = epsilon_spent([1.0, 1.0, 2.0], q=0.1, delta=1e-5)
    assert epsilon_spent([2.0] * 3, q=0.1, delta=1e-5) < mixed < epsilon_spent([1.0] * 3, q=0.1, delta=1e-5)


@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_calibration_hits_the_target_epsilon_within_tolerance(target):
    rounds, q, delta = 30, 0.1, 1e-5
    sigma = calibrate_noise_multiplier(target, rounds=rounds, q=q, delta=delta)
    eps = epsilon_spent([sigma] * rounds, q=q, delta=delta)
    assert target * 0.97 <= eps <= target  # never above; 1% on sigma is a few percent on epsilon at most
    assert epsilon_spent([sigma / 1.02] * rounds, q=q, delta=delta) > target  # and not needlessly noisy


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "local"}, r"privacy mode must be one of \('none', 'central', 'distributed'\), got 'local'"),
        ({"mode": "central", "noise_multiplier": 1.0}, "needs clip"),
        ({"mode": "central", "clip": 1.0}, "needs exactly one of noise_multiplier"),
        ({"mode": "central", "clip": 1.0, "noise_multiplier": 1.0, "target_epsilon": 3.0}, "exactly one of"),
        ({"mode": "central", "clip": -1.0, "noise_multiplier": 1.0}, "clip must be a finite number > 0"),
        ({"mode": "central", "clip": 1.0, "noise_multiplier": 1.0, "delta": 1.5}, r"delta must be .* in \(0, 1\)"),
        ({"mode": "central", "clip": 1.0, "noise_multiplier": 1.0, "accountant": "moments"}, "accountant must be one"),
        ({"mode": "none", "clip": 1.0}, r"\['clip'\] need mode 'central' or 'distributed'"),
        ({"mode": "central", "clip": 1.0, "noise_multiplier": 1.0, "population": 0}, "population must be an int"),
    ],
)
def test_bad_privacy_settings_name_the_problem(kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        PrivacyConfig(**kwargs)


SPEC = DataSpec(dataset="mnist1d", num_vehicles=8, alpha=1.0, seed=0, num_samples=1200)


def run_private(privacy, rounds):
    model = build_model("mnist1d-cnn", seed=0)
    p0 = FlatLayout.of(model).flatten(model)
    datasets = [build_local_dataset(SPEC, i) for i in range(SPEC.num_vehicles)]
    fleet = SimulatedFleet(model, datasets, SimulationConfig(seed=1), initial_params=p0)
    config = FedAvgConfig(local=LocalTrainingConfig(steps=2, batch_size=16), privacy=privacy,
                          rounds=RoundConfig(clients_per_round=4, over_selection=1.0, deadline_s=60.0),
                          robust=RobustConfig(norm_bound="off"))
    strategy = FedAvg(p0, config)
    return strategy, strategy.run(fleet, rounds)


def test_a_private_job_reports_growing_epsilon_and_stops_when_its_budget_is_spent():
    privacy = PrivacyConfig(mode="central", clip=0.5, noise_multiplier=1.0, population=80, epsilon_budget=2.0)
    strategy, history = run_private(privacy, rounds=50)
    eps = [h["epsilon"] for h in history[1:]]
    assert len(eps) >= 2 and all(b > a for a, b in zip(eps, eps[1:], strict=False))
    assert strategy.stopped_on_budget and strategy.version < 50
    assert eps[-1] <= 2.0 < strategy.epsilon(extra_rounds=1)  # spent up to, never past, the budget
    report = strategy.privacy_report()
    assert report is not None and report["epsilon"] == pytest.approx(eps[-1]) and report["stopped_on_budget"]
    assert report["sampling_rate"] == pytest.approx(4 / 80)
    resumed = strategy_from_state_bytes(strategy.state_bytes())
    assert resumed.stopped_on_budget and resumed.epsilon() == pytest.approx(eps[-1])


def test_distributed_mode_sends_cars_their_clip_and_noise_share_and_calibrates_sigma():
    privacy = PrivacyConfig(mode="distributed", clip=0.5, target_epsilon=5.0, population=80)
    strategy, history = run_private(privacy, rounds=3)
    assert strategy.version == 3 and not strategy.stopped_on_budget
    assert history[-1]["epsilon"] <= 5.0
    local = strategy.instructions("car-0").local
    assert local.update_clip == 0.5
    assert strategy.noise_multiplier is not None
    assert local.update_noise_std == pytest.approx(strategy.noise_multiplier * 0.5 / 2)  # sigma C / sqrt(4)
    assert all(np.isfinite(strategy.params.numpy()))


def test_privacy_settings_round_trip_through_json():
    config = FedAvgConfig(privacy=PrivacyConfig(mode="central", clip=1.0, target_epsilon=3.0, accountant="pld"),
                          robust=RobustConfig(norm_bound="off"))
    assert config_from_dict(FedAvgConfig, to_dict(config)) == config
    partial = config_from_dict(FedAvgConfig, {"privacy": {"mode": "central", "clip": 1.0, "noise_multiplier": 1.0},
                                              "robust": {"norm_bound": "off"}})
    assert partial.privacy.delta == 1e-5 and partial.privacy.accountant == "rdp"
