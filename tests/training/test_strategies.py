import dataclasses

import numpy as np
import pytest
import torch

from fleetgrid.errors import Conflict, HashMismatch, InvalidInput
from fleetgrid.workloads.training.compression import CompressionConfig, encode
from fleetgrid.workloads.training.config import (
    DiLoCoConfig,
    FedAvgConfig,
    FedBuffConfig,
    LocalTrainingConfig,
    RobustConfig,
    RoundConfig,
)
from fleetgrid.workloads.training.messages import ClientUpdate, apply_download
from fleetgrid.workloads.training.strategies import (
    DiLoCo,
    FedAvg,
    FedBuff,
    make_strategy,
    strategy_from_state_bytes,
)

t = lambda *v: torch.tensor(v, dtype=torch.float32)


def update(strategy, delta, *, examples=1, steps=10, planned=10, base=None, round_=None, client="c", payload=None):
    return ClientUpdate(
        client_id=client,
        round=strategy.round if round_ is None else round_,
        base_version=strategy.version if base is None else base,
        payload=payload if payload is not None else encode(np.asarray(delta, dtype=np.float32), CompressionConfig()),
        num_examples=examples,
        steps_done=steps,
        steps_planned=planned,
        examples_seen=steps * 4,
    )


def fold(strategy, *updates):
    return strategy.aggregate([strategy.accept(u) for u in updates])


def test_fedavg_weighted_by_examples():
    s = FedAvg(t(10, 10, 10, 10), FedAvgConfig())
    fold(s, update(s, [1, 2, 3, 4], examples=1), update(s, [3, 2, 1, 0], examples=3))
    # mean delta = (1*[1,2,3,4] + 3*[3,2,1,0]) / 4 = [2.5, 2, 1.5, 1]; new = old - mean
    assert torch.equal(s.params, t(7.5, 8, 8.5, 9)) and s.version == 1


def test_partial_work_weighted_by_steps_or_dropped():
    s = FedAvg(t(0, 0), FedAvgConfig(rounds=RoundConfig(partial_work="weighted")))
    fold(s, update(s, [4, 0], examples=10), update(s, [0, 4], examples=10, steps=5))
    assert torch.allclose(s.params, -t(4 * 10 / 15, 4 * 5 / 15))  # weights 10 and 10 * 5/10
    d = FedAvg(t(0, 0), FedAvgConfig(rounds=RoundConfig(partial_work="drop")))
    fold(d, update(d, [4, 0], examples=10), update(d, [0, 4], examples=10, steps=5))
    assert torch.equal(d.params, t(-4, 0))
    before = d.state_bytes()
    with pytest.raises(InvalidInput, match="no usable update"):
        fold(d, update(d, [0, 4], steps=5))
    assert d.state_bytes() == before


def test_a_version_summary_counts_partial_reports_and_the_cars_used():
    s = FedAvg(t(0, 0), FedAvgConfig(rounds=RoundConfig(partial_work="weighted")))
    summary = fold(s, update(s, [1, 0], client="car-a"), update(s, [0, 1], client="car-a", steps=3),
                   update(s, [1, 1], client="car-b", steps=9))
    assert (summary["reports"], summary["used"], summary["partial"], summary["cars"]) == (3, 3, 2, 2)
    d = FedAvg(t(0, 0), FedAvgConfig(rounds=RoundConfig(partial_work="drop")))
    summary = fold(d, update(d, [1, 0], client="car-a"), update(d, [0, 1], client="car-b", steps=3))
    # A dropped partial report was still received (counted as partial) but its car contributed nothing.
    assert (summary["reports"], summary["used"], summary["partial"], summary["cars"]) == (2, 1, 1, 1)


def test_diloco_outer_nesterov_two_rounds():
    s = DiLoCo(t(1, 1), DiLoCoConfig(outer_lr=0.5, outer_momentum=0.9))
    fold(s, update(s, [1, 0]))
    # buf = [1, 0]; p = [1, 1] - 0.5 * ([1, 0] + 0.9 * [1, 0]) = [0.05, 1]
    assert torch.allclose(s.params, t(0.05, 1))
    fold(s, update(s, [0, 2]))
    # buf = 0.9 * [1, 0] + [0, 2] = [0.9, 2]; p = [0.05, 1] - 0.5 * ([0, 2] + 0.9 * [0.9, 2]) = [-0.355, -0.9]
    assert torch.allclose(s.server_state["momentum"], t(0.9, 2))
    assert torch.allclose(s.params, t(-0.355, -0.9))


def test_fedadam_server_step_two_rounds():
    s = make_strategy("fedadam", t(1, 1), {"server_lr": 0.1, "beta1": 0.5, "beta2": 0.5, "tau": 1.0})
    fold(s, update(s, [2, 0]))
    # m = [1, 0]; v = [2, 0]; p = [1, 1] - 0.1 * m / (sqrt(v) + 1)
    assert torch.allclose(s.params, t(1 - 0.1 / (2**0.5 + 1), 1))
    fold(s, update(s, [2, 0]))
    # m = 0.5 + 1 = 1.5; v = 1 + 2 = 3: a repeated direction steps further than the first time
    assert torch.allclose(s.server_state["first"], t(1.5, 0)) and torch.allclose(s.server_state["second"], t(3, 0))
    assert s.name == "fedadam" and strategy_from_state_bytes(s.state_bytes()).server_state.keys() == {"first", "second"}
    with pytest.raises(InvalidInput, match="server_optimizer"):
        make_strategy("fedadam", t(0.0), {"server_optimizer": "sgd"})


