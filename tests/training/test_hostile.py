"""Hostile cars in the simulated fleet (``SimulationConfig.hostile``): each attack sends what it says, and the
shipped robustness (the refusal of impossible example counts, the adaptive norm bound) contains it."""

import numpy as np
import pytest
import torch

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.compression import CompressionConfig, decode, encode
from fleetgrid.workloads.training.config import FedAvgConfig, LocalTrainingConfig, RoundConfig
from fleetgrid.workloads.training.flat import FlatLayout
from fleetgrid.workloads.training.messages import ClientUpdate
from fleetgrid.workloads.training.simulate import SimulatedFleet, SimulationConfig, hostile_update
from fleetgrid.workloads.training.strategies import FedAvg
from fleetgrid.workloads.training.tasks import DataSpec, build_local_dataset, build_model

SPEC = DataSpec(dataset="mnist1d", num_vehicles=4, alpha=1.0, seed=0, num_samples=600)


@pytest.fixture(scope="module")
def datasets():
    return [build_local_dataset(SPEC, i) for i in range(SPEC.num_vehicles)]


def honest(bits):
    delta = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    payload = encode(delta, CompressionConfig(bits=bits))
    return ClientUpdate(client_id="car-0", round=1, base_version=0, payload=payload, num_examples=50, steps_done=3,
                        steps_planned=3, examples_seen=96)


@pytest.mark.parametrize("bits", [None, 4])
def test_each_attack_doctors_the_honest_delta_in_the_same_codec(bits):
    update = honest(bits)
    sent = decode(update.payload)
    rng = np.random.default_rng(1)
    attacked = {a: hostile_update(update, a, rng) for a in ("scaled", "signflip", "huge", "noise")}
    assert all(len(u.payload) == len(update.payload) for u in attacked.values())  # same bytes on the wire
    np.testing.assert_allclose(decode(attacked["scaled"].payload), 20 * sent, rtol=1e-6)
    np.testing.assert_allclose(decode(attacked["signflip"].payload), -4 * sent, rtol=1e-6)
    assert (decode(attacked["huge"].payload) >= 2.9e38).all() and attacked["huge"].num_examples == 10**15
    ratio = np.linalg.norm(decode(attacked["noise"].payload)) / np.linalg.norm(sent)
    assert 8 < ratio < 12  # 10x, give or take int4's rounding
    assert all(u.num_examples == 50 for a, u in attacked.items() if a != "huge")


def test_unknown_attacks_and_cars_are_refused(datasets):
    with pytest.raises(InvalidInput, match="attacks must be among"):
        SimulationConfig(hostile={"car-0": "polite"})
    with pytest.raises(InvalidInput, match="car-9"):
        SimulatedFleet(build_model("mnist1d-cnn", seed=0), datasets, SimulationConfig(hostile={"car-9": "huge"}))


def run_fedavg(datasets, attack, versions=3):
    """FedAvg on 4 cars that all report every round, car-0 hostile: (strategy, fleet, history)."""
    model = build_model("mnist1d-cnn", seed=0)
    params = FlatLayout.of(model).flatten(model)
    wanted = 3 if attack == "huge" else 4  # a refused car leaves 3 usable reports a round
    config = FedAvgConfig(local=LocalTrainingConfig(steps=3, batch_size=16, momentum=0.9),
                          rounds=RoundConfig(clients_per_round=wanted, over_selection=4 / wanted, min_reports=1))
    fleet = SimulatedFleet(model, datasets, SimulationConfig(seed=0, hostile={"car-0": attack}),
                           initial_params=params)
    strategy = FedAvg(params, config)
    return strategy, fleet, strategy.run(fleet, versions)


def test_a_huge_car_is_refused_every_time_and_the_global_stays_finite(datasets):
    strategy, fleet, history = run_fedavg(datasets, "huge")
    assert fleet.counts["hostile"] >= 3  # car-0 was dispatched every round and reported
    assert sum(h["refused"] for h in history[1:]) == fleet.counts["hostile"]
    assert all(h["cars"] == 3 for h in history[1:])
    assert torch.isfinite(strategy.params).all()


def test_a_scaled_car_is_clipped_to_the_round_norm_bound(datasets):
    strategy, fleet, history = run_fedavg(datasets, "scaled")
    assert fleet.counts["hostile"] == 3 and all(h["cars"] == 4 for h in history[1:])
    for h in history[1:]:
        assert h["clipped"] >= 1  # x20 is far past 2x the round's median norm
        assert h["pseudo_grad_norm"] <= h["norm_bound"] * (1 + 1e-5)
    assert torch.isfinite(strategy.params).all()
