"""A steady stream of embedding requests through the official ``openai`` client, for the demo and the benchmark:
what a client of the fleet sees (latency with the client's own retries, and requests that failed for good)."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import numpy as np

__all__ = ["RequestStream", "latency_summary"]


def latency_summary(latencies_s: list[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50_ms": None, "p99_ms": None}
    ms = np.asarray(latencies_s) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


class RequestStream:
    """Sends one request every ``interval_s`` (one at a time) from a thread, once the deployment has a replica
    connected, until :meth:`stop`. A request the client gave up on after its retries counts as failed."""

    def __init__(self, base_url: str, api_key: str, model: str, texts: list[str], *, interval_s: float = 0.25,
                 max_retries: int = 8, connect_timeout_s: float = 600.0) -> None:
        import openai

        self.base_url, self.api_key, self.model, self.texts = base_url.rstrip("/"), api_key, model, texts
        self.interval_s, self.connect_timeout_s = interval_s, connect_timeout_s
        self.client = openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=api_key, max_retries=max_retries,
                                    timeout=120.0)
        self.latencies_s: list[float] = []
        self.failed = 0
        self.errors: list[str] = []
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetgrid-requests", daemon=True)

    def start(self) -> RequestStream:
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(180)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        served = len(self.latencies_s)
        wall = (self.stopped_at or time.monotonic()) - self.started_at if self.started_at is not None else 0.0
        return {"serve_requests": served + self.failed, "serve_failed": self.failed,
                "serve_rps": round(served / wall, 2) if wall > 0 else 0.0,
                **{f"serve_{k}": v for k, v in latency_summary(self.latencies_s).items()},
                "serve_errors": self.errors[:5]}

    def _connected(self) -> bool:
        try:
            response = httpx.get(f"{self.base_url}/v1/deployments", timeout=10,
                                 headers={"authorization": f"Bearer {self.api_key}"})
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and any(
            d["name"] == self.model and d["connected"] > 0 for d in response.json())

    def _run(self) -> None:
        import openai

        until = time.monotonic() + self.connect_timeout_s
        while not self._connected():
            if self._stop.wait(0.5) or time.monotonic() > until:
                return
        self.started_at = time.monotonic()
        i = 0
        while not self._stop.is_set():
            tick = time.monotonic()
            try:
                self.client.embeddings.create(model=self.model, input=[self.texts[i % len(self.texts)]])
                self.latencies_s.append(time.monotonic() - tick)
            except openai.APIError as exc:
                self.failed += 1
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            i += 1
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - tick)))
        self.stopped_at = time.monotonic()
