"""Load generator: many lightweight async vehicles speaking the real protocol against one or more coordinators.

Each simulated vehicle enrolls, then loops over tiny units: lease, compute, complete (result inline, next lease
asked for in the same call). ``lease_ms`` is how long the request that delivered each grant took (a lease call,
or the completion that carried it); ``cycle_ms`` is the time a unit spent in HTTP exchanges (the car's own compute
time left out): one ``complete`` with ``next`` once the car holds a lease, plus a ``lease`` call when it did not.
A cycle counts towards the rate when it completes inside the measuring window, whose edges are also where the
servers' CPU time is read (``cpu_pids``). ``run_connected`` instead holds every car in a long-poll with no work.

Used by ``bench/inference.py`` and ``bench/coordinator.py``; runnable alone:
``python bench/lease_load.py --url http://127.0.0.1:8787 --enroll-token fge_... --vehicles 1000 --seconds 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import math
import time
from collections.abc import Sequence

import aiohttp
import numpy as np

PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": True, "eligible": True}
_FAILURES = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _count(counts: dict[str, int], exc: BaseException) -> None:
    """Tally a failed request by its kind and message, e.g. 'ClientOSError: [Errno 104] Connection reset by peer'."""
    key = f"{type(exc).__name__}: {exc}"[:120]
    counts[key] = counts.get(key, 0) + 1


async def _cancel(cars: list[asyncio.Task]) -> None:
    """Stop every car before its session closes, however the run ends (Ctrl-C included)."""
    for car in cars:
        car.cancel()
    await asyncio.gather(*cars, return_exceptions=True)


def _urls(url: str | Sequence[str]) -> list[str]:
    return [url] if isinstance(url, str) else list(url)


class _CpuMeter:
    """CPU seconds (user + system, this process's threads, children excluded) of some processes, read on demand."""

    def __init__(self, pids: Sequence[int]) -> None:
        import psutil  # the bench extra; only needed when CPU is measured

        self._procs = [psutil.Process(pid) for pid in pids]
        self._self = psutil.Process()

    @staticmethod
    def _cpu(proc) -> float:
        times = proc.cpu_times()
        return times.user + times.system

    def read(self) -> tuple[float, float]:
        """(the watched processes' CPU seconds summed, this load generator's own)."""
        return sum(self._cpu(p) for p in self._procs), self._cpu(self._self)


async def _enroll_all(session: aiohttp.ClientSession, urls: list[str], token: str, vehicles: int,
                      samples: dict | None = None, batch: int = 100) -> list[str]:
    async def one(i: int) -> str:
        body = {"enrollment_token": token, "name": f"sim-{i}", "hardware": "ai4"}
        async with session.post(f"{urls[i % len(urls)]}/v1/vehicles/enroll", json=body) as r:
            r.raise_for_status()
            text = await r.text()
        if samples is not None:
            samples.setdefault("enroll", text)
        return json.loads(text)["credential"]

    creds: list[str] = []
    for start in range(0, vehicles, batch):
        creds += await asyncio.gather(*(one(i) for i in range(start, min(vehicles, start + batch))))
    return creds


async def _compute(session: aiohttp.ClientSession, url: str, auth: dict, grant: dict, seconds: float,
                   out: dict) -> None:
    """The car computing its unit for ``seconds``, renewing the lease every ``renew_every_s`` as the agent does
    (only units longer than that, when a slow coordinator is paced with many cars, need it)."""
    until = time.perf_counter() + seconds
    while (left := until - time.perf_counter()) > 0:
        await asyncio.sleep(min(left, grant["renew_every_s"]))
        if until - time.perf_counter() > 0:
            async with session.post(f"{url}/v1/leases/{grant['lease_id']}/renew", headers=auth) as r:
                await r.read()
                out["renewals"] += 1
                if r.status != 200:
                    out["errors"] += 1
                    out["statuses"][r.status] = out["statuses"].get(r.status, 0) + 1


async def _vehicle(session: aiohttp.ClientSession, url: str, cred: str, until: float, out: dict,
                   rng: np.random.Generator, think_s: float) -> None:
    """Lease, compute (a random result), complete with the result inline and the next lease asked for in the
    same call, as the agent does: one round trip per unit once the first lease is held. Paced cars
    (``think_s`` > 0) start at a random moment of one mean compute time, so the offered load is steady rather
    than a burst of first leases."""
    auth = {"authorization": f"Bearer {cred}"}
    samples = out["samples"]
    grant, grant_ms = None, 0.0
    if think_s > 0:
        await asyncio.sleep(think_s * rng.uniform(0.0, 1.0))
    while time.perf_counter() < until:
        try:
            leased_ms = 0.0
            if grant is None:
                t0 = time.perf_counter()
                async with session.post(f"{url}/v1/leases", json={"state": PARKED, "wait_s": 1.0},
                                        headers=auth) as r:
                    if r.status == 204:
                        out["starved"] += 1
                        continue
                    if r.status != 200:
                        out["errors"] += 1
                        out["statuses"][r.status] = out["statuses"].get(r.status, 0) + 1
                        await asyncio.sleep(0.1)  # a refusing server must not turn this into a busy loop
                        continue
                    text = await r.text()
                samples.setdefault("lease", text)
                grant = json.loads(text)
                grant_ms = leased_ms = (time.perf_counter() - t0) * 1000
            if think_s > 0:
                await _compute(session, url, auth, grant, think_s * rng.uniform(0.5, 1.5), out)
            data = _npy(rng.standard_normal((grant["items"], 10)).astype(np.float32))
            body = {"result": hashlib.sha256(data).hexdigest(), "inline": base64.b64encode(data).decode(),
                    "next": {"state": PARKED}}
            t1 = time.perf_counter()
            async with session.post(f"{url}/v1/leases/{grant['lease_id']}/complete", json=body, headers=auth) as r:
                if r.status != 200:
                    out["errors"] += 1
                    out["statuses"][r.status] = out["statuses"].get(r.status, 0) + 1
                    grant = None
                    continue
                text = await r.text()
            t2 = time.perf_counter()
            if "complete" not in samples:
                samples["complete"] = text
                samples["complete_path_lease_id"] = grant["lease_id"]
            complete_ms = (t2 - t1) * 1000
            out["done"].append((t2, leased_ms + complete_ms, grant_ms, complete_ms))
            grant = json.loads(text).get("next_lease")
            grant_ms = complete_ms  # the next grant, if any, came with this completion
        except _FAILURES as exc:
            out["errors"] += 1
            _count(out["exceptions"], exc)
            grant = None
            await asyncio.sleep(0.1)


async def run_load(url: str | Sequence[str], enroll_token: str, vehicles: int, seconds: float,
                   warmup_s: float = 2.0, think_s: float = 0.0, cpu_pids: Sequence[int] = ()) -> dict:
    """``think_s``: mean seconds each car computes a unit; 0 drives the coordinator at saturation. Paced, the
    warm-up lasts at least 1.5 compute times, by when the staggered cars complete at a steady rate. With several
    ``url``s the cars are spread round-robin over them. ``cpu_pids``: processes whose CPU time over the measuring
    window is reported (``server_cpu_ms_per_cycle``); ``samples`` holds the first raw response body of each kind."""
    urls = _urls(url)
    warmup_s = max(warmup_s, 1.5 * think_s)
    meter = _CpuMeter(cpu_pids) if cpu_pids else None
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    out: dict = {"done": [], "errors": 0, "starved": 0, "renewals": 0, "statuses": {}, "exceptions": {},
                 "samples": {}}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        creds = await _enroll_all(session, urls, enroll_token, vehicles, out["samples"])
        start = time.perf_counter()
        until = start + warmup_s + seconds
        cars = [asyncio.create_task(_vehicle(session, urls[i % len(urls)], c, until, out,
                                             np.random.default_rng(i), think_s))
                for i, c in enumerate(creds)]
        try:
            await asyncio.sleep(warmup_s)
            w0, cpu0 = time.perf_counter(), meter.read() if meter else (0.0, 0.0)
            await asyncio.sleep(max(0.0, until - time.perf_counter()))
            w1, cpu1 = time.perf_counter(), meter.read() if meter else (0.0, 0.0)
        finally:  # what is still in flight or computing would only be waited for, not counted
            await _cancel(cars)
    window = [d for d in out["done"] if w0 <= d[0] <= w1]
    cycles, span = len(window), w1 - w0
    result = {
        "vehicles": vehicles,
        "urls": len(urls),
        "seconds": round(span, 2),
        "think_s": think_s,
        "cycles": cycles,
        "lease_cycles_per_s": round(cycles / span, 1),
        "cycle_p50_ms": round(percentile([d[1] for d in window], 50), 1),
        "cycle_p99_ms": round(percentile([d[1] for d in window], 99), 1),
        "lease_p50_ms": round(percentile([d[2] for d in window], 50), 1),
        "lease_p99_ms": round(percentile([d[2] for d in window], 99), 1),
        "complete_p50_ms": round(percentile([d[3] for d in window], 50), 1),
        "complete_p99_ms": round(percentile([d[3] for d in window], 99), 1),
        "errors": out["errors"],
        "errors_by_status": out["statuses"],
        "errors_by_exception": out["exceptions"],
        "starved_polls": out["starved"],
        "renewals": out["renewals"],
        "warmup_s": round(warmup_s, 1),
        "samples": out["samples"],
    }
    if meter is not None and cycles:
        result["server_cpu_ms_per_cycle"] = round((cpu1[0] - cpu0[0]) * 1000 / cycles, 3)
        result["server_cpu_pct"] = round(100 * (cpu1[0] - cpu0[0]) / span, 1)
        result["loadgen_cpu_pct"] = round(100 * (cpu1[1] - cpu0[1]) / span, 1)
    return result


async def _idle_vehicle(session: aiohttp.ClientSession, url: str, cred: str, start_at: float, wait_s: float,
                        out: dict) -> None:
    """Long-poll for work, again as soon as each poll returns; nothing is ever granted (no job exists)."""
    auth = {"authorization": f"Bearer {cred}"}
    await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    body = {"state": PARKED, "wait_s": wait_s}
    while True:
        t0 = time.perf_counter()
        try:
            async with session.post(f"{url}/v1/leases", json=body, headers=auth) as r:
                await r.read()
                if r.status == 200:
                    out["grants"] += 1
                elif r.status != 204:
                    out["errors"] += 1
                    out["statuses"][r.status] = out["statuses"].get(r.status, 0) + 1
                    await asyncio.sleep(0.1)
                    continue
            out["polls"] += 1
            out["poll_ms"].append((time.perf_counter() - t0) * 1000)
        except _FAILURES as exc:
            out["errors"] += 1
            _count(out["exceptions"], exc)
            await asyncio.sleep(0.1)


async def run_connected(url: str, enroll_token: str, vehicles: int, seconds: float, *, wait_s: float = 10.0,
                        ramp_s: float = 5.0, rss_pid: int | None = None) -> dict:
    """``vehicles`` cars long-polling one coordinator that has no work: connect over ``ramp_s``, then hold for
    ``seconds``. ``errors`` counts every non-2xx answer and every failed or timed-out request; the coordinator's
    RSS (``rss_pid``) is read at the end, with every car still connected. A poll answered much later than its
    ``wait_s`` (``poll_p99_ms``) or connections not yet accepted at the end mean the coordinator fell behind."""
    import psutil

    server = psutil.Process(rss_pid) if rss_pid else None
    me = psutil.Process()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=wait_s + 60, connect=30)
    out: dict = {"polls": 0, "grants": 0, "errors": 0, "statuses": {}, "exceptions": {}, "poll_ms": []}
    peak_rss = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t_enroll = time.perf_counter()
        creds = await _enroll_all(session, [url], enroll_token, vehicles)
        enroll_s = time.perf_counter() - t_enroll
        start = time.perf_counter()
        cpu0 = sum(me.cpu_times()[:2])
        cars = [asyncio.create_task(_idle_vehicle(session, url, c, start + ramp_s * i / vehicles, wait_s, out))
                for i, c in enumerate(creds)]
        until = start + ramp_s + seconds
        try:
            while time.perf_counter() < until:
                await asyncio.sleep(min(1.0, max(0.0, until - time.perf_counter())))
                if server is not None:
                    peak_rss = max(peak_rss, server.memory_info().rss)
            rss = server.memory_info().rss if server is not None else 0
            # Connections the coordinator has accepted; the rest wait in the kernel's backlog, requests unread.
            accepted = (sum(c.status == psutil.CONN_ESTABLISHED for c in server.net_connections(kind="tcp"))
                        if server is not None else None)
            loadgen_cpu_pct = 100 * (sum(me.cpu_times()[:2]) - cpu0) / (time.perf_counter() - start)
        finally:
            await _cancel(cars)
    polls = out["poll_ms"]
    return {
        "vehicles": vehicles, "seconds": seconds, "ramp_s": ramp_s, "wait_s": wait_s,
        "enroll_s": round(enroll_s, 1), "errors": out["errors"], "errors_by_status": out["statuses"],
        "errors_by_exception": out["exceptions"], "polls": out["polls"], "grants": out["grants"],
        "poll_p50_ms": round(percentile(polls, 50), 1), "poll_p99_ms": round(percentile(polls, 99), 1),
        "poll_max_ms": round(max(polls), 1) if polls else math.nan,
        "rss_mb": round(rss / 2**20, 1), "peak_rss_mb": round(peak_rss / 2**20, 1),
        "connections_accepted": accepted, "loadgen_cpu_pct": round(loadgen_cpu_pct, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, action="append", help="coordinator URL (repeat to spread cars)")
    parser.add_argument("--enroll-token", required=True)
    parser.add_argument("--vehicles", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--think-s", type=float, default=0.0, help="mean seconds a car computes each unit")
    args = parser.parse_args()
    result = asyncio.run(run_load(args.url, args.enroll_token, args.vehicles, args.seconds, think_s=args.think_s))
    result.pop("samples")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
