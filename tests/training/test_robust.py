"""Robust by default: a huge, scaled or sign-flipped update from one car leaves every strategy's global finite and
near the honest aggregate; trimmed mean and median work; a claim of more examples than the car's data is refused."""

import dataclasses

import numpy as np
import pytest
import torch

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.compression import CompressionConfig, decode, encode
from fleetgrid.workloads.training.config import (
    DiLoCoConfig,
    FedAvgConfig,
    FedBuffConfig,
    LocalTrainingConfig,
    RobustConfig,
    RoundConfig,
    config_from_dict,
    to_dict,
)
from fleetgrid.workloads.training.flat import FlatLayout
from fleetgrid.workloads.training.local import make_evaluator
from fleetgrid.workloads.training.messages import ClientUpdate
from fleetgrid.workloads.training.simulate import SimulatedFleet, SimulationConfig
from fleetgrid.workloads.training.strategies import FedAvg, make_strategy, strategy_from_state_bytes
from fleetgrid.workloads.training.tasks import DataSpec, build_eval_set, build_local_dataset, build_model

P = 64
HONEST = 8
CONFIGS = {"fedavg": FedAvgConfig, "diloco": DiLoCoConfig, "fedbuff": FedBuffConfig}


def report(strategy, delta, *, client, examples=100):
    return ClientUpdate(
        client_id=client, round=strategy.round, base_version=strategy.version,
        payload=encode(np.asarray(delta, dtype=np.float32), CompressionConfig()),
        num_examples=examples, steps_done=10, steps_planned=10, examples_seen=320,
    )


def honest_deltas(seed=0):
    """Eight cars agreeing on a direction of norm 1, each with its own noise (norm ~0.16)."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(P, generator=gen)
    direction /= direction.norm()
    return [direction + 0.02 * torch.randn(P, generator=gen) for _ in range(HONEST)]


ATTACKS = {
    "huge": lambda honest: torch.full((P,), 3e38),  # finite float32, a norm of 2.4e39
    "scaled": lambda honest: 100 * honest[0],
    "sign_flipped": lambda honest: -honest[0],
}


def one_round(name, robust, attack=None, examples=100):
    """The global after one round of the honest cars (and one attacker): params moved from zeros."""
    s = make_strategy(name, torch.zeros(P), CONFIGS[name](robust=robust))
    honest = honest_deltas()
    updates = [report(s, d, client=f"car-{i}") for i, d in enumerate(honest)]
    if attack is not None:
        updates.append(report(s, ATTACKS[attack](honest), client="hostile", examples=examples))
    summary = s.aggregate([s.accept(u) for u in updates])
    return s, summary


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_one_hostile_update_cannot_derail_any_strategy_by_default(name, attack):
    clean, _ = one_round(name, RobustConfig())
    step = clean.params.norm()
    s, summary = one_round(name, RobustConfig(), attack)
    assert torch.isfinite(s.params).all()
    # One report in nine, bounded to twice the median norm: it can shift the mean by at most ~3/9 of a step.
    assert (s.params - clean.params).norm() < 0.4 * step
    assert summary["norm_bound"] == pytest.approx(2 * sorted(d.norm().item() for d in honest_deltas())[3], rel=0.2)
    assert summary["clipped"] == (0 if attack == "sign_flipped" else 1)
    # The defence is what holds: without it the scaled and huge updates throw the global far off.
    undefended, _ = one_round(name, RobustConfig(norm_bound="off"), attack)
    if attack != "sign_flipped":
        assert not torch.isfinite(undefended.params).all() or (undefended.params - clean.params).norm() > 5 * step
    # And the job goes on: an honest round after the attack still moves the global the honest way.
    before = s.params.clone()
    s.aggregate([s.accept(report(s, d, client=f"car-{i}")) for i, d in enumerate(honest_deltas(1))])
    assert torch.isfinite(s.params).all() and not torch.equal(s.params, before)


@pytest.mark.parametrize("aggregator", ["trimmed_mean", "median"])
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_trimmed_mean_and_median_stay_near_the_honest_aggregate(aggregator, attack):
    clean, _ = one_round("fedavg", RobustConfig(norm_bound="off"))  # the honest mean: params = -mean
    for robust in (RobustConfig(aggregator=aggregator), RobustConfig(aggregator=aggregator, norm_bound="off")):
        s, _ = one_round("fedavg", robust, attack, examples=10**15)  # many examples buy no extra vote here
        assert torch.isfinite(s.params).all()
        assert (s.params - clean.params).norm() < 0.15 * clean.params.norm(), robust


def test_a_claim_beyond_what_the_cars_data_holds_is_refused_and_counted():
    s = make_strategy("fedavg", torch.zeros(P))
    honest = honest_deltas()
    hostile = report(s, ATTACKS["huge"](honest), client="hostile", examples=10**15)
    with pytest.raises(InvalidInput, match=r"num_examples=1000000000000000, more than the 100 .*at most 100"):
        s.accept(hostile, max_examples=100)
    accepted = [s.accept(report(s, d, client=f"car-{i}"), max_examples=100) for i, d in enumerate(honest)]
    summary = s.aggregate(accepted)
    assert summary["refused"] == 1 and summary["clipped"] == 0 and summary["used"] == HONEST
    assert s.aggregate([s.accept(report(s, honest[0], client="car-0"))])["refused"] == 0  # counted once


def test_without_a_known_limit_a_huge_claim_moves_the_global_at_most_the_bound():
    s, summary = one_round("fedavg", RobustConfig(), "huge", examples=10**15)
    assert torch.isfinite(s.params).all()
    assert s.params.norm() <= summary["norm_bound"] * 1.001  # all the weight, but only the bounded norm


def test_a_fixed_bound_clips_every_longer_update():
    s, summary = one_round("fedavg", RobustConfig(norm_bound="fixed", max_norm=0.5), "scaled")
    assert summary == summary | {"clipped": HONEST + 1, "norm_bound": 0.5}
    assert s.params.norm() <= 0.5 * 1.001


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"aggregator": "mode"}, r"aggregator must be one of \('mean', 'trimmed_mean', 'median', 'krum'\), got 'mode'"),
        ({"trim_fraction": 0.5}, r"trim_fraction must be a share in \[0, 0.5\), got 0.5"),
        ({"norm_bound": "tight"}, r"norm_bound must be one of \('adaptive', 'fixed', 'off'\)"),
        ({"norm_multiplier": 0.5}, r"norm_multiplier must be a finite number >= 1, got 0.5"),
        ({"norm_bound": "fixed"}, r"norm_bound='fixed' needs max_norm, a finite number > 0; got None"),
        ({"norm_bound": "fixed", "max_norm": -1.0}, r"needs max_norm, a finite number > 0; got -1.0"),
        ({"max_norm": 3.0}, r"max_norm=3.0 is used only with norm_bound='fixed'"),
    ],
)
def test_bad_robust_settings_name_the_field_and_what_is_accepted(kwargs, match):
    with pytest.raises(InvalidInput, match=match):
        RobustConfig(**kwargs)


def test_robust_settings_round_trip_through_json_and_checkpoints():
    config = DiLoCoConfig(robust=RobustConfig(aggregator="trimmed_mean", trim_fraction=0.2, norm_bound="fixed",
                                              max_norm=3.0))
    assert config_from_dict(DiLoCoConfig, to_dict(config)) == config
    assert DiLoCoConfig().robust == RobustConfig(aggregator="mean", norm_bound="adaptive")  # on by default
    s = make_strategy("diloco", torch.zeros(P), to_dict(config))
    assert strategy_from_state_bytes(s.state_bytes()).config.robust == config.robust
    with pytest.raises(InvalidInput, match=r"unknown RobustConfig setting\(s\) \['clip'\]"):
        make_strategy("fedavg", torch.zeros(P), {"robust": {"clip": 1.0}})
    with pytest.raises(InvalidInput, match="aggregator must be one of"):
        make_strategy("fedbuff", torch.zeros(P), {"robust": {"aggregator": "bulyan"}})


class HostileFleet(SimulatedFleet):
    """A simulated fleet in which car-0 trains like the others but reports, in turn, a huge update claiming 1e15
    examples, its update scaled x100, and its update sign-flipped."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.attacks = 0

    def _train(self, car, job):
        update = super()._train(car, job)
        if car.client_id != "car-0" or update is None:
            return update
        delta = decode(update.payload)
        self.attacks += 1
        kind = self.attacks % 3
        crafted = {1: (np.full_like(delta, 3e38), 10**15), 2: (100 * delta, update.num_examples),
                   0: (-delta, update.num_examples)}[kind]
        return dataclasses.replace(update, payload=encode(crafted[0], CompressionConfig()), num_examples=crafted[1])


