import math

import pytest
import torch

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.aggregate import (
    adaptive_norm_bound,
    adaptive_step,
    client_weight,
    clip_to_norm,
    coordinate_median,
    l2_norm,
    nesterov_step,
    schedule_scale,
    sgd_step,
    staleness_weight,
    trimmed_mean,
    weighted_mean,
)

t = lambda *v: torch.tensor(v, dtype=torch.float32)


def test_weighted_mean_hand_computed():
    assert torch.equal(weighted_mean([t(1, 2), t(3, 4)], [1, 3]), t(2.5, 3.5))
    assert torch.equal(weighted_mean([t(1, 2), t(3, 4)], [0, 2]), t(3, 4))


@pytest.mark.parametrize(
    "vectors,weights",
    [([], []), ([t(1.0)], [0]), ([t(1.0)], [-1]), ([t(1.0)], [float("nan")]), ([t(1.0), t(1, 2)], [1, 1])],
)
def test_weighted_mean_rejects(vectors, weights):
    with pytest.raises(InvalidInput):
        weighted_mean(vectors, weights)


def test_staleness_weight():
    assert staleness_weight(0) == 1.0
    assert staleness_weight(3) == 0.5  # 1 / sqrt(1 + 3)
    assert staleness_weight(3, exponent=1.0) == 0.25
    with pytest.raises(InvalidInput):
        staleness_weight(-1)


def test_client_weight_partial_work():
    kw = {"num_examples": 100, "steps_planned": 10}
    assert client_weight(steps_done=10, partial_work="drop", **kw) == 100
    assert client_weight(steps_done=5, partial_work="weighted", **kw) == 50
    assert client_weight(steps_done=5, partial_work="drop", **kw) == 0
    with pytest.raises(InvalidInput):
        client_weight(steps_done=11, partial_work="weighted", **kw)
    with pytest.raises(InvalidInput):
        client_weight(steps_done=5, partial_work="keep", **kw)


def test_sgd_step():
    assert torch.equal(sgd_step(t(1, 1), t(0.5, -1), 2.0), t(0, 3))


def test_nesterov_step_hand_computed():
    p, buf = nesterov_step(t(1.0), t(0.5), t(0.2), lr=0.1, momentum=0.9)
    # buf = 0.9 * 0.2 + 0.5 = 0.68; p = 1 - 0.1 * (0.5 + 0.9 * 0.68) = 0.8888
    assert torch.allclose(buf, t(0.68)) and torch.allclose(p, t(0.8888))


def test_nesterov_step_matches_torch_sgd_nesterov():
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, generator=gen) for _ in range(4)]
    param = torch.nn.Parameter(torch.ones(5))
    opt = torch.optim.SGD([param], lr=0.7, momentum=0.9, nesterov=True)
    p, buf = torch.ones(5), torch.zeros(5)
    for g in grads:
        param.grad = g.clone()
        opt.step()
        p, buf = nesterov_step(p, g, buf, lr=0.7, momentum=0.9)
    assert torch.allclose(p, param.detach(), atol=1e-6)


def test_adaptive_step_adam_and_yogi_hand_computed():
    kw = dict(lr=0.1, beta1=0.5, beta2=0.75, tau=0.5)
    p, m, v = adaptive_step(t(1.0, 1.0), t(2.0, -2.0), t(0.0, 0.0), t(0.0, 8.0), kind="adam", **kw)
    # m = 0.5 * 0 + 0.5 * g = [1, -1]; v = 0.75 * [0, 8] + 0.25 * 4 = [1, 7]; p = 1 - 0.1 * m / (sqrt(v) + 0.5)
    assert torch.allclose(m, t(1, -1)) and torch.allclose(v, t(1, 7))
    assert torch.allclose(p, t(1 - 0.1 / 1.5, 1 + 0.1 / (7**0.5 + 0.5)))
    _, _, v = adaptive_step(t(1.0, 1.0), t(2.0, -2.0), t(0.0, 0.0), t(0.0, 8.0), kind="yogi", **kw)
    # Yogi: v - 0.25 * g^2 * sign(v - g^2) = [0 + 1, 8 - 1]: it grows toward g^2 and shrinks toward it additively
    assert torch.allclose(v, t(1, 7))
    _, _, v = adaptive_step(t(0.0), t(1.0), t(0.0), t(100.0), kind="yogi", **kw)
    assert torch.allclose(v, t(99.75))  # Adam would forget geometrically: 0.75 * 100 + 0.25 = 75.25
    with pytest.raises(InvalidInput, match="server optimizer"):
        adaptive_step(t(0.0), t(1.0), t(0.0), t(0.0), kind="sgd", **kw)


