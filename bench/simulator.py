"""Fleet simulator throughput: vehicle-days per second at 100 k, 1 M and 10 M vehicles, peak memory, and the
vectorised model's speed-up over the minute-stepped reference on the same 10 k vehicles.

Each fleet size runs in its own child process so its peak resident memory is its own. Figures, not a timed test.

    python bench/simulator.py            # table
    python bench/simulator.py --json     # table, then one JSON object on the last line
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZES = (100_000, 1_000_000, 10_000_000)
REFERENCE_VEHICLES = 10_000


def _time_one(vehicles: int, days: int, repeats: int, ray: bool) -> dict:
    """Run in a child: median wall time of the vectorised model, and this process's peak RSS."""
    from fleetgrid.sim import FleetConfig, simulate_fleet

    if ray:
        import ray as ray_mod

        ray_mod.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        simulate_fleet(FleetConfig(), 1000, days, seed=0, ray=True)  # warm the workers
    seconds = []
    for repeat in range(repeats):
        start = time.perf_counter()
        simulate_fleet(FleetConfig(), vehicles, days, seed=repeat, ray=ray)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {
        "vehicles": vehicles,
        "days": days,
        "seconds": seconds,
        "median_s": median,
        "vehicle_days_per_s": vehicles * days / median,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _reference(vehicles: int, repeats: int) -> dict:
    import numpy as np

    from fleetgrid.sim import FleetConfig, simulate_fleet, simulate_reference

    config = FleetConfig()
    fast = []
    for _ in range(repeats):
        start = time.perf_counter()
        tally = simulate_fleet(config, vehicles, 1, seed=0)
        fast.append(time.perf_counter() - start)
    start = time.perf_counter()
    slow_tally = simulate_reference(config, vehicles, 1, seed=0)
    slow = time.perf_counter() - start
    return {
        "vehicles": vehicles,
        "vectorised_s": statistics.median(fast),
        "reference_s": slow,
        "speedup_vs_reference": slow / statistics.median(fast),
        "identical_states": bool(np.array_equal(tally.states, slow_tally.states)),
    }


def _child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size; medians are reported")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument(
        "--ray",
        action="store_true",
        help="also time each size sharded across Ray workers",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/simulator.json"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-ray", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(_time_one(args.one, 1, args.repeats, args.one_ray)))
        return
    if args.reference:
        print(json.dumps(_reference(REFERENCE_VEHICLES, max(args.repeats, 21))))
        return

    runs = [_child(["--one", str(n), "--repeats", str(args.repeats)]) for n in args.sizes]
    ref = _child(["--reference", "--repeats", str(args.repeats)])  # before Ray, whose teardown takes CPU
    ray_runs = (
        [_child(["--one", str(n), "--repeats", str(args.repeats), "--one-ray"]) for n in args.sizes] if args.ray else []
    )
    print(f"{'mode':<8}{'vehicles':>12}{'median s':>10}{'vehicle-days/s':>16}{'peak RSS MiB':>14}")
    for mode, rows in (("local", runs), ("ray", ray_runs)):
        for r in rows:
            print(
                f"{mode:<8}{r['vehicles']:>12,}{r['median_s']:>10.2f}{r['vehicle_days_per_s']:>16,.0f}"
                f"{r['peak_rss_mib']:>14,.0f}"
            )
    print(
        f"reference on {ref['vehicles']:,} vehicles: {ref['reference_s']:.2f} s vs {ref['vectorised_s']:.4f} s "
        f"-> speedup {ref['speedup_vs_reference']:,.0f}x (identical states: {ref['identical_states']})"
    )
    result = {
        "benchmark": "simulator",
        "cpus": os.cpu_count(),
        "vehicle_days_per_s": {str(r["vehicles"]): r["vehicle_days_per_s"] for r in runs},
        "median_s": {str(r["vehicles"]): r["median_s"] for r in runs},
        "peak_rss_mib": {str(r["vehicles"]): r["peak_rss_mib"] for r in runs},
        "peak_memory_mib": max(r["peak_rss_mib"] for r in runs),
        "ray_vehicle_days_per_s": {str(r["vehicles"]): r["vehicle_days_per_s"] for r in ray_runs},
        "speedup_vs_reference": ref["speedup_vs_reference"],
        "reference": ref,
        "runs": runs + ray_runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
