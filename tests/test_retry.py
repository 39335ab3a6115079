"""Every client retries with exponential back-off and full jitter: the agent's link and the tenant's ``wait``."""

from __future__ import annotations

import random
import threading

import httpx
import pytest
import tenacity

from fleetgrid import errors
from fleetgrid.agent.config import AgentConfig
from fleetgrid.agent.link import BACKOFF_CAP, Link
from fleetgrid.agent.statedir import AgentStats
from fleetgrid.client import FleetgridClient
from fleetgrid.retry import backoff, delay_s

JOB = {"job_id": "job-1", "name": "x", "kind": "inference", "model": "mnist1d-cnn", "items": 4, "units_total": 1,
       "units_done": 0, "units_in_flight": 0, "reissued_units": 0, "preemptions": 0, "created_at": 0.0,
       "finished_at": None, "result": None, "error": None}


def test_backoff_draws_each_wait_from_the_whole_widening_window():
    random.seed(7)
    wait = backoff(1.0, 8.0)
    assert isinstance(wait, tenacity.wait_random_exponential)  # tenacity's "full jitter"
    for failures, window in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        draws = [delay_s(wait, failures) for _ in range(400)]
        assert all(0.0 <= d <= window for d in draws)
        assert min(draws) < 0.1 * window and max(draws) > 0.9 * window  # spread over all of it, not clustered
    random.seed(7)
    again = [delay_s(wait, 3) for _ in range(5)]
    random.seed(7)
    assert [delay_s(wait, 3) for _ in range(5)] == again  # reproducible under a seed, as a test needs


def _link(tmp_path, poll_s: float = 1.0) -> tuple[Link, list[float]]:
    config = AgentConfig(coordinator="http://127.0.0.1:1", state_dir=tmp_path, poll_interval_s=poll_s)
    link = Link(config, client=None, plan=None, monitor=None, stats=AgentStats())  # type: ignore[arg-type]
    slept: list[float] = []
    link.sleep = lambda seconds, until=None: slept.append(seconds)  # type: ignore[method-assign]
    return link, slept


def test_link_retrying_waits_with_full_jitter_and_counts_every_failure(tmp_path):
    link, slept = _link(tmp_path)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 6:
            raise errors.TransportError("connection refused")
        return "ok"

    random.seed(3)
    assert link.retrying(flaky, attempts=6) == "ok"
    random.seed(3)
    expected = [delay_s(link.backoff, n) for n in range(1, 6)]
    assert slept == expected and len(set(slept)) == 5
    assert all(0 <= s <= min(2 ** (n - 1), BACKOFF_CAP) for n, s in enumerate(slept, 1))
    assert link.stats.transport_errors == 5


def test_link_retrying_gives_up_after_its_attempts_or_at_once_when_stopped(tmp_path):
    link, slept = _link(tmp_path)

    def down() -> None:
        raise errors.TransportError("connection refused")

    with pytest.raises(errors.TransportError):
        link.retrying(down, attempts=3)
    assert len(slept) == 2 and link.stats.transport_errors == 3
    link.stop = threading.Event()
    link.stop.set()
    with pytest.raises(errors.TransportError):
        link.retrying(down, until_stopped=True)
    assert len(slept) == 2, "no wait once the agent is told to stop"


def test_the_tenant_wait_survives_network_blips(monkeypatch):
    answers = iter([httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), {**JOB, "state": "running"},
                    httpx.ConnectError("refused"), {**JOB, "state": "done", "units_done": 1}])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(200, json=answer)

    client = FleetgridClient("http://coordinator.test", "fgt_t")
    client._http = httpx.Client(base_url=client.base_url, transport=httpx.MockTransport(handler))
    monkeypatch.setattr("time.sleep", lambda _s: None)
    retries: list[float] = []
    seen: list[str] = []
    final = client.wait("job-1", poll_s=0.01, on_update=lambda s: seen.append(s.state),
                        on_retry=lambda _exc, wait_s: retries.append(wait_s))
    assert final.state == "done" and seen == ["running", "done"] and len(retries) == 3


def test_the_tenant_wait_still_ends_at_its_timeout_when_the_coordinator_stays_down():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client = FleetgridClient("http://coordinator.test", "fgt_t")
    client._http = httpx.Client(base_url=client.base_url, transport=httpx.MockTransport(handler))
    with pytest.raises(errors.TransportError, match="refused"):
        client.wait("job-1", timeout_s=0.2, poll_s=0.01)


def test_a_429_is_tried_again_no_sooner_than_its_retry_after(tmp_path):
    """A rate-limited car (its address failed authentication too often, an enrollment token's rate) waits and tries
    again rather than giving up: the agent must not stop because someone else flooded the coordinator."""
    from fleetgrid.wire_errors import error_from_response

    answer = httpx.Response(429, headers={"retry-after": "7"}, request=httpx.Request("POST", "http://c/v1/leases"),
                            json={"error": "rate_limited", "message": "too many failed authentications",
                                  "request_id": None})
    refused = error_from_response(answer)
    assert isinstance(refused, errors.RateLimited) and refused.retry_after_s == 7.0
    link, slept = _link(tmp_path, poll_s=0.5)
    calls = []

    def limited() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise refused
        return "ok"

    assert link.retrying(limited, attempts=5) == "ok"
    assert len(slept) == 2 and all(s >= 7.0 for s in slept)
