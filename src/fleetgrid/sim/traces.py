"""Export the simulated fleet's days as per-vehicle schedules the simulated vehicle bus can replay.

The format is :mod:`fleetgrid.vehicle.schedule` (``fleetgrid.trace/1``, JSON Lines, one vehicle a line), so demos
and training benchmarks run on calibrated behaviour. Written block by block, so memory stays flat.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from fleetgrid.errors import InvalidInput
from fleetgrid.sim.draws import BLOCK, block_sizes
from fleetgrid.sim.fleet import DayOutcome, Fleet
from fleetgrid.sim.params import FleetConfig
from fleetgrid.sim.runner import check_run, iter_block_days
from fleetgrid.sim.tables import MINUTES, compile_tables
from fleetgrid.vehicle.schedule import DaySchedule, VehicleTrace

__all__ = ["MAX_TRACE_VEHICLES", "export_traces", "iter_traces"]

# ~200 bytes per vehicle-day of JSON: a million cars for a week is ~1.4 GB on disk already.
MAX_TRACE_VEHICLES = 1_000_000


def _day_schedule(out: DayOutcome, fleet: Fleet, i: int) -> DaySchedule:
    trips = [(int(s), int(e)) for s, e, ok in zip(out.start[i], out.end[i], out.valid[i], strict=True) if ok]
    morning, evening = int(out.morning_end[i]), int(out.evening_start[i])
    home = [(0, MINUTES)] if out.home_all_day[i] else [(0, morning), (evening, MINUTES)]
    plugged = []
    if out.plugged_morning[i]:
        plugged.append((0, morning))
    if out.plugged_evening[i]:
        plugged.append((evening, int(out.evening_end[i])))
    return DaySchedule(
        trips=tuple(trips),
        plugged=tuple(iv for iv in _merge(plugged) if iv[0] < iv[1]),
        wifi=tuple(iv for iv in _merge(home) if iv[0] < iv[1]) if fleet.wifi[i] else (),
        soc_start=min(1.0, max(0.0, int(out.soc_start[i]) / int(fleet.cap_wh[i]))),
    )


def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join touching intervals ([0, 600) and [600, 1440) are one session) so the schedule reads naturally."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        elif start < end:
            merged.append((start, end))
    return merged


def iter_traces(config: FleetConfig, vehicles: int, days: int, seed: int = 0) -> Iterator[VehicleTrace]:
    """Every vehicle's trace, in vehicle order, from the same runs :func:`simulate_fleet` tallies."""
    check_run(vehicles, days, seed)
    tables = compile_tables(config)
    for block, n in block_sizes(vehicles):
        per_vehicle: list[list[DaySchedule]] = [[] for _ in range(n)]
        for _, fleet, out in iter_block_days(config, tables, seed, block, n, days):
            for i in range(n):
                per_vehicle[i].append(_day_schedule(out, fleet, i))
        for i, schedule in enumerate(per_vehicle):
            yield VehicleTrace(vehicle_id=f"sim-{seed}-{block * BLOCK + i:09d}", days=tuple(schedule))


def export_traces(path: str | Path, config: FleetConfig, vehicles: int, days: int, seed: int = 0) -> int:
    """Write ``vehicles`` traces of ``days`` days to ``path`` (JSON Lines); returns the number written."""
    if vehicles > MAX_TRACE_VEHICLES:
        raise InvalidInput(
            f"--export-traces with {vehicles:,} vehicles; accepted: at most {MAX_TRACE_VEHICLES:,} (about 200 bytes "
            "per vehicle-day of JSON); export a sample, since the traces are for replaying, not for fleet totals"
        )
    check_run(vehicles, days, seed)
    written = 0
    try:
        with open(path, "w", encoding="utf-8") as fh:
            for trace in iter_traces(config, vehicles, days, seed):
                fh.write(json.dumps(trace.to_json(), separators=(",", ":")) + "\n")
                written += 1
    except OSError as exc:
        raise InvalidInput(
            f"cannot write traces to {str(path)!r}: {exc.strerror}; accepted: a writable file path"
        ) from exc
    return written