def test_outer_lr_warms_up_and_decays_over_the_run():
    config = DiLoCoConfig(outer_lr=1.0, outer_momentum=0.0, server_warmup_versions=1, server_lr_floor=0.0,
                          robust=RobustConfig(norm_bound="off"))
    s = DiLoCo(t(0.0), config)
    s.planned_versions = 3
    steps = []
    for _ in range(3):
        before = float(s.params)
        fold(s, update(s, [1.0]))
        steps.append(before - float(s.params))
    # warm-up 1/2, then cosine from version 1 to 3: 1 at version 1, 0.5 at version 2
    assert steps == pytest.approx([0.5, 1.0, 0.5])
    with pytest.raises(InvalidInput, match="server_lr_floor"):
        DiLoCoConfig(server_lr_floor=2.0)
    with pytest.raises(InvalidInput, match="server_warmup_versions"):
        FedAvgConfig(server_warmup_versions=-1)


def test_fedbuff_down_weights_stale_updates():
    # Norm bounding off: the lower median of norms 4 and 0 would clip both deltas to 0 (see test_robust.py).
    s = FedBuff(t(0.0), FedBuffConfig(buffer_size=2, concurrency=4, staleness_exponent=0.5, server_lr=1.0,
                                      robust=RobustConfig(norm_bound="off")))
    for _ in range(3):
        fold(s, update(s, [0.0]))
    assert s.version == 3
    fold(s, update(s, [4.0]), update(s, [0.0], base=0))  # weights 1 and 1/sqrt(1 + 3) = 0.5
    assert torch.allclose(s.params, t(-4 / 1.5))
    half = FedBuff(t(0.0), FedBuffConfig(buffer_size=2, concurrency=4, robust=RobustConfig(norm_bound="off")))
    fold(half, update(half, [4.0]), update(half, [0.0]))
    assert FedBuffConfig().server_lr == 0.5 and torch.allclose(half.params, t(-0.5 * 4 / 2))  # half a step by default
    with pytest.raises(Conflict, match="at most 8"):
        s.accept(update(s, [0.0], base=-6))  # 10 versions behind


def test_invalid_updates_are_rejected_and_global_untouched():
    s = DiLoCo(t(1, 2, 3), DiLoCoConfig())
    fold(s, update(s, [0.1, 0.1, 0.1]))
    before = s.state_bytes()
    good = encode(np.zeros(3, dtype=np.float32), CompressionConfig())
    nan_payload = good[:-4] + np.float32(np.nan).tobytes()
    wrong_dtype = good[:5] + bytes([3]) + good[6:]
    bad = [
        (InvalidInput, update(s, [1, 2])),  # wrong shape
        (InvalidInput, update(s, None, payload=encode(np.ones((3, 1), np.float32), CompressionConfig()))),
        (InvalidInput, update(s, None, payload=nan_payload)),
        (InvalidInput, update(s, None, payload=wrong_dtype)),
        (InvalidInput, update(s, None, payload=b"garbage")),
        (InvalidInput, update(s, [1, 2, 3], examples=0)),
        (InvalidInput, update(s, [1, 2, 3], steps=11)),
        (Conflict, update(s, [1, 2, 3], round_=s.round - 1)),  # a closed round
        (Conflict, update(s, [1, 2, 3], base=s.version - 1)),
    ]
    for exc, u in bad:
        with pytest.raises(exc):
            s.accept(u)
    assert s.state_bytes() == before


def test_checkpoint_round_trip_resumes_identically():
    cfg = DiLoCoConfig(
        local=LocalTrainingConfig(optimizer="adamw", lr=1e-3, steps=7), downlink=CompressionConfig(bits=8)
    )
    s = DiLoCo(t(1, 2, 3, 4), cfg)
    fold(s, update(s, [0.1, -0.2, 0.3, 0.0]))
    fold(s, update(s, [0.2, 0.2, -0.1, 0.5]))
    r = strategy_from_state_bytes(s.state_bytes())
    assert isinstance(r, DiLoCo) and r.config == cfg and (r.version, r.round) == (s.version, s.round)
    assert torch.equal(r.params, s.params) and torch.equal(r.server_state["momentum"], s.server_state["momentum"])
    assert r.digest == s.digest
    fold(s, update(s, [1, 1, 1, 1]))
    fold(r, update(r, [1, 1, 1, 1]))
    assert torch.equal(r.params, s.params)
    with pytest.raises(InvalidInput, match="checkpoint"):
        strategy_from_state_bytes(b"not a checkpoint")


