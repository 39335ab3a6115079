"""SCAFFOLD-style drift correction (``DiLoCoConfig.drift_correction``): its settings, the fleet's control variate
on the coordinator (maths, checkpoint, bytes down) and the correction and mean gradient on the car (bytes up)."""

import dataclasses

import numpy as np
import pytest
import torch

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.compression import CompressionConfig, decode, encode, encoded_nbytes
from fleetgrid.workloads.training.config import DiLoCoConfig, LocalTrainingConfig, RobustConfig
from fleetgrid.workloads.training.flat import FlatLayout
from fleetgrid.workloads.training.local import ArrayDataset, train_locally
from fleetgrid.workloads.training.messages import ClientUpdate, TrainInstructions
from fleetgrid.workloads.training.simulate import SimulatedFleet, SimulationConfig
from fleetgrid.workloads.training.strategies import DiLoCo, make_strategy, strategy_from_state_bytes


def t(*v):
    return torch.tensor(v, dtype=torch.float32)


def f32(v):
    return encode(np.asarray(v, dtype=np.float32), CompressionConfig())


def update(strategy, delta, *, control=None, steps=10, planned=10, examples=1, client="c"):
    return ClientUpdate(client_id=client, round=strategy.round, base_version=strategy.version, payload=f32(delta),
                        num_examples=examples, steps_done=steps, steps_planned=planned, examples_seen=steps,
                        control=None if control is None else f32(control))


def fold(strategy, *updates):
    return strategy.aggregate([strategy.accept(u) for u in updates])


def unbounded(strength=1.0, **changes):
    return DiLoCoConfig(drift_correction=strength, robust=RobustConfig(norm_bound="off"), **changes)


@pytest.mark.parametrize(("settings", "needle"), [
    ({"drift_correction": 1.5}, "drift_correction must be a strength in [0, 1]"),
    ({"drift_correction": -0.1}, "drift_correction must be a strength in [0, 1]"),
    ({"drift_correction": True}, "drift_correction must be a strength in [0, 1]"),
    ({"drift_correction": 1.0, "robust": {"aggregator": "median"}}, "needs aggregator 'mean'"),
    ({"drift_correction": 1.0, "secure_aggregation": True, "robust": {"norm_bound": "fixed", "max_norm": 1.0}},
     "secure_aggregation True"),
    ({"local": {"drift_correction": 2}}, "local drift_correction must be a strength"),
])
def test_impossible_drift_correction_settings_are_refused(settings, needle):
    with pytest.raises(InvalidInput, match=needle.replace("[", r"\[").replace("]", r"\]")):
        make_strategy("diloco", t(0, 0), settings)


def test_off_by_default_and_nothing_extra_travels():
    s = DiLoCo(t(1, 1), DiLoCoConfig())
    assert s.config.drift_correction == 0 and s.instructions("c").local.drift_correction == 0
    fold(s, update(s, [1, 0]))
    assert "control" not in s.server_state and s.download(None).control is None


def test_the_fleet_control_is_the_weighted_mean_gradient_of_the_round():
    # weights 1 (full) and 2 * 5/10 = 1 (half the steps): c = ([0.2, 0] + [0, 0.4]) / 2
    s = DiLoCo(t(0, 0), unbounded())
    fold(s, update(s, [2, 0], control=[0.2, 0]), update(s, [0, 1], control=[0, 0.4], steps=5, examples=2))
    assert torch.allclose(s.server_state["control"], t(0.1, 0.2))


def test_a_report_without_a_sound_control_is_refused():
    s = DiLoCo(t(0, 0), unbounded())
    before = s.state_bytes()
    for bad, needle in [(update(s, [1, 0]), "has no control"), (update(s, [1, 0], control=[1, 2, 3]), "shape"),
                        (dataclasses.replace(update(s, [1, 0]), control=b"junk"), "shorter than")]:
        with pytest.raises(InvalidInput, match=needle):
            s.accept(bad)
    assert s.refused == 3 and s.state_bytes() == before