SPEC16 = DataSpec(dataset="mnist1d", num_vehicles=16, alpha=1.0, seed=0, num_samples=3000)


def test_one_hostile_car_in_sixteen_does_not_derail_a_simulated_job():
    datasets = [build_local_dataset(SPEC16, i) for i in range(SPEC16.num_vehicles)]
    x, y = build_eval_set(SPEC16)
    evaluate = make_evaluator(build_model("mnist1d-cnn"), x, y)
    config = FedAvgConfig(local=LocalTrainingConfig(optimizer="sgd", lr=0.1, momentum=0.9, steps=20),
                          rounds=RoundConfig(clients_per_round=8, over_selection=1.0, deadline_s=60.0))

    def run(fleet_class, rounds=8):
        model = build_model("mnist1d-cnn", seed=0)
        p0 = FlatLayout.of(model).flatten(model)
        fleet = fleet_class(model, datasets, SimulationConfig(seed=3), initial_params=p0)
        return fleet, FedAvg(p0, config).run(fleet, rounds, evaluate_fn=evaluate)

    _, clean = run(SimulatedFleet)
    fleet, attacked = run(HostileFleet)
    assert fleet.attacks >= 3  # the hostile car was in the cohort often enough to try each attack
    assert sum(h.get("refused", 0) for h in attacked) >= 1  # the 1e15-example claim, beyond its shard
    assert sum(h.get("clipped", 0) for h in attacked) >= 1  # the scaled one
    assert attacked[-1]["accuracy"] > clean[0]["accuracy"] + 0.15  # it learned
    assert attacked[-1]["accuracy"] >= clean[-1]["accuracy"] - 0.03, (attacked[-1], clean[-1])
