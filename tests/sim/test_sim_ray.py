"""Sharding across Ray workers gives exactly the one-process answer."""

from __future__ import annotations

import pytest

from fleetgrid.sim.draws import BLOCK
from fleetgrid.sim.params import FleetConfig
from fleetgrid.sim.runner import simulate_fleet

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():  # another module's cluster: use it, leave it running
        yield
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_matches_one_process(local_ray) -> None:
    config, vehicles = FleetConfig(), 2 * BLOCK + 1234
    sharded = simulate_fleet(config, vehicles, 2, seed=21, ray=True)
    local = simulate_fleet(config, vehicles, 2, seed=21)
    assert (sharded.states == local.states).all()
    assert sharded.sums == local.sums
    assert sharded.available_w == pytest.approx(local.available_w, rel=1e-12)