def test_schedule_scale_warms_up_then_cosine_decays_to_the_floor():
    assert [schedule_scale(v, None, warmup=3, floor=0.0) for v in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    # cosine from version 2 (after 2 warm-up versions) to version 6: 1, (1 + cos(pi/4))/2 .. floor at the end
    got = [schedule_scale(v, 6, warmup=2, floor=0.2) for v in range(2, 7)]
    want = [0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    assert got == pytest.approx(want) and got[-1] == pytest.approx(0.2)
    assert schedule_scale(9, 6, warmup=0, floor=0.1) == pytest.approx(0.1)  # a longer run stays at the floor
    with pytest.raises(InvalidInput):
        schedule_scale(0, 6, warmup=0, floor=1.5)


def test_clip_to_norm_scales_longer_vectors_down_keeping_their_direction():
    same, was = clip_to_norm(t(3, 4), 10.0)
    assert not was and torch.equal(same, t(3, 4))
    clipped, was = clip_to_norm(t(3, 4), 1.0)  # norm 5 -> 1
    assert was and torch.allclose(clipped, t(0.6, 0.8))
    huge, was = clip_to_norm(t(3e38, -3e38), 2.0)  # its float32 norm would overflow to inf
    assert was and torch.allclose(huge, t(2**0.5, -(2**0.5)))
    assert l2_norm(t(3e38, 3e38)) == pytest.approx(3e38 * 2**0.5)
    with pytest.raises(InvalidInput, match="norm bound"):
        clip_to_norm(t(1.0), float("inf"))


def test_adaptive_norm_bound_is_a_multiple_of_the_lower_median():
    assert adaptive_norm_bound([3.0, 1.0, 2.0], 2.0) == 4.0  # median 2
    assert adaptive_norm_bound([1.0, 2.0, 3.0, 4.0], 1.5) == 3.0  # lower median 2
    assert adaptive_norm_bound([1.0, 1e300], 2.0) == 2.0  # a hostile car in a pair does not set the bound
    with pytest.raises(InvalidInput, match="finite norm"):
        adaptive_norm_bound([], 2.0)
    with pytest.raises(InvalidInput, match="multiplier"):
        adaptive_norm_bound([1.0], 0.0)


def test_trimmed_mean_hand_computed():
    vectors = [t(1, 10), t(2, 20), t(3, 30), t(100, -100)]
    # n=4, k=1 per end: coordinate 0 keeps [2, 3], coordinate 1 keeps [10, 20]
    assert torch.equal(trimmed_mean(vectors, 0.25), t(2.5, 15))
    assert torch.equal(trimmed_mean(vectors, 0.0), t(26.5, -10))  # nothing trimmed: the plain mean
    assert torch.equal(trimmed_mean([t(1), t(2), t(9)], 0.1), t(2))  # ceil(0.3) = 1 per end: the median
    assert torch.equal(trimmed_mean([t(1), t(9)], 0.4), t(5))  # never trims the last value away
    with pytest.raises(InvalidInput, match="trim_fraction"):
        trimmed_mean(vectors, 0.5)
    with pytest.raises(InvalidInput, match="one length"):
        trimmed_mean([t(1), t(1, 2)], 0.1)


def test_coordinate_median_hand_computed():
    assert torch.equal(coordinate_median([t(1, 5), t(3, -1), t(2, 0)]), t(2, 0))
    assert torch.equal(coordinate_median([t(1), t(4), t(2), t(10)]), t(3))  # even: mean of the middle two
    with pytest.raises(InvalidInput, match="needs >= 1"):
        coordinate_median([])
