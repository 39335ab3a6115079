"""The serving router on its own event loop: cars are coroutines draining their channels, so every failover and
hedging path runs without a network, and nothing waits on a wall-clock guess."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from fleetgrid.errors import InvalidInput, Overloaded, Unavailable
from fleetgrid.workloads.serving.router import LatencyWindow, RouterConfig, ServingRouter


def run(coro_fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), 30))


def double(answer: Any) -> Any:
    if not isinstance(answer, int):
        raise InvalidInput(f"expected an int, got {answer!r}")
    return answer


async def honest_car(router: ServingRouter, replica_id: str, seen: list[str] | None = None) -> None:
    """Answers every request with twice its payload until its replica is detached."""
    channel = router.channel(replica_id)
    assert channel is not None
    while True:
        taken = await channel.take(8, 5.0)
        for request_id, payload in taken.requests:
            if seen is not None:
                seen.append(request_id)
            router.answer(replica_id, request_id, 2 * payload)
        if taken.closed:
            return


def test_a_request_reaches_a_replica_and_its_answer_comes_back() -> None:
    async def main() -> None:
        router = ServingRouter()
        router.attach("emb", "lease-a", "car-a")
        car = asyncio.create_task(honest_car(router, "lease-a"))
        assert await router.call("emb", 21, double) == 42
        assert await asyncio.gather(*(router.call("emb", i, double) for i in range(10))) == [2 * i for i in range(10)]
        router.detach("lease-a", "test over")
        await car
        assert router.requests == 11 and router.failovers == 0

    run(main)


def test_no_replica_or_all_busy_is_refused_at_once_with_retry_after() -> None:
    async def main() -> None:
        router = ServingRouter(RouterConfig(max_in_flight=1, retry_after_s=2.0))
        with pytest.raises(Overloaded, match="no replica is connected") as refused:
            await router.call("emb", 1, double)
        assert refused.value.retry_after_s == 2.0
        channel = router.attach("emb", "lease-a", "car-a")
        first = asyncio.create_task(router.call("emb", 1, double))
        while not channel.in_flight:
            await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="all 1 replicas are busy"):
            await router.call("emb", 2, double)
        taken = await channel.take(8, 0)
        router.answer("lease-a", taken.requests[0][0], 2)
        assert await first == 2

    run(main)


def test_a_replica_that_leaves_mid_request_hands_it_to_another() -> None:
    async def main() -> None:
        router = ServingRouter()
        a = router.attach("emb", "lease-a", "car-a")
        taken = asyncio.create_task(router.call("emb", 5, double))
        got = await a.take(8, 5.0)  # car A took it ... and drives away without answering
        assert len(got.requests) == 1
        router.attach("emb", "lease-b", "car-b")
        car_b = asyncio.create_task(honest_car(router, "lease-b"))
        router.detach("lease-a", "trip started")
        assert await taken == 10
        assert router.failovers == 1
        router.detach("lease-b", "test over")
        await car_b

    run(main)


def test_failover_waits_for_a_replacement_replica_to_connect() -> None:
    async def main() -> None:
        router = ServingRouter(RouterConfig(failover_wait_s=10))
        a = router.attach("emb", "lease-a", "car-a")
        call = asyncio.create_task(router.call("emb", 3, double))
        await a.take(8, 5.0)
        router.detach("lease-a", "trip started")
        await asyncio.sleep(0)
        assert not call.done()  # no replica left: it waits for the replacement instead of failing
        router.attach("emb", "lease-c", "car-c")
        car_c = asyncio.create_task(honest_car(router, "lease-c"))
        assert await call == 6
        router.detach("lease-c", "test over")
        await car_c

    run(main)


def test_a_garbage_answer_is_retried_elsewhere_and_counted_against_the_car() -> None:
    async def main() -> None:
        router = ServingRouter()
        a = router.attach("emb", "lease-a", "car-a")
        call = asyncio.create_task(router.call("emb", 4, double))
        got = await a.take(8, 5.0)
        router.attach("emb", "lease-b", "car-b")
        car_b = asyncio.create_task(honest_car(router, "lease-b"))
        assert router.answer("lease-a", got.requests[0][0], "not a number")
        assert await call == 8
        assert a.failed == 1 and a.served == 0
        router.detach("lease-b", "test over")
        await car_b

    run(main)


def test_answers_for_requests_a_replica_was_not_sent_change_nothing() -> None:
    async def main() -> None:
        router = ServingRouter()
        a = router.attach("emb", "lease-a", "car-a")
        b = router.attach("emb", "lease-b", "car-b")
        call = asyncio.create_task(router.call("emb", 4, double))
        got = await a.take(8, 5.0)
        request_id = got.requests[0][0]
        assert not router.answer("lease-b", request_id, 999)  # car B was never sent it
        assert not router.answer("lease-zzz", request_id, 999)  # no such replica
        assert not router.answer("lease-a", "r-unknown", 999)
        assert b.failed == 0 and not call.done()
        assert router.answer("lease-a", request_id, 8)
        assert await call == 8
        assert not router.answer("lease-a", request_id, 8)  # answered already

    run(main)


def test_a_request_that_fails_on_max_attempts_cars_gets_503() -> None:
    async def main() -> None:
        router = ServingRouter(RouterConfig(max_attempts=2))
        channels = [router.attach("emb", f"lease-{c}", f"car-{c}") for c in "ab"]
        call = asyncio.create_task(router.call("emb", 4, double))
        for _ in range(2):
            taken = [await ch.take(8, 0) for ch in channels]
            while not any(t.requests for t in taken):
                await asyncio.sleep(0)
                taken = [await ch.take(8, 0) for ch in channels]
            for ch, t in zip(channels, taken, strict=True):
                for request_id, _payload in t.requests:
                    router.answer(ch.replica_id, request_id, error="model crashed")
        with pytest.raises(Unavailable, match="failed on 2 cars.*model crashed"):
            await call

    run(main)


async def _warm_up(router: ServingRouter, n: int) -> None:
    """``n`` requests answered at once by car A, so the deployment has latencies to take a quantile of."""
    car = asyncio.create_task(honest_car(router, "lease-a"))
    for i in range(n):
        await router.call("emb", i, double)
    router.channel("lease-a").close()  # type: ignore[union-attr]
    await car


def test_a_slow_request_is_hedged_to_a_second_car_and_the_loser_is_called_off() -> None:
    async def main() -> None:
        router = ServingRouter(RouterConfig(hedge_min_samples=20))
        router.attach("emb", "lease-a", "car-a")
        await _warm_up(router, 20)
        assert router.hedge_after_s("emb") is not None
        a = router.attach("emb", "lease-a2", "car-a")  # car A again: now it takes requests and sits on them
        call = asyncio.create_task(router.call("emb", 7, double))
        got = await a.take(8, 5.0)
        request_id = got.requests[0][0]
        router.attach("emb", "lease-b", "car-b")
        car_b = asyncio.create_task(honest_car(router, "lease-b"))
        assert await call == 14
        assert router.hedged == 1 and router.hedges_won == 1
        called_off = await a.take(8, 5.0)
        assert called_off.cancelled == [request_id]
        router.detach("lease-b", "test over")
        await car_b

    run(main)


def test_hedging_is_bounded_by_its_budget_and_can_be_turned_off() -> None:
    async def main(config: RouterConfig) -> ServingRouter:
        router = ServingRouter(config)
        router.attach("emb", "lease-a", "car-a")
        await _warm_up(router, 20)
        slow = router.attach("emb", "lease-slow", "car-slow")
        router.attach("emb", "lease-b", "car-b")
        car_b = asyncio.create_task(honest_car(router, "lease-b"))
        outcomes = []
        for i in range(3):  # each lands on the slow car (the least loaded, by id order) and is never answered there
            b = router.channel("lease-b")
            assert b is not None
            b.in_flight.add(f"pin-{i}")  # keep car B looking busier so the slow car gets the first copy
            try:
                outcomes.append(await router.call("emb", i, double))
            except Unavailable:
                outcomes.append("timed out")
            await slow.take(8, 0)
        router.detach("lease-b", "test over")
        await car_b
        router.outcomes = outcomes  # type: ignore[attr-defined]
        return router

    budget = asyncio.run(main(RouterConfig(timeout_s=0.5)))
    # 21 requests earned 1 + 21 x 0.05 tokens (capped at 1.5): one hedge, then the budget is spent.
    assert budget.hedged == 1 and budget.outcomes == [0, "timed out", "timed out"]  # type: ignore[attr-defined]
    off = asyncio.run(main(RouterConfig(timeout_s=0.5, hedge=False)))
    assert off.hedged == 0 and off.outcomes == ["timed out"] * 3  # type: ignore[attr-defined]


def test_a_client_that_goes_away_calls_its_request_off_on_the_car() -> None:
    async def main() -> None:
        router = ServingRouter()
        a = router.attach("emb", "lease-a", "car-a")
        call = asyncio.create_task(router.call("emb", 1, double))
        got = await a.take(8, 5.0)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert (await a.take(8, 5.0)).cancelled == [got.requests[0][0]]
        assert not a.in_flight

    run(main)


def test_latency_window_quantile_is_nearest_rank() -> None:
    window = LatencyWindow(size=100)
    assert window.quantile(0.95) is None
    for ms in range(1, 101):
        window.add(ms / 1000)
    assert window.quantile(0.95) == pytest.approx(0.095)
    assert window.quantile(0.5) == pytest.approx(0.050)


def test_router_config_rejects_values_out_of_range() -> None:
    with pytest.raises(InvalidInput, match="hedge_quantile"):
        RouterConfig(hedge_quantile=1.0)
    with pytest.raises(InvalidInput, match="hedge_ratio"):
        RouterConfig(hedge_ratio=-0.1)
    with pytest.raises(InvalidInput, match="max_in_flight"):
        RouterConfig(max_in_flight=0)


def piece(answer: Any) -> tuple[int, str, str | None]:
    offset, text, finish = answer
    if not isinstance(text, str):
        raise InvalidInput("no text")
    return offset, text, finish


def test_a_stream_continues_on_another_car_after_the_text_already_delivered() -> None:
    async def main() -> None:
        router = ServingRouter()
        a = router.attach("lm", "lease-a", "car-a")
        b = router.attach("lm", "lease-b", "car-b")
        b.last_sent = 10**9  # car A gets the stream first
        got: list[tuple[str, str | None]] = []

        async def client() -> None:
            async for item in router.stream("lm", lambda prefix: {"prompt": "p", "prefix": prefix}, piece):
                got.append(item)

        reading = asyncio.create_task(client())
        [(rid, payload)] = (await a.take(8, 5.0)).requests
        assert payload == {"prompt": "p", "prefix": ""}
        assert router.answer("lease-a", rid, (0, "hello", None))
        assert not router.answer("lease-a", rid, (0, "hello", None))  # the same piece again: dropped
        assert router.answer("lease-a", rid, (5, " wor", None))
        while len(got) < 2:
            await asyncio.sleep(0)
        router.detach("lease-a", "trip started")  # mid-answer
        [(rid_b, payload_b)] = (await b.take(8, 5.0)).requests
        assert rid_b == rid and payload_b == {"prompt": "p", "prefix": "hello wor"}
        assert not router.answer("lease-a", rid, (9, "ld", None))  # car A, gone: its late piece is not taken
        assert not router.answer("lease-b", rid, (3, "lo wor", None))  # overlapping what the client has: dropped
        assert router.answer("lease-b", rid, (9, "ld!", "length"))
        await reading
        assert got == [("hello", None), (" wor", None), ("ld!", "length")]
        assert "".join(t for t, _ in got) == "hello world!"
        assert b.served == 1 and not b.in_flight and router.failovers == 1

    run(main)


def test_a_bad_piece_moves_the_stream_and_a_stream_with_no_car_left_fails() -> None:
    async def main() -> None:
        router = ServingRouter(RouterConfig(failover_wait_s=0.2))
        a = router.attach("lm", "lease-a", "car-a")
        stream = router.stream("lm", lambda prefix: prefix, piece)
        first = asyncio.ensure_future(stream.__anext__())
        [(rid, _)] = (await a.take(8, 5.0)).requests
        assert router.answer("lease-a", rid, (0, 42, None))  # not text: refused, and no other car to go to
        with pytest.raises(Unavailable, match="no replica of deployment 'lm' left"):
            await first
        assert a.failed == 1

    run(main)
