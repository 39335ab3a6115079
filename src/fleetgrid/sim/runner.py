"""Runs the vectorised model over a whole fleet: block by block in one process, or sharded across Ray workers.

Memory stays flat as the fleet grows because only one block of :data:`~fleetgrid.sim.draws.BLOCK` vehicles is
alive at a time; the per-minute tally is the only thing that grows, and it grows with days, not vehicles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fleetgrid.errors import InvalidInput
from fleetgrid.sim.draws import BLOCK, block_rng, block_sizes, draw_day, draw_vehicles
from fleetgrid.sim.fleet import DayOutcome, Fleet, build_fleet, step_day
from fleetgrid.sim.params import FleetConfig
from fleetgrid.sim.tables import ModelTables, compile_tables
from fleetgrid.sim.tally import Tally, tally_day

__all__ = [
    "LOCAL_VEHICLE_DAYS",
    "MAX_DAYS",
    "MAX_VEHICLES",
    "OnProgress",
    "check_run",
    "iter_block_days",
    "simulate_blocks",
    "simulate_fleet",
]

# Sanity bounds (bad input, not capacity): more cars than exist on Earth, or more than ten years of days.
MAX_VEHICLES = 2_000_000_000
MAX_DAYS = 3653
# Above this one process would take minutes and is better sharded across Ray workers (--ray).
LOCAL_VEHICLE_DAYS = 200_000_000

OnProgress = Callable[[int, int], None]  # (vehicle-days done, vehicle-days in the run)


def check_run(vehicles: int, days: int, seed: int, *, ray: bool = False) -> None:
    """Refuse counts that are negative, absurd or too big for one process; messages say what is accepted."""
    if not isinstance(vehicles, int) or not 1 <= vehicles <= MAX_VEHICLES:
        raise InvalidInput(f"vehicles = {vehicles!r}; accepted: an integer from 1 to {MAX_VEHICLES:,}")
    if not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise InvalidInput(f"days = {days!r}; accepted: an integer from 1 to {MAX_DAYS}")
    if not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise InvalidInput(f"seed = {seed!r}; accepted: an integer from 0 to 2**63 - 1")
    if not ray and vehicles * days > LOCAL_VEHICLE_DAYS:
        raise InvalidInput(
            f"{vehicles:,} vehicles x {days} days = {vehicles * days:,} vehicle-days is more than one process "
            f"runs (limit {LOCAL_VEHICLE_DAYS:,}); add --ray to shard the fleet across Ray workers, lower "
            "--vehicles or --days, or use --pitch, which simulates a sample and scales it up"
        )


def iter_block_days(
    config: FleetConfig, tables: ModelTables, seed: int, block: int, n: int, days: int
) -> Iterator[tuple[int, Fleet, DayOutcome]]:
    """Every (day, fleet, outcome) of one block, in order; the day loop carries state of charge and plug."""
    rng = block_rng(seed, block)
    fleet = build_fleet(draw_vehicles(rng, n), tables, config)
    soc, plugged = fleet.soc0_wh, fleet.plugged0
    for day in range(days):
        draws = draw_day(rng, n, tables.trips)
        out = step_day(fleet, soc, plugged, draws, tables, config, tables.is_weekend(day))
        soc, plugged = out.soc_end, out.plugged_end
        yield day, fleet, out


def simulate_blocks(
    config: FleetConfig,
    vehicles: int,
    days: int,
    seed: int,
    blocks: list[int],
    progress: OnProgress | None = None,
) -> Tally:
    """Tally the given blocks of a ``vehicles``-car fleet (a Ray shard, or the whole fleet in one process).
    ``progress(done, total)`` is called in vehicle-days after every simulated day of every block."""
    tables = compile_tables(config)
    tally = Tally(days=days)
    sizes = [min(BLOCK, vehicles - block * BLOCK) for block in blocks]
    total, done = sum(sizes) * days, 0
    for block, n in zip(blocks, sizes, strict=True):
        for day, fleet, out in iter_block_days(config, tables, seed, block, n, days):
            if day == 0:
                tally.add_fleet(fleet)
            tally_day(tally, day, out, fleet)
            done += n
            if progress is not None:
                progress(done, total)
    return tally


def simulate_fleet(
    config: FleetConfig,
    vehicles: int,
    days: int,
    seed: int = 0,
    *,
    ray: bool = False,
    progress: OnProgress | None = None,
) -> Tally:
    """Simulate ``vehicles`` cars for ``days`` days. The result depends only on (config, vehicles, days, seed).
    ``progress(done, total)`` hears of the vehicle-days simulated so far (under Ray, as each shard finishes)."""
    check_run(vehicles, days, seed, ray=ray)
    blocks = [index for index, _ in block_sizes(vehicles)]
    if ray:
        from fleetgrid.sim.shards import simulate_on_ray

        return simulate_on_ray(config, vehicles, days, seed, blocks, progress)
    return simulate_blocks(config, vehicles, days, seed, blocks, progress)
