"""Load generator: many lightweight async vehicles speaking the real protocol against one coordinator.

Each simulated vehicle enrolls, then loops over tiny units: lease, compute, complete (result inline, next lease
asked for in the same call). ``lease_ms`` is how long the request that delivered each grant took (a lease call,
or the completion that carried it); ``cycle_ms`` is from holding no result to the unit completed. Used by
``bench/inference.py``; runnable alone: ``python bench/lease_load.py --vehicles 1000 --seconds 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
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


async def _vehicle(session, url: str, cred: str, until: float, out: dict, rng: np.random.Generator,
                   think_s: float) -> None:
    """Lease, compute (a random result), complete with the result inline and the next lease asked for in the
    same call, as the agent does: one round trip per unit once the first lease is held."""
    auth = {"authorization": f"Bearer {cred}"}
    grant, grant_ms = None, 0.0
    while time.perf_counter() < until:
        t0 = time.perf_counter()
        if grant is None:
            async with session.post(f"{url}/v1/leases", json={"state": PARKED, "wait_s": 1.0}, headers=auth) as r:
                if r.status == 204:
                    continue
                if r.status != 200:
                    out["errors"] += 1
                    continue
                grant = await r.json()
            grant_ms = (time.perf_counter() - t0) * 1000
        if think_s > 0:  # the car computing its unit
            await asyncio.sleep(think_s * rng.uniform(0.5, 1.5))
        t1 = time.perf_counter()
        data = _npy(rng.standard_normal((grant["items"], 10)).astype(np.float32))
        body = {"result": hashlib.sha256(data).hexdigest(), "inline": base64.b64encode(data).decode(),
                "next": {"state": PARKED}}
        async with session.post(f"{url}/v1/leases/{grant['lease_id']}/complete", json=body, headers=auth) as r:
            if r.status != 200:
                out["errors"] += 1
                grant = None
                continue
            grant = (await r.json()).get("next_lease")
        t2 = time.perf_counter()
        if t0 >= out["measure_from"]:
            out["lease_ms"].append(grant_ms)
            out["cycle_ms"].append((t2 - t0) * 1000)
            out["complete_ms"].append((t2 - t1) * 1000)
        grant_ms = (t2 - t1) * 1000  # the next grant, if any, came with this completion


async def run_load(url: str, enroll_token: str, vehicles: int, seconds: float, warmup_s: float = 2.0,
                   think_s: float = 0.0) -> dict:
    """``think_s``: mean seconds each car computes a unit; 0 drives the coordinator at saturation."""
    connector = aiohttp.TCPConnector(limit=vehicles, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        creds = []
        for start in range(0, vehicles, 100):
            creds += await asyncio.gather(*(_enroll(session, url, enroll_token, i)
                                            for i in range(start, min(vehicles, start + 100))))
        now = time.perf_counter()
        out = {"lease_ms": [], "cycle_ms": [], "complete_ms": [], "errors": 0, "measure_from": now + warmup_s}
        until = now + warmup_s + seconds
        await asyncio.gather(*(_vehicle(session, url, c, until, out, np.random.default_rng(i), think_s)
                               for i, c in enumerate(creds)))
    cycles = len(out["cycle_ms"])
    return {
        "vehicles": vehicles,
        "seconds": seconds,
        "think_s": think_s,
        "cycles": cycles,
        "lease_cycles_per_s": round(cycles / seconds, 1),
        "lease_p50_ms": round(percentile(out["lease_ms"], 50), 1),
        "lease_p99_ms": round(percentile(out["lease_ms"], 99), 1),
        "complete_p50_ms": round(percentile(out["complete_ms"], 50), 1),
        "complete_p99_ms": round(percentile(out["complete_ms"], 99), 1),
        "errors": out["errors"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--enroll-token", required=True)
    parser.add_argument("--vehicles", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--think-s", type=float, default=0.0, help="mean seconds a car computes each unit")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run_load(args.url, args.enroll_token, args.vehicles, args.seconds,
                                          think_s=args.think_s))))


if __name__ == "__main__":
    main()
