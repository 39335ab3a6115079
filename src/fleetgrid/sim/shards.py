"""Shard a fleet's blocks across Ray workers and add up their tallies.

Blocks are dealt round-robin into a few shards per CPU, so stragglers even out. Because each block has its own
seeded generator (:mod:`~fleetgrid.sim.draws`), a Ray run gives exactly the tally of a one-process run.
"""

from __future__ import annotations

from collections.abc import Callable

from fleetgrid.errors import InvalidInput
from fleetgrid.sim.draws import BLOCK
from fleetgrid.sim.params import FleetConfig
from fleetgrid.sim.tally import Tally

__all__ = ["simulate_on_ray"]

SHARDS_PER_CPU = 4


def simulate_on_ray(
    config: FleetConfig,
    vehicles: int,
    days: int,
    seed: int,
    blocks: list[int],
    progress: Callable[[int, int], None] | None = None,
) -> Tally:
    """Run on the Ray cluster this process is connected to, or start a local one sized to this machine.
    ``progress(done, total)`` counts vehicle-days as each shard's tally comes back."""
    try:
        import ray
    except ImportError as exc:
        raise InvalidInput("--ray needs the 'ray' package; accepted: pip install 'fleetgrid[ray]'") from exc
    from fleetgrid.sim.runner import simulate_blocks

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    shards = [blocks[i :: cpus * SHARDS_PER_CPU] for i in range(min(len(blocks), cpus * SHARDS_PER_CPU))]
    task = ray.remote(simulate_blocks)
    config_ref = ray.put(config)
    pending = {task.remote(config_ref, vehicles, days, seed, shard): shard for shard in shards}
    total, simulated = Tally(days=days), 0
    while pending:  # add tallies as they finish, so at most a few per-minute series are held at once
        done, _ = ray.wait(list(pending), num_returns=1)
        total = total + ray.get(done[0])
        simulated += sum(min(BLOCK, vehicles - block * BLOCK) for block in pending.pop(done[0])) * days
        if progress is not None:
            progress(simulated, vehicles * days)
    return total
