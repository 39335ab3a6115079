"""The compact snapshot on the downlink (``StrategyConfig.snapshot_bits``): which download a car gets, what it
ends up holding, and that the option off is the old behaviour."""

import dataclasses

import numpy as np
import pytest
import torch

from fleetgrid.errors import HashMismatch, InvalidInput
from fleetgrid.workloads.training.compression import CompressionConfig, decode, encode
from fleetgrid.workloads.training.config import FedAvgConfig, FedBuffConfig, config_from_dict
from fleetgrid.workloads.training.messages import ClientUpdate, apply_download, params_digest
from fleetgrid.workloads.training.strategies import FedAvg, FedBuff

N = 4000


def strategy(bits: int | None = 8) -> FedAvg:
    config = FedAvgConfig(downlink=CompressionConfig(bits=4), snapshot_bits=bits)
    return FedAvg(torch.linspace(-1, 1, N), config)


def step(s: FedAvg, k: int) -> None:
    rng = np.random.default_rng(k)
    delta = rng.standard_normal(N).astype(np.float32) * 0.01
    u = ClientUpdate(client_id="c", round=s.round, base_version=s.version, num_examples=1, steps_done=1,
                     steps_planned=1, examples_seen=1, payload=encode(delta, CompressionConfig()))
    s.aggregate([s.accept(u)])


def test_a_far_behind_car_gets_the_compact_snapshot_a_near_one_the_deltas():
    s = strategy()
    for k in range(6):
        step(s, k)
    compact, compact_digest = s.compact_snapshot()
    delta_bytes = len(s.downlink_delta(s.version))
    assert delta_bytes < len(compact) < 2 * delta_bytes + 100  # int4 deltas, an int8 snapshot: ~2 deltas' worth
    near = s.download(s.version - 1)
    assert near.deltas and near.full is None and near.exact
    far = s.download(0)
    assert far.full == compact and not far.exact and far.digest == compact_digest
    assert far.nbytes < sum(len(s.downlink_delta(v)) for v in range(1, s.version + 1))
    fresh = s.download(None)
    assert fresh.full == compact and not fresh.exact
    held = apply_download(None, fresh)  # checked against the decoded params' digest
    assert params_digest(held) == compact_digest and not torch.equal(held, s.params)
    assert (held - s.params).abs().max() < 1.5 / 127  # int8 rounding of values in about [-1, 1]
    with pytest.raises(HashMismatch):
        apply_download(None, dataclasses.replace(fresh, digest=s.digest))


def test_an_approximate_copy_plus_the_chain_is_the_compact_copy_plus_the_deltas():
    s = strategy()
    for k in range(3):
        step(s, k)
    held = apply_download(None, s.download(None))
    held_version = s.version
    for k in range(3, 5):
        step(s, k)
    d = s.download(held_version, held_exact=False)
    assert len(d.deltas) == 2 and not d.exact
    expected = held + torch.from_numpy(decode(d.deltas[0]).reshape(-1)) + torch.from_numpy(decode(d.deltas[1]))
    got = apply_download(held, d)  # no digest to match: not refused
    assert torch.equal(got, expected)
    # the error is the compact one of the older version, not grown by the deltas (they are exact)
    old_error = held - (s.params - sum(torch.from_numpy(decode(b)) for b in d.deltas))
    assert torch.allclose(got - s.params, old_error, atol=1e-6)
    # an exact copy with the same chain is still checked bit for bit
    with pytest.raises(HashMismatch):
        apply_download(held, dataclasses.replace(d, exact=True))


def test_a_current_car_downloads_nothing_exact_or_not():
    s = strategy()
    step(s, 0)
    for exact in (True, False):
        d = s.download(s.version, held_exact=exact)
        assert d.nbytes == 0 and d.exact is exact


def test_option_off_is_the_old_float32_snapshot():
    on, off = strategy(8), strategy(None)
    for k in range(5):
        step(on, k)
        step(off, k)
    assert off.compact_snapshot() is None
    d = off.download(None)
    assert d.exact and d.full == encode(off.params, CompressionConfig())
    assert torch.equal(apply_download(None, d), off.params)
    chain = off.download(0)  # 5 int4 deltas weigh less than float32: the old rule
    assert chain.full is None and len(chain.deltas) == 5 and chain.exact
    assert on.download(0).full is not None  # the compact snapshot beats the same chain
    assert torch.equal(on.params, off.params)  # the option changes what is sent, never the global


@pytest.mark.parametrize("bad", [4, 16, 0, True, "8"])
def test_bad_snapshot_bits_are_refused_naming_what_is_accepted(bad):
    with pytest.raises(InvalidInput, match=r"snapshot_bits must be one of \(8, None\)"):
        FedAvgConfig(snapshot_bits=bad)
    with pytest.raises(InvalidInput, match="snapshot_bits"):
        config_from_dict(FedAvgConfig, {"snapshot_bits": bad})


def test_an_older_version_an_asynchronous_strategy_still_serves_goes_whole_in_float32():
    s = FedBuff(torch.linspace(-1, 1, N), FedBuffConfig(downlink=CompressionConfig(bits=4), snapshot_bits=8,
                                                         buffer_size=1, max_staleness=4))
    for k in range(3):
        step(s, k)
    old = s.download(None, version=1)  # only the current version has a compact snapshot
    assert old.exact and old.version == 1 and torch.equal(apply_download(None, old), s._snapshots[1][0])
    assert not s.download(None).exact
