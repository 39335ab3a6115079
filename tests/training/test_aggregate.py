import pytest
import torch

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.aggregate import (
    client_weight,
    nesterov_step,
    sgd_step,
    staleness_weight,
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
