"""The pure parts of secure aggregation: Shamir sharing, the neighbour graph and its degree, the integer domain."""

import itertools
import math
import random

import numpy as np
import pytest

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.secagg.encoding import (
    Quantization,
    decode_sum,
    modulus_bits,
    pack,
    packed_nbytes,
    prg_mask,
    quantize,
    sum_norm_bound,
    unpack,
)
from fleetgrid.workloads.training.secagg.graph import choose_degree, dropout_failure_probability, neighbour_graph
from fleetgrid.workloads.training.secagg.shamir import PRIME, Share, reconstruct, split


def _probably_prime(n: int) -> bool:
    """Miller-Rabin with 40 fixed bases: a composite passes with probability < 4^-40."""
    if n % 2 == 0:
        return n == 2
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in range(2, 42):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def test_the_field_is_the_smallest_prime_above_2_256():
    assert _probably_prime(PRIME)
    assert not any(_probably_prime(c) for c in range(2**256 + 1, PRIME, 2))


def test_any_threshold_of_shares_rebuilds_the_secret_and_fewer_do_not():
    rng = random.Random(1)
    secret = bytes(rng.randrange(256) for _ in range(32))
    shares = split(secret, list(range(1, 8)), 4)
    for subset in itertools.combinations(shares, 4):
        assert reconstruct(list(subset), 4) == secret
    with pytest.raises(InvalidInput, match="cannot rebuild"):
        reconstruct(shares[:3], 4)


def test_a_wrong_share_rebuilds_a_different_secret():
    secret = bytes(range(32))
    shares = split(secret, [1, 2, 3, 4, 5], 3)
    bad = [Share(x=shares[0].x, y=(shares[0].y + 1) % PRIME), *shares[1:3]]
    try:
        assert reconstruct(bad, 3) != secret
    except InvalidInput as exc:  # or no 32-byte secret at all
        assert "wrong" in str(exc)


def test_shares_of_the_same_secret_differ_between_sharings():
    secret = bytes(32)
    assert split(secret, [1, 2, 3], 2)[0].y != split(secret, [1, 2, 3], 2)[0].y


@pytest.mark.parametrize("bad", [
    dict(secret=b"short", xs=[1, 2], threshold=2),
    dict(secret=bytes(32), xs=[1, 1], threshold=2),
    dict(secret=bytes(32), xs=[0, 1], threshold=2),
    dict(secret=bytes(32), xs=[1, 2], threshold=3),
])
def test_split_refuses_bad_arguments(bad):
    with pytest.raises(InvalidInput):
        split(**bad)


def test_degree_and_threshold_for_the_benchmarked_cohorts():
    assert choose_degree(8, 0.3) == (7, 4)  # full graph
    assert choose_degree(32, 0.3) == (19, 10)
    for n in (3, 5, 8, 16, 32, 64, 100):
        for delta in (0.0, 0.1, 0.3, 0.45):
            full_t = (n - 1) // 2 + 1
            if math.floor(delta * n) > n - 1 - full_t:  # even the full graph cannot survive it
                with pytest.raises(InvalidInput, match="cannot survive"):
                    choose_degree(n, delta)
                continue
            k, t = choose_degree(n, delta)
            assert 2 * t > k  # a strict majority: no two disjoint sets of holders reach t
            assert k <= n - 1
            lost = math.floor(delta * n)
            assert k - t >= lost or dropout_failure_probability(n, k, t, lost) <= 2**-40


def test_degree_refuses_what_cannot_be_recovered():
    with pytest.raises(InvalidInput, match=r"\[0, 0.5\)"):
        choose_degree(32, 0.5)
    with pytest.raises(InvalidInput, match="at least 3"):
        choose_degree(2, 0.1)


def test_failure_probability_matches_enumeration():
    n, k, t, lost = 9, 4, 3, 3
    order = list(range(1, n))  # car 0's neighbours are cars 1..4
    bad = sum(1 for dropped in itertools.combinations(order, lost) if sum(1 for c in dropped if c <= k) > k - t)
    single = bad / math.comb(n - 1, lost)
    assert dropout_failure_probability(n, k, t, lost) == pytest.approx(min(1.0, n * single))


def _connected(graph, removed):
    nodes = [c for c in graph if c not in removed]
    seen, todo = {nodes[0]}, [nodes[0]]
    while todo:
        for nb in graph[todo.pop()]:
            if nb not in removed and nb not in seen:
                seen.add(nb)
                todo.append(nb)
    return len(seen) == len(nodes)


