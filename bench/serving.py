"""Serving benchmark: MiniLM embeddings from real agent processes through the coordinator's OpenAI-compatible API,
against the same model called in a plain local loop.

    python bench/serving.py --json            # about 15 minutes on 2 cores
    python bench/serving.py --quick --json    # fewer rates, shorter runs, scaling up to 4 cars

Prints a table and, with --json, one JSON object on the last line; also writes bench/results/serving.json.
Figures, not a timed test. Every request carries 1-8 texts (a seeded draw from the standard library's docstrings);
the client is the official ``openai`` one (async, ``max_retries=3``), sending open-loop at a fixed rate: requests
go out on schedule whether or not earlier ones were answered.

- ``local_p50_ms``: the same requests through ``load_runner('minilm-l6-v2', threads=1)`` in this process, one
  after another: the limit.
- ``runs``: at each offered rate, ``p50_ms``, ``p99_ms``, ``throughput_rps`` (answered per second), ``failed`` (no
  answer after the client's retries) for three fleets of ``--cars`` cars: no churn; ``--churn`` of the cars
  taking short trips at random through the run (each car away ~25% of the time, 2-simulated-minute trips on a
  minute-per-second clock), hedging on; the same churn with hedging off (``fleetgrid serve --no-serve-hedging``).
  ``overhead_p50_ms`` = the no-churn fleet's p50 at the lowest rate - ``local_p50_ms``.
- ``scaling``: for 1, 2, 4 (and 8) cars, the highest offered rate whose answered rate stayed within 90% of it with
  no failures, stepping the rate up by 1.5x; beside it the cars' own CPU use (agents and their workers, from
  /proc), which shows when the machine, not the fleet, is the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from fleetgrid.localfleet import AgentProcess, CoordinatorProcess, stop_fleet  # noqa: E402
from fleetgrid.vehicle.schedule import DaySchedule, VehicleTrace, save_traces  # noqa: E402

MODEL = "minilm-l6-v2"
CLOCK_SPEED = 60.0
"""Simulated seconds per wall second: a trip of 2 simulated minutes keeps a car away for 2 wall seconds."""


def requests_for(n: int, seed: int) -> list[list[str]]:
    from fleetgrid.data.corpus import stdlib_docstrings

    texts = stdlib_docstrings(limit=500, max_chars=200)
    rng = random.Random(seed)
    return [rng.sample(texts, rng.randint(1, 8)) for _ in range(n)]


def local_p50_ms(requests: list[list[str]]) -> float:
    from fleetgrid.models.registry import load_runner

    runner = load_runner(MODEL, threads=1)
    runner(requests[0])
    times = []
    for texts in requests:
        started = time.perf_counter()
        runner(texts)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def churn_traces(path: Path, cars: int, churn: float, seed: int) -> list[str]:
    """One trace per car: ``churn`` of them take a 2-minute trip every 8 minutes, at a random phase."""
    rng = random.Random(seed)
    away = set(rng.sample(range(cars), round(churn * cars)))
    traces = []
    for i in range(cars):
        trips: list[tuple[int, int]] = []
        if i in away:
            start = rng.randint(1, 7)
            while start + 2 <= 1440:
                trips.append((start, start + 2))
                start += 8
        traces.append(VehicleTrace(f"car-{i}", (DaySchedule(trips=tuple(trips), wifi=((0, 1440),), soc_start=0.9),)))
    save_traces(path, traces)
    return [f"trace:{path}#car-{i}" for i in range(cars)]


class Fleet:
    """A coordinator and ``cars`` agent processes with MiniLM deployed on every car."""

    def __init__(self, root: Path, cars: int, *, buses: list[str] | None = None, hedging: bool = True) -> None:
        self.root, self.cars = root, cars
        self.coordinator = CoordinatorProcess(root / "coordinator",
                                              extra_args=[] if hedging else ["--no-serve-hedging"]).start()
        creds = self.coordinator.credentials()
        self.token = creds.tenants["default"]
        clock = ["--clock-speed", str(CLOCK_SPEED), "--clock-start", "0", "--clock-origin", str(time.time())]
        self.agents = [AgentProcess(self.coordinator.url, root / f"car-{i}", creds.enroll, name=f"car-{i}",
                                    bus=(buses or ["manual"] * cars)[i],
                                    extra_args=["--heartbeat", "1", "--lease-wait", "1", *clock]).start()
                       for i in range(cars)]
        response = httpx.post(f"{self.coordinator.url}/v1/jobs", headers=self.headers,
                              json={"kind": "serve", "model": MODEL, "replicas": cars})
        response.raise_for_status()

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def connected(self) -> int:
        rows = httpx.get(f"{self.coordinator.url}/v1/deployments", headers=self.headers).json()
        return rows[0]["connected"] if rows else 0

    def wait_connected(self, n: int, timeout_s: float = 600) -> None:
        until = time.monotonic() + timeout_s
        while self.connected() < n:
            if time.monotonic() > until:
                raise RuntimeError(f"only {self.connected()} of {n} replicas connected after {timeout_s} s")
            time.sleep(0.5)

    def cpu_s(self) -> float:
        """CPU seconds used so far by the agents and their worker processes (from /proc)."""
        pids = {a.proc.pid for a in self.agents if a.proc is not None}
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            pgid = int(fields[2])
            if pgid in pids:  # each agent leads its own process group, its worker included
                total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def stop(self) -> None:
        stop_fleet(self.coordinator, self.agents, grace_s=10.0)


async def open_loop(url: str, token: str, requests: list[list[str]], rate: float, seconds: float) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=token, max_retries=3, timeout=60.0)
    latencies: list[float] = []
    failed: list[str] = []
    count = max(1, int(rate * seconds))

    async def one(texts: list[str]) -> None:
        started = time.perf_counter()
        try:
            got = await client.embeddings.create(model=MODEL, input=texts)
            assert len(got.data) == len(texts)
            latencies.append((time.perf_counter() - started) * 1000)
        except (openai.APIError, AssertionError) as exc:
            failed.append(f"{type(exc).__name__}: {exc}"[:200])

    loop = asyncio.get_running_loop()
    began = loop.time()
    tasks = []
    for i in range(count):
        delay = began + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(requests[i % len(requests)])))
    await asyncio.gather(*tasks)
    wall = loop.time() - began
    await client.close()
    return {"rate": rate, "sent": count, "answered": len(latencies), "failed": len(failed),
            "throughput_rps": round(len(latencies) / wall, 2),
            "p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
            "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
            "errors": failed[:3]}


def run_rates(fleet: Fleet, requests: list[list[str]], rates: list[float], seconds: float, label: str) -> list[dict]:
    out = []
    for rate in rates:
        row = asyncio.run(open_loop(fleet.coordinator.url, fleet.token, requests, rate, seconds))
        row["fleet"] = label
        print(f"  {label:<22} {rate:>6.1f}/s  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  "
              f"answered {row['throughput_rps']}/s  failed {row['failed']}", file=sys.stderr)
        out.append(row)
    return out


def max_sustained(fleet: Fleet, requests: list[list[str]], seconds: float, start: float) -> dict:
    rate, best = start, 0.0
    cpu0, t0 = fleet.cpu_s(), time.monotonic()
    while True:
        row = asyncio.run(open_loop(fleet.coordinator.url, fleet.token, requests, rate, seconds))
        ok = row["failed"] == 0 and row["throughput_rps"] >= 0.9 * rate
        print(f"  {fleet.cars} car(s) {rate:>6.1f}/s offered -> {row['throughput_rps']}/s, p50 {row['p50_ms']} ms"
              f"{'' if ok else '  (not sustained)'}", file=sys.stderr)
        if not ok:
            break
        best = rate
        rate *= 1.5
    busy = (fleet.cpu_s() - cpu0) / (time.monotonic() - t0)
    return {"cars": fleet.cars, "max_rps": round(best, 1), "cars_cpu_cores": round(busy, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--quick", action="store_true", help="fewer rates, shorter runs, scaling up to 4 cars")
    ap.add_argument("--cars", type=int, default=8)
    ap.add_argument("--churn", type=float, default=0.3, help="share of cars taking random trips")
    ap.add_argument("--rates", default=None, help="comma-separated offered rates (requests/s)")
    ap.add_argument("--seconds", type=float, default=None, help="seconds per rate")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")] if args.rates else ([4, 12] if args.quick else [4, 8, 16, 24])
    seconds = args.seconds or (10.0 if args.quick else 20.0)
    scaling_cars = [c for c in (1, 2, 4, 8) if c <= args.cars and (c <= 4 or not args.quick)]
    requests = requests_for(400, args.seed)

    print("local loop ...", file=sys.stderr)
    local = local_p50_ms(requests[:100])
    runs: list[dict] = []
    scaling: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fleetgrid-serving-") as tmp:
        root = Path(tmp)
        setups = [("no churn", None, True), (f"churn {args.churn:.0%}", args.churn, True),
                  (f"churn {args.churn:.0%}, no hedging", args.churn, False)]
        for n, (label, churn, hedging) in enumerate(setups):
            buses = churn_traces(root / f"traces-{n}.jsonl", args.cars, churn, args.seed) if churn else None
            fleet = Fleet(root / f"fleet-{n}", args.cars, buses=buses, hedging=hedging)
            try:
                fleet.wait_connected(args.cars if churn is None else max(1, round(args.cars * (1 - churn))))
                runs += run_rates(fleet, requests, rates, seconds, label)
            finally:
                fleet.stop()
        for cars in scaling_cars:
            fleet = Fleet(root / f"scale-{cars}", cars)
            try:
                fleet.wait_connected(cars)
                scaling.append(max_sustained(fleet, requests, seconds, start=4.0))
            finally:
                fleet.stop()

    base = next(r for r in runs if r["fleet"] == "no churn")
    churned = {r["rate"]: r for r in runs if r["fleet"] == setups[1][0]}
    unhedged = {r["rate"]: r for r in runs if r["fleet"] == setups[2][0]}
    hedge_gain = [round(unhedged[r]["p99_ms"] / churned[r]["p99_ms"], 2) for r in churned
                  if churned[r]["p99_ms"] and unhedged.get(r, {}).get("p99_ms")]
    one = next((s["max_rps"] for s in scaling if s["cars"] == 1), None)
    summary = {
        "local_p50_ms": round(local, 2),
        "overhead_p50_ms": round(base["p50_ms"] - local, 2) if base["p50_ms"] is not None else None,
        "failed": sum(r["failed"] for r in runs),
        "hedging_p99_gain": hedge_gain,
        "runs": runs,
        "scaling": scaling,
        "scaling_vs_1_car": {s["cars"]: round(s["max_rps"] / one, 2) for s in scaling} if one else {},
        "cores": os.cpu_count(),
    }
    print(f"{'fleet':<26}{'rate/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'answered/s':>12}{'failed':>8}")
    for r in runs:
        print(f"{r['fleet']:<26}{r['rate']:>8.1f}{r['p50_ms'] or '-':>9}{r['p99_ms'] or '-':>9}"
              f"{r['throughput_rps']:>12}{r['failed']:>8}")
    print(f"local p50 {summary['local_p50_ms']} ms; overhead p50 {summary['overhead_p50_ms']} ms; hedging p99 gain "
          f"(no hedging / hedging, per rate) {hedge_gain}")
    for s in scaling:
        print(f"{s['cars']} car(s): max sustained {s['max_rps']}/s, cars using {s['cars_cpu_cores']} cores")
    out = Path(__file__).parent / "results" / "serving.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