def test_the_control_is_checkpointed_and_its_bytes_counted_in_the_download():
    config = unbounded(downlink=CompressionConfig(bits=4))
    s = DiLoCo(torch.linspace(-1, 1, 600), config)
    first = s.download(None)
    assert first.control is None  # before any round there is no c to send
    fold(s, update(s, np.full(600, 0.5, dtype=np.float32), control=np.full(600, 0.05, dtype=np.float32)))
    d = s.download(None)
    assert d.control is not None and len(d.control) == encoded_nbytes(600, config.downlink)
    assert d.nbytes == len(d.full) + len(d.control) > first.nbytes
    np.testing.assert_allclose(decode(d.control), 0.05, rtol=1e-6)
    assert s.download(0).control == d.control and s.download(s.version).nbytes == 0  # held: c came with it
    r = strategy_from_state_bytes(s.state_bytes())
    assert torch.equal(r.server_state["control"], s.server_state["control"])
    assert r.download(None).control == d.control


def local_setup(strength, steps=8):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(64, 4)
    ds = ArrayDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())
    local = LocalTrainingConfig(optimizer="adamw", lr=1e-2, steps=steps, batch_size=8, drift_correction=strength)
    ins = TrainInstructions(round=1, base_version=0, model_digest="d", seed=3, local=local)
    return model, FlatLayout.of(model).flatten(model), ds, ins


def test_a_car_whose_c_i_equals_c_trains_exactly_as_without_correction():
    model, g, ds, ins = local_setup(1.0)
    plain = train_locally(model, g, ds, ins, client_id="c")
    zero = train_locally(model, g, ds, ins, client_id="c", correction=torch.zeros_like(g))
    assert zero.update.payload == plain.update.payload and torch.equal(zero.control, plain.control)
    # c_i, the mean clipped gradient, goes up with the delta, in the uplink's codec, and its bytes are counted
    assert zero.update.control is not None and zero.bytes_up == len(zero.update.payload) + len(zero.update.control)
    np.testing.assert_allclose(decode(zero.update.control), zero.control.numpy(), rtol=1e-6)
    assert 0 < zero.control.norm() <= 1.0 + 1e-6  # grad_clip 1.0 bounds every step's gradient, so their mean


def test_the_correction_steers_the_car_toward_the_fleet_gradient():
    model, g, ds, ins = local_setup(1.0, steps=20)
    plain = train_locally(model, g, ds, ins, client_id="c")
    # a fleet whose mean gradient is +1 on every weight: the corrected car descends it, so ends lower
    push = torch.ones_like(g)
    pushed = train_locally(model, g, ds, ins, client_id="c", correction=push)
    # delta = global - local, so this is local_pushed - local_plain
    moved = torch.from_numpy(decode(plain.update.payload) - decode(pushed.update.payload))
    assert (moved < 0).float().mean() > 0.9
    assert (pushed.control - plain.control).abs().max() < 0.5  # c_i is the car's own gradient, without the push
    with pytest.raises(InvalidInput, match="correction must be flat"):
        train_locally(model, g, ds, ins, client_id="c", correction=torch.zeros(3))


def test_no_control_is_kept_or_sent_when_the_correction_is_off():
    model, g, ds, ins = local_setup(0.0)
    r = train_locally(model, g, ds, ins, client_id="c")
    assert r.control is None and r.update.control is None and r.bytes_up == len(r.update.payload)


def test_a_simulated_fleet_carries_c_down_and_keeps_c_i_on_each_car():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    x = torch.randn(96, 4)
    y = (x[:, 0] > 0).long()
    datasets = [ArrayDataset(x[i::3], y[i::3]) for i in range(3)]
    init = FlatLayout.of(model).flatten(model)
    base = dict(local=dataclasses.replace(DiLoCoConfig().local, steps=4, batch_size=8),
                rounds=DiLoCoConfig().rounds.__class__(clients_per_round=2, over_selection=1.5),
                downlink=CompressionConfig(bits=4))
    bytes_down, bytes_up = {}, {}
    for strength in (0.0, 1.0):
        fleet = SimulatedFleet(model, datasets, SimulationConfig(seed=1), initial_params=init)
        s = DiLoCo(init, DiLoCoConfig(drift_correction=strength, **base))
        s.run(fleet, 3)
        bytes_down[strength], bytes_up[strength] = fleet.stats()["bytes_down"], fleet.stats()["bytes_up"]
        cars = fleet.cars.values()
        if strength:
            assert all(c.own_control is not None for c in cars if c.bytes_up)
            assert any(c.fleet_control is not None for c in cars)
            assert "control" in s.server_state
        else:
            assert all(c.own_control is None and c.fleet_control is None for c in cars)
    assert bytes_down[1.0] > bytes_down[0.0] and bytes_up[1.0] > bytes_up[0.0]
