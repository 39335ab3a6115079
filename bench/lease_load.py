"""Load generator: many lightweight async vehicles speaking the real protocol against one coordinator.

Each simulated vehicle enrolls, then loops: lease a tiny unit, upload its result, complete. Used by
``bench/inference.py``; runnable alone: ``python bench/lease_load.py --vehicles 1000 --seconds 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import statistics
import time

import aiohttp
import numpy as np

PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": True, "eligible": True}


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def _enroll(session: aiohttp.ClientSession, url: str, token: str, i: int) -> str:
    body = {"enrollment_token": token, "name": f"sim-{i}", "hardware": "ai4"}
    async with session.post(f"{url}/v1/vehicles/enroll", json=body) as r:
        r.raise_for_status()
        return (await r.json())["credential"]


async def _vehicle(session, url: str, cred: str, until: float, out: dict, rng: np.random.Generator) -> None:
    auth = {"authorization": f"Bearer {cred}"}
    while time.perf_counter() < until:
        t0 = time.perf_counter()
        async with session.post(f"{url}/v1/leases", json={"state": PARKED, "wait_s": 1.0}, headers=auth) as r:
            if r.status == 204:
                continue
            if r.status != 200:
                out["errors"] += 1
                continue
            grant = await r.json()
        t1 = time.perf_counter()
        data = _npy(rng.standard_normal((grant["items"], 10)).astype(np.float32))
        digest = hashlib.sha256(data).hexdigest()
        async with session.put(f"{url}/v1/artifacts/{digest}", data=data, headers=auth) as r:
            if r.status not in (200, 201):
                out["errors"] += 1
                continue
        async with session.post(f"{url}/v1/leases/{grant['lease_id']}/complete", json={"result": digest},
                                headers=auth) as r:
            if r.status != 200:
                out["errors"] += 1
                continue
        t2 = time.perf_counter()
        if t0 >= out["measure_from"]:
            out["lease_ms"].append((t1 - t0) * 1000)
            out["cycle_ms"].append((t2 - t0) * 1000)


async def run_load(url: str, enroll_token: str, vehicles: int, seconds: float, warmup_s: float = 2.0) -> dict:
    connector = aiohttp.TCPConnector(limit=vehicles, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        creds = []
        for start in range(0, vehicles, 100):
            creds += await asyncio.gather(*(_enroll(session, url, enroll_token, i)
                                            for i in range(start, min(vehicles, start + 100))))
        now = time.perf_counter()
        out = {"lease_ms": [], "cycle_ms": [], "errors": 0, "measure_from": now + warmup_s}
        until = now + warmup_s + seconds
        await asyncio.gather(*(_vehicle(session, url, c, until, out, np.random.default_rng(i))
                               for i, c in enumerate(creds)))
    cycles = len(out["cycle_ms"])
    return {
        "vehicles": vehicles,
        "seconds": seconds,
        "cycles": cycles,
        "lease_cycles_per_s": round(cycles / seconds, 1),
        "lease_p50_ms": round(percentile(out["lease_ms"], 50), 1),
        "lease_p99_ms": round(percentile(out["lease_ms"], 99), 1),
        "cycle_p50_ms": round(percentile(out["cycle_ms"], 50), 1),
        "cycle_p99_ms": round(percentile(out["cycle_ms"], 99), 1),
        "errors": out["errors"],
        "median_cycle_ms": round(statistics.median(out["cycle_ms"]), 1) if cycles else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--enroll-token", required=True)
    parser.add_argument("--vehicles", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run_load(args.url, args.enroll_token, args.vehicles, args.seconds))))


if __name__ == "__main__":
    main()