def test_downloads_full_delta_and_dedup():
    s = FedAvg(torch.linspace(-1, 1, 500), FedAvgConfig(downlink=CompressionConfig(bits=8, chunk_size=64),
                                                        snapshot_bits=None))  # exact snapshots only
    held = apply_download(None, s.download(None))
    v0 = held.clone()
    assert torch.equal(held, s.params)
    for k in range(3):
        fold(s, update(s, np.full(500, 0.01 * (k + 1), dtype=np.float32)))
    d = s.download(0)
    assert d.full is None and len(d.deltas) == 3 and d.nbytes < 4 * 500
    assert torch.equal(apply_download(v0, d), s.params)  # bitwise: the car ends exactly on the global
    assert s.download(s.version).nbytes == 0  # already current: nothing moves
    with pytest.raises(HashMismatch):
        apply_download(v0 + 1, d)


def test_make_strategy_by_name_and_settings_validation():
    s = make_strategy("diloco", t(0, 0), {"outer_lr": 0.5, "local": {"steps": 3, "optimizer": "adamw", "lr": 1e-3}})
    assert isinstance(s, DiLoCo) and s.config.local.steps == 3
    # A partial nested setting keeps the rest of the strategy's own default, not the nested class's.
    partial = make_strategy("diloco", t(0, 0), {"local": {"steps": 7, "compression": {"bits": 4}}}).config.local
    assert partial == dataclasses.replace(DiLoCoConfig().local, steps=7, compression=CompressionConfig(bits=4))
    assert make_strategy("fedavg", t(0, 0), {"local": {"steps": 7}}).config.local.momentum == FedAvgConfig().local.momentum
    for name, settings, match in [
        ("fedprox", None, "unknown strategy"),
        ("diloco", {"local": {"steps": 0}}, "H"),
        ("diloco", {"outer_lr": 0}, "outer_lr"),
        ("fedavg", {"local": {"compression": {"bits": 3}}}, "bits"),
        ("fedavg", {"local": {"lr": -1}}, "lr"),
        ("fedavg", {"rounds": {"min_reports": 20, "clients_per_round": 10}}, "min_reports"),
        ("fedbuff", {"buffer_size": 4, "concurrency": 2}, "concurrency"),
        ("fedavg", {"warp": 9}, "unknown"),
    ]:
        with pytest.raises(InvalidInput, match=match):
            make_strategy(name, t(0, 0), settings)
    with pytest.raises(InvalidInput):
        FedAvg(t(0, float("nan")), FedAvgConfig())


def test_inner_lr_cosine_schedule_reaches_the_cars():
    s = DiLoCo(t(0.0), DiLoCoConfig(local=LocalTrainingConfig(optimizer="adamw", lr=1e-2), lr_decay_versions=4))
    assert s.instructions("car-0").local.lr == pytest.approx(1e-2)
    for _ in range(2):
        fold(s, update(s, [0.0]))
    assert s.instructions("car-0").local.lr == pytest.approx(1e-2 * 0.55)  # halfway: 0.1 + 0.9 * 0.5
    for _ in range(4):
        fold(s, update(s, [0.0]))
    assert s.instructions("car-0").local.lr == pytest.approx(1e-3)  # floor: a tenth, after the decay
    with pytest.raises(InvalidInput, match="lr_decay_versions"):
        DiLoCoConfig(lr_decay_versions=0)


class ScriptedFleet:
    """A live fleet (it has ``poll_s``) of one car that reports at once: it records every share offered."""

    poll_s = 0.01

    def __init__(self):
        self.offers, self.reports = [], []

    def now(self):
        return 0.0

    def idle_clients(self):
        return ["car-a"]

    def busy_count(self):
        return 0

    def dispatch(self, assignments, strategy):
        for car, ins in assignments.items():
            self.offers.append(ins.round)
            self.reports.append(update(strategy, [1, 1], client=car, round_=ins.round, base=ins.base_version))

    def next_update(self, deadline):
        return self.reports.pop(0) if self.reports else None

    def cancel_outstanding(self):
        self.reports.clear()

    def max_examples(self, client_id):
        return None


def test_a_round_offers_no_share_once_it_has_its_reports():
    # Two reports wanted, a cohort of three: the one car is topped up after its first report, not after its second.
    s = FedAvg(t(0, 0), FedAvgConfig(rounds=RoundConfig(clients_per_round=2, over_selection=1.5)))
    fleet = ScriptedFleet()
    s.run(fleet, 2)
    assert fleet.offers == [1, 1, 2, 2] and s.version == 2


def test_the_server_lr_decays_over_the_versions_run_was_asked_for():
    # One report per version, delta [1, 1]; the cosine runs from 1 at version 0 to 0.5 at version 1 of 2.
    config = FedAvgConfig(rounds=RoundConfig(clients_per_round=1, over_selection=1.0), server_lr_floor=0.0,
                          robust=RobustConfig(norm_bound="off"))
    s = FedAvg(t(0, 0), config)
    s.run(ScriptedFleet(), 2)
    assert s.planned_versions == 2 and torch.allclose(s.params, t(-1.5, -1.5))
