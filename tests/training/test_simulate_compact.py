"""In process: a simulated fleet of stale cars with the compact snapshot on the downlink (``snapshot_bits``)."""

import pytest
import torch

from fleetgrid.workloads.training.compression import CompressionConfig, decode
from fleetgrid.workloads.training.config import DiLoCoConfig, LocalTrainingConfig, RoundConfig
from fleetgrid.workloads.training.flat import FlatLayout
from fleetgrid.workloads.training.local import make_evaluator
from fleetgrid.workloads.training.simulate import SimulatedFleet, SimulationConfig
from fleetgrid.workloads.training.strategies import DiLoCo
from fleetgrid.workloads.training.tasks import DataSpec, build_eval_set, build_local_dataset, build_model

SPEC = DataSpec(dataset="mnist1d", num_vehicles=16, alpha=1.0, seed=0, num_samples=3000)


@pytest.fixture(scope="module")
def task():
    datasets = [build_local_dataset(SPEC, i) for i in range(SPEC.num_vehicles)]
    x, y = build_eval_set(SPEC)
    model = build_model("mnist1d-cnn", seed=0)
    return datasets, make_evaluator(build_model("mnist1d-cnn"), x, y), model, FlatLayout.of(model).flatten(model)


def run(task, snapshot_bits):
    datasets, evaluate, model, p0 = task
    config = DiLoCoConfig(
        local=LocalTrainingConfig(optimizer="adamw", lr=3e-3, steps=25, batch_size=32,
                                  compression=CompressionConfig(bits=4)),
        rounds=RoundConfig(clients_per_round=2, over_selection=1.5, min_reports=2, deadline_s=60.0),
        downlink=CompressionConfig(bits=4), snapshot_bits=snapshot_bits)
    s = DiLoCo(p0, config)
    initial, exact = p0, True
    if snapshot_bits is not None:  # a fresh car downloads version 0's compact snapshot
        initial, exact = torch.from_numpy(decode(s.compact_snapshot()[0]).reshape(-1).copy()), False
    fleet = SimulatedFleet(model, datasets, SimulationConfig(preempt_prob=0.3, seed=3), initial_params=initial,
                           initial_exact=exact)
    history = s.run(fleet, 14, evaluate_fn=evaluate)
    return s, fleet, history


def test_stale_cars_download_less_with_the_compact_snapshot_and_still_train(task):
    off, fleet_off, _ = run(task, None)
    on, fleet_on, history = run(task, 8)
    stats_on, stats_off = fleet_on.stats(), fleet_off.stats()
    assert stats_off["compact_downloads"] == 0
    assert stats_on["compact_downloads"] > 0 and stats_on["full_downloads"] == 0
    assert stats_on["bytes_down"] < stats_off["bytes_down"]
    assert history[-1]["accuracy"] > 0.3  # ten classes: chance is 0.1
    for car in fleet_on.cars.values():
        if car.held_version != on.version:
            continue
        if car.held_exact:  # deltas all the way from an exact copy: bit for bit
            assert torch.equal(car.held_params, on.params)
        else:  # a compact copy kept up to date by exact deltas: still within one int8 rounding step
            scale = on.params.abs().max()
            assert (car.held_params - on.params).abs().max() <= scale / 127
    assert any(not c.held_exact for c in fleet_on.cars.values())

