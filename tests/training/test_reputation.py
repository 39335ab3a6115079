"""Reputation (``RobustConfig.reputation``): a car whose updates point against the others' is weighed down to 0 within
a few rounds, honest cars (non-IID ones too) keep full weight, the scores survive a checkpoint, and the option is
refused where it would not compose."""

import math

import numpy as np
import pytest
import torch

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.compression import CompressionConfig, encode
from fleetgrid.workloads.training.config import FedAvgConfig, PrivacyConfig, RobustConfig, RoundConfig
from fleetgrid.workloads.training.messages import ClientUpdate
from fleetgrid.workloads.training.reputation import leave_one_out_cosines, weight_factor
from fleetgrid.workloads.training.strategies import make_strategy, strategy_from_state_bytes

P = 64
HONEST = 8
ON = RobustConfig(reputation=True)


def report(strategy, delta, client):
    return ClientUpdate(client_id=client, round=strategy.round, base_version=strategy.version,
                        payload=encode(np.asarray(delta, dtype=np.float32), CompressionConfig()),
                        num_examples=100, steps_done=10, steps_planned=10, examples_seen=320)


def round_deltas(round_, *, shared=1.0):
    """Eight honest cars: ``shared`` x one common direction plus each car's own direction (non-IID: the own part
    dominates when ``shared`` is small), fresh every round."""
    gen = torch.Generator().manual_seed(round_)
    common = torch.randn(P, generator=gen)
    common /= common.norm()
    return [shared * common + torch.randn(P, generator=gen) / math.sqrt(P) for _ in range(HONEST)]


def play(strategy, rounds, *, shared=1.0, hostile=True):
    """``rounds`` rounds of the honest cars and, if ``hostile``, car 'flip' reporting car-0's delta x -4."""
    summaries = []
    for r in range(rounds):
        honest = round_deltas(r, shared=shared)
        updates = [report(strategy, d, f"car-{i}") for i, d in enumerate(honest)]
        if hostile:
            updates.append(report(strategy, -4 * honest[0], "flip"))
        summaries.append(strategy.aggregate([strategy.accept(u) for u in updates]))
    return summaries


def factors(strategy):
    return {car: weight_factor(score, strategy.config.robust.reputation_margin)
            for car, score in strategy.reputation.items()}


def test_leave_one_out_cosines_by_hand():
    vectors = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([-1.0, 0.0])]
    cos = leave_one_out_cosines(vectors, [1.0, 1.0, 1.0])
    assert cos == pytest.approx([-1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)])  # the middle one's others cancel
    assert leave_one_out_cosines(vectors, [1.0, 1.0, 0.0]) == pytest.approx([0.0, 0.0, -1 / math.sqrt(2)])


def test_weight_factor_is_full_at_zero_and_none_below_the_margin():
    assert [weight_factor(s, 0.1) for s in (0.5, 0.0, -0.05, -0.1, -0.9)] == pytest.approx([1, 1, 0.5, 0, 0])


@pytest.mark.parametrize("name", ["fedavg", "diloco", "fedbuff"])
def test_an_anti_aligned_car_is_cut_within_a_few_rounds_and_honest_cars_keep_full_weight(name):
    s = make_strategy(name, torch.zeros(P), {"robust": {"reputation": True}})
    summaries = play(s, 4)
    assert summaries[0]["reputation_cut"] == 0  # new cars start neutral
    assert all(x["reputation_cut"] == 1 for x in summaries[1:])  # one report was enough to tell
    f = factors(s)
    assert f.pop("flip") == 0.0
    assert set(f.values()) == {1.0}


def test_once_cut_the_hostile_car_leaves_the_global_where_the_honest_cars_alone_put_it():
    rounds = RoundConfig(clients_per_round=HONEST + 1, min_reports=HONEST)
    with_flip = make_strategy("fedavg", torch.zeros(P), FedAvgConfig(robust=ON, rounds=rounds))
    alone = make_strategy("fedavg", torch.zeros(P), FedAvgConfig(robust=ON, rounds=rounds))
    play(with_flip, 1)
    play(alone, 1, hostile=False)
    before = with_flip.params.clone()
    start = alone.params.clone()
    honest = round_deltas(7)
    with_flip.aggregate([with_flip.accept(report(with_flip, d, f"car-{i}")) for i, d in enumerate(honest)]
                        + [with_flip.accept(report(with_flip, -4 * honest[0], "flip"))])
    alone.aggregate([alone.accept(report(alone, d, f"car-{i}")) for i, d in enumerate(honest)])
    torch.testing.assert_close(with_flip.params - before, alone.params - start, atol=1e-6, rtol=1e-5)


def test_weakly_agreeing_non_iid_cars_are_not_cut():
    s = make_strategy("fedavg", torch.zeros(P), {"robust": {"reputation": True}})
    play(s, 10, shared=0.3, hostile=False)  # each car's own direction is ~3x the shared one
    assert set(factors(s).values()) == {1.0}


def test_off_by_default_and_leaves_no_trace():
    s = make_strategy("fedavg", torch.zeros(P))
    assert play(s, 2)[-1].get("reputation_cut") is None
    assert s.reputation == {}


def test_reputation_survives_a_checkpoint_round_trip():
    s = make_strategy("diloco", torch.zeros(P), {"robust": {"reputation": True, "reputation_margin": 0.2}})
    play(s, 3)
    resumed = strategy_from_state_bytes(s.state_bytes())
    assert resumed.reputation == s.reputation and "flip" in resumed.reputation
    assert resumed.config.robust == s.config.robust
    play(s, 1)
    play(resumed, 1)
    assert resumed.reputation == s.reputation
    torch.testing.assert_close(resumed.params, s.params)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reputation": "yes"}, r"reputation must be true or false, got 'yes'"),
        ({"reputation": True, "reputation_margin": 0.0}, r"reputation_margin must be a number in \(0, 1\], got 0.0"),
        ({"reputation_margin": 1.5}, r"reputation_margin must be a number in \(0, 1\], got 1.5"),
        ({"reputation": True, "aggregator": "median"}, r"reputation weighs cars, so it needs aggregator 'mean'"),
    ],
)
def test_bad_reputation_settings_name_the_field_and_what_is_accepted(kwargs, match):
    with pytest.raises(InvalidInput, match=match):
        RobustConfig(**kwargs)


def test_reputation_is_refused_with_differential_privacy_and_secure_aggregation():
    with pytest.raises(InvalidInput, match=r"reputation cannot run with differential privacy: .*reputation=False"):
        FedAvgConfig(robust=RobustConfig(reputation=True, norm_bound="off"),
                     privacy=PrivacyConfig(mode="central", clip=1.0, noise_multiplier=1.0))
    with pytest.raises(InvalidInput, match=r"reputation cannot run with secure aggregation: .*only the sum"):
        FedAvgConfig(robust=RobustConfig(reputation=True, norm_bound="fixed", max_norm=1.0), secure_aggregation=True)
