"""End to end, in process: strategies driving a simulated fleet of cars on MNIST-1D."""

import dataclasses

import pytest
import torch

from fleetgrid.errors import Conflict, HashMismatch
from fleetgrid.workloads.training.compression import CompressionConfig, encoded_nbytes
from fleetgrid.workloads.training.config import (
    DiLoCoConfig,
    FedBuffConfig,
    LocalTrainingConfig,
    RoundConfig,
)
from fleetgrid.workloads.training.flat import FlatLayout
from fleetgrid.workloads.training.local import make_evaluator
from fleetgrid.workloads.training.simulate import SimulatedFleet, SimulationConfig
from fleetgrid.workloads.training.strategies import DiLoCo, FedBuff, strategy_from_state_bytes
from fleetgrid.workloads.training.tasks import DataSpec, build_eval_set, build_local_dataset, build_model

SPEC = DataSpec(dataset="mnist1d", num_vehicles=8, alpha=1.0, seed=0, num_samples=3000)


@pytest.fixture(scope="module")
def task():
    datasets = [build_local_dataset(SPEC, i) for i in range(SPEC.num_vehicles)]
    x, y = build_eval_set(SPEC)
    model = build_model("mnist1d-cnn", seed=0)
    return datasets, make_evaluator(build_model("mnist1d-cnn"), x, y), model, FlatLayout.of(model).flatten(model)


def diloco_config(**rounds):
    return DiLoCoConfig(
        local=LocalTrainingConfig(
            optimizer="adamw", lr=3e-3, steps=25, batch_size=32, compression=CompressionConfig(bits=8)
        ),
        rounds=RoundConfig(clients_per_round=4, over_selection=1.5, min_reports=2, deadline_s=60.0, **rounds),
        downlink=CompressionConfig(bits=8),
        outer_lr=0.7,
        outer_momentum=0.9,
    )


def test_diloco_int8_with_preemption_improves_and_resumes_from_checkpoint(task):
    datasets, evaluate, model, p0 = task
    fleet = SimulatedFleet(model, datasets, SimulationConfig(preempt_prob=0.5, dropout_prob=0.1, seed=1))
    checkpoints = []
    s = DiLoCo(p0, diloco_config())
    history = s.run(fleet, 4, evaluate_fn=evaluate, on_version=lambda st: checkpoints.append(st.state_bytes()))
    assert len(checkpoints) == 4 and [h["version"] for h in history] == [0, 1, 2, 3, 4]
    resumed = strategy_from_state_bytes(checkpoints[-1])  # as after a coordinator SIGKILL
    history = resumed.run(fleet, 10, evaluate_fn=evaluate)
    assert [h["version"] for h in history] == list(range(11))
    assert history[-1]["accuracy"] > history[0]["accuracy"] + 0.25
    stats = fleet.stats()
    assert stats["preempted"] > 0 and stats["revoked"] > 0  # partial work was seen; over-selected stragglers revoked
    assert stats["bytes_up"] == sum(up for up, _ in fleet.bytes_per_car().values())
    # int8 uplink: about a quarter of float32 per report
    assert stats["bytes_up"] < stats["reported"] * 4 * p0.numel() / 3.5


def test_fedbuff_async_improves(task):
    datasets, evaluate, model, p0 = task
    fleet = SimulatedFleet(model, datasets, SimulationConfig(preempt_prob=0.3, speed_spread=1.0, seed=2))
    s = FedBuff(
        p0,
        FedBuffConfig(
            local=LocalTrainingConfig(optimizer="sgd", lr=0.1, momentum=0.9, steps=25),
            buffer_size=3,
            concurrency=6,
            max_staleness=4,
            server_lr=1.0,
        ),
    )
    history = s.run(fleet, 12, evaluate_fn=evaluate)
    assert max(h["accuracy"] for h in history[-3:]) > history[0]["accuracy"] + 0.15
    assert max(h["mean_staleness"] for h in history[1:]) > 0  # updates really arrived stale
    assert fleet.stats()["revoked"] == 0  # asynchronous: nobody's work is thrown away at a round boundary


def test_rounds_without_enough_reports_are_abandoned_and_global_untouched(task):
    datasets, _, model, p0 = task
    fleet = SimulatedFleet(model, datasets, SimulationConfig(dropout_prob=1.0))
    s = DiLoCo(p0, diloco_config(max_retries=2))
    with pytest.raises(Conflict, match="abandoned 3 times"):
        s.run(fleet, 1)
    assert s.version == 0 and torch.equal(s.params, p0) and s.round == 3
    assert fleet.stats()["dispatched"] == 3 * 6  # each attempt over-selects ceil(4 * 1.5) cars


def test_cars_that_build_version_zero_locally_download_only_deltas(task):
    datasets, _, model, p0 = task
    cfg = diloco_config()
    fleet = SimulatedFleet(model, datasets, SimulationConfig(seed=3), initial_params=p0)
    DiLoCo(p0, cfg).run(fleet, 2)
    stats = fleet.stats()
    # int8 deltas only: about a quarter of a float32 model per dispatch, never a full snapshot
    assert 0 < stats["bytes_down"] < stats["dispatched"] * p0.numel() * 1.1
    wrong = SimulatedFleet(model, datasets, SimulationConfig(seed=3), initial_params=p0 + 1e-3)
    with pytest.raises(HashMismatch):
        DiLoCo(p0, cfg).run(wrong, 2)


@pytest.mark.parametrize("down_bits", [4, 2])
def test_cars_rebuild_every_version_bit_for_bit_from_quantized_deltas(task, down_bits):
    """The coordinator's global follows what its downlink codec carries (error feedback keeps the rest), so a car
    that holds version v rebuilds v + k exactly from k small deltas: the 2-bit downlink is about half the 4-bit one."""
    datasets, _, model, p0 = task
    cfg = dataclasses.replace(diloco_config(), downlink=CompressionConfig(bits=down_bits, chunk_size=256),
                              snapshot_bits=None)  # deltas, or a float32 snapshot, never an approximate copy
    fleet = SimulatedFleet(model, datasets, SimulationConfig(seed=4, preempt_prob=0.5), initial_params=p0)
    strategy = DiLoCo(p0, cfg)
    seen = {0: p0.clone()}

    def check(s):
        seen[s.version] = s.params.clone()
        for car in fleet.cars.values():  # each car holds some version it rebuilt; it must be the coordinator's
            assert torch.equal(car.held_params, seen[car.held_version])

    strategy.run(fleet, 5, on_version=check)
    stats = fleet.stats()
    assert stats["full_downloads"] == 0 and stats["deltas_down"] >= stats["dispatched"]
    delta = encoded_nbytes(p0.numel(), cfg.downlink)
    assert stats["bytes_down"] == stats["deltas_down"] * delta
    wider = CompressionConfig(bits={4: 8, 2: 4}[down_bits], chunk_size=256)
    assert delta < 0.6 * encoded_nbytes(p0.numel(), wider)
    assert not torch.equal(strategy.params, p0)