@pytest.mark.parametrize("n,k", [(8, 7), (32, 19), (33, 11), (32, 11), (100, 15)])
def test_the_graph_is_symmetric_regular_and_stays_connected(n, k):
    cohort = [f"car{i}" for i in range(n)]
    graph = neighbour_graph(cohort, k, b"s" * 32)
    want = k + (k % 2 if n % 2 else 0)
    for car, nbs in graph.items():
        assert car not in nbs and len(nbs) == want
        assert all(car in graph[nb] for nb in nbs)
    rng = random.Random(0)
    for _ in range(50):
        assert _connected(graph, set(rng.sample(cohort, k - 1)))
    assert graph == neighbour_graph(list(reversed(cohort)), k, b"s" * 32)  # the order the cohort is listed in
    if k < n - 1:  # the full graph is the same whatever the seed
        assert graph != neighbour_graph(cohort, k, b"t" * 32)


def test_modulus_holds_the_largest_sum():
    for bits, n in [(8, 8), (8, 32), (4, 33), (1, 2)]:
        m = modulus_bits(bits, n)
        assert n * ((1 << bits) - 1) < 1 << m
    with pytest.raises(InvalidInput, match="at most 32"):
        modulus_bits(24, 1 << 10)


@pytest.mark.parametrize("bits", [1, 3, 8, 11, 13, 24, 32])
def test_pack_round_trips_tightly(bits):
    rng = np.random.default_rng(bits)
    v = rng.integers(0, 1 << bits, size=1001, dtype=np.uint64)
    blob = pack(v, bits)
    assert len(blob) == packed_nbytes(1001, bits) == math.ceil(1001 * bits / 8)
    np.testing.assert_array_equal(unpack(blob, 1001, bits), v)


def test_pack_refuses_values_out_of_range_and_unpack_wrong_lengths():
    with pytest.raises(InvalidInput, match=r"\[0, 2\^4\)"):
        pack(np.array([3, 16]), 4)
    with pytest.raises(InvalidInput, match="bytes"):
        unpack(b"\x00" * 3, 10, 4)


def test_quantization_is_unbiased_bounded_and_decodes():
    q = Quantization(clip=10.0, bound=1.0, bits=4)
    x = np.linspace(-0.9, 0.9, 50)
    rng = np.random.default_rng(0)
    draws = np.stack([quantize(x, q, rng) for _ in range(4000)]).astype(np.int64)
    assert draws.min() >= 0 and draws.max() <= q.levels
    mean = decode_sum(draws.sum(0), 4000, q) / 4000
    np.testing.assert_allclose(mean, x, atol=4 * q.step / math.sqrt(4000))
    assert np.abs(decode_sum(draws[0], 1, q) - x).max() <= q.step


def test_quantization_clips_the_norm_and_clamps_coordinates():
    q = Quantization(clip=1.0, bound=0.2, bits=8)
    big = np.full(100, 5.0)  # norm 50: scaled to norm 1, i.e. 0.1 each
    out = decode_sum(quantize(big, q, np.random.default_rng(0)), 1, q)
    assert np.abs(out - 0.1).max() <= q.step
    spike = np.zeros(100)
    spike[0] = 0.9  # norm < clip, but above the coordinate bound
    assert decode_sum(quantize(spike, q, np.random.default_rng(0)), 1, q)[0] == pytest.approx(0.2)
    assert np.linalg.norm(out) <= sum_norm_bound(1, q, 100)


@pytest.mark.parametrize("bad", [np.array([0.1, np.nan]), np.zeros((2, 2)), np.arange(3)])
def test_quantize_refuses_non_finite_or_non_flat_or_integer_input(bad):
    with pytest.raises(InvalidInput):
        quantize(bad, Quantization(clip=1.0, bound=1.0), np.random.default_rng(0))


@pytest.mark.parametrize("field,value", [("clip", 0.0), ("bound", float("inf")), ("bits", 0), ("bits", 25)])
def test_quantization_refuses_bad_settings(field, value):
    kwargs = dict(clip=1.0, bound=1.0, bits=8) | {field: value}
    with pytest.raises(InvalidInput, match=field):
        Quantization(**kwargs)


def test_masks_are_deterministic_per_seed_and_in_range():
    a = prg_mask(b"k" * 32, 5000, 13)
    np.testing.assert_array_equal(a, prg_mask(b"k" * 32, 5000, 13))
    assert a.max() < 1 << 13 and a.max() > (1 << 13) - 64
    assert (a != prg_mask(b"j" * 32, 5000, 13)).mean() > 0.99
    with pytest.raises(InvalidInput, match="32"):
        prg_mask(b"short", 10, 8)
