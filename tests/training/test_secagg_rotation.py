"""The random Hadamard rotation a secure round's updates are quantized in: orthogonal, replayable from its seed,
and spreading a spiky vector over every coordinate; with it, an 8-bit grid holds a clipped update."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.secagg import Quantization, decode_sum, quantize, rotate, unrotate
from fleetgrid.workloads.training.secagg.rotation import block_length, fwht

SEED = bytes(range(32))
LENGTHS = [1, 2, 3, 7, 8, 1000, 8010, 8192]


def sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / math.sqrt(n)


def test_fwht_is_the_normalized_hadamard_matrix():
    x = np.random.default_rng(0).normal(size=16)
    assert np.allclose(fwht(x), sylvester(16) @ x)
    assert np.allclose(fwht(fwht(x)), x)
    with pytest.raises(InvalidInput, match="power-of-two length"):
        fwht(np.ones(6))


@pytest.mark.parametrize("d", LENGTHS)
def test_unrotate_inverts_rotate_and_norms_are_kept(d):
    x = np.random.default_rng(d).normal(size=d)
    y = rotate(x, SEED)
    assert y.shape == (d,) and y.dtype == np.float64
    assert np.allclose(unrotate(y, SEED), x, rtol=0, atol=1e-12)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-12)
    assert np.allclose(rotate(unrotate(x, SEED), SEED), x, rtol=0, atol=1e-12)


def test_the_rotation_is_linear_so_a_sum_of_rotated_updates_is_the_rotated_sum():
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(5, 1000))
    assert np.allclose(sum(rotate(x, SEED) for x in xs), rotate(xs.sum(axis=0), SEED))


def test_the_same_seed_gives_the_same_rotation_and_another_seed_another():
    x = np.random.default_rng(2).normal(size=1000)
    assert np.array_equal(rotate(x, SEED), rotate(x.copy(), bytes(SEED)))
    assert not np.allclose(rotate(x, SEED), rotate(x, bytes(32)))
    assert np.array_equal(x, np.random.default_rng(2).normal(size=1000))  # the input is left alone


@pytest.mark.parametrize("where", [0, 3000, 4095, 5000, 8009])
def test_a_spike_is_spread_over_every_coordinate(where):
    x = np.zeros(8010)
    x[where] = 1.0
    y = rotate(x, SEED)
    assert np.abs(y).max() <= 1 / math.sqrt(block_length(8010)) + 1e-12  # from 1.0 to 1/64
    assert (np.abs(y) > 0).mean() > 0.5


def test_a_bad_seed_or_shape_is_refused():
    with pytest.raises(InvalidInput, match="32 bytes"):
        rotate(np.ones(4), b"short")
    with pytest.raises(InvalidInput, match="flat"):
        rotate(np.ones((2, 2)), SEED)
    with pytest.raises(InvalidInput, match="32 bytes or None"):
        Quantization(clip=1.0, bound=1.0, rotation=b"short")


def updates(kind: str, d: int, rng: np.random.Generator) -> np.ndarray:
    """A clipped update (norm 1) of some shape: Gaussian, heavy-tailed, a few large coordinates, or one layer's."""
    if kind == "gaussian":
        x = rng.normal(size=d)
    elif kind == "heavy":
        x = rng.standard_t(2, size=d)
    elif kind == "sparse":
        x = np.zeros(d)
        x[rng.choice(d, 10, replace=False)] = rng.normal(size=10)
    else:  # most of the energy in one contiguous block, as in a model's last layer
        x = rng.normal(size=d) * 0.01
        x[-100:] += rng.normal(size=100)
    return x / np.linalg.norm(x)


@pytest.mark.parametrize("kind", ["gaussian", "heavy", "sparse", "layer"])
def test_on_the_rotated_8_bit_grid_few_coordinates_are_clamped_and_the_sum_is_close(kind):
    """The secure round's grid for a model of 8010 parameters clipped to 1: 4 spreads of 1/64 either side. Counts
    the coordinates clamped, and checks the decoded sum of 8 cars against their float sum."""
    d, cars, rng = 8010, 8, np.random.default_rng(3)
    q = Quantization(clip=1.0, bound=4.0 / math.sqrt(block_length(d)), bits=8, rotation=SEED)
    xs = [updates(kind, d, rng) for _ in range(cars)]
    clamped = sum(int((np.abs(rotate(x, SEED)) > q.bound).sum()) for x in xs) / (cars * d)
    assert clamped < 1e-3, clamped  # Gaussian tails past 4 spreads of 1/64 (the true spread is 1/sqrt(8010))
    total = decode_sum(sum(quantize(x, q, rng).astype(np.uint64) for x in xs), cars, q)
    exact = np.sum(xs, axis=0)
    assert np.linalg.norm(total - exact) < 0.02 * cars  # rounding: under 2% of each car's norm
    unrotated = Quantization(clip=1.0, bound=1.0, bits=8)  # the same 8 bits with the old grid: far coarser
    plain = decode_sum(sum(quantize(x, unrotated, rng).astype(np.uint64) for x in xs), cars, unrotated)
    assert np.linalg.norm(plain - exact) > 5 * np.linalg.norm(total - exact)


def test_where_the_grid_is_exactly_4_spreads_wide_the_gaussian_tail_is_what_is_clamped():
    """d = 8192, a power of two: the grid's spread 1/sqrt(d) is the rotated coordinates' own, so the clamped share
    is the Gaussian's beyond 4 sigma (6.3e-5), and clamping costs next to nothing of the norm."""
    d, rng = 8192, np.random.default_rng(4)
    q = Quantization(clip=1.0, bound=4.0 / math.sqrt(d), bits=8, rotation=SEED)
    xs = [updates("heavy", d, rng) for _ in range(16)]
    rotated = np.stack([rotate(x, SEED) for x in xs])
    clamped = float((np.abs(rotated) > q.bound).mean())
    assert 0 < clamped < 3e-4, clamped
    lost = np.linalg.norm(rotated - np.clip(rotated, -q.bound, q.bound), axis=1)
    assert lost.max() < 0.01  # of a norm of 1


def test_the_rotation_seed_travels_in_the_plan_and_binds_its_keys():
    from fleetgrid.secagg_wire import plan_from_wire, plan_to_wire
    from fleetgrid.workloads.training.secagg import RoundPlan

    def plan(rotation):
        q = Quantization(clip=1.0, bound=0.1, bits=8, rotation=rotation)
        return RoundPlan(round_id="r1", cohort=("a", "b", "c"), vector_length=10, quantization=q, seed=bytes(32))

    rotated = plan(SEED)
    assert plan_from_wire(plan_to_wire(rotated, "a")) == rotated
    assert plan_from_wire(plan_to_wire(plan(None), "a")).quantization.rotation is None
    assert rotated.context != plan(bytes(32)).context != plan(None).context  # every car must rotate alike
