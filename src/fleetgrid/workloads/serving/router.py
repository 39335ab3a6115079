"""The coordinator's side of online serving: sends each request to a car holding the model, re-sends it when that
car leaves, and hedges the slow tail.

Cars only dial out, so a replica is a :class:`ReplicaChannel` the car drains with long-polls (``take``) and answers
through (``answer``). :class:`ServingRouter` keeps the channels per deployment and runs :meth:`ServingRouter.call`
for each client request:

- **placement**: the connected replica with the fewest requests in flight, below ``max_in_flight``; with none
  connected, or all full, the call is refused at once with :class:`~fleetgrid.errors.Overloaded` (429 and
  ``Retry-After``), never queued into a hang;
- **failover**: a replica that leaves (its car drove away, died, or answered garbage) gives its unanswered
  requests to the others, at most ``max_attempts`` cars per request; with no other replica the request waits up to
  ``failover_wait_s`` for one to connect;
- **hedging** (Dean and Barroso, "The Tail at Scale"): a request still unanswered after the deployment's recent
  ``hedge_quantile`` latency goes to a second replica as well; the first valid answer wins and the other copy is
  cancelled on its car. A token bucket bounds hedges to ``hedge_ratio`` of requests.

Everything here runs on the event loop; nothing blocks. The router knows no model: ``validate`` (per call) turns
a car's raw answer into the client's result or raises :class:`~fleetgrid.errors.InvalidInput`, which counts as that
car failing the request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from fleetgrid.errors import InvalidInput, Overloaded, Unavailable

__all__ = ["LatencyWindow", "ReplicaChannel", "RouterConfig", "ServingRouter", "Taken", "nearest_rank"]

log = logging.getLogger("fleetgrid.serving")


@dataclass(frozen=True, kw_only=True)
class RouterConfig:
    max_in_flight: int = 32
    """Requests one replica may hold unanswered; a call finding every replica full is refused with 429."""
    max_attempts: int = 3
    """Cars one request may be sent to (hedges included) before it fails with 503."""
    failover_wait_s: float = 5.0
    """How long a request whose replica left waits for another to connect."""
    timeout_s: float = 60.0
    """A request with no valid answer after this long fails with 503."""
    hedge: bool = True
    hedge_quantile: float = 0.95
    """A request unanswered after this quantile of the deployment's recent latencies is also sent elsewhere."""
    hedge_ratio: float = 0.05
    """At most this share of requests is hedged (a token bucket; the extra work is bounded by it)."""
    hedge_min_samples: int = 20
    """No hedging until the deployment has this many latencies to take a quantile of."""
    retry_after_s: float = 1.0
    """What a refused call's ``Retry-After`` says."""

    def __post_init__(self) -> None:
        if self.max_in_flight < 1 or self.max_attempts < 1 or self.hedge_min_samples < 1:
            raise InvalidInput(f"max_in_flight, max_attempts and hedge_min_samples must be >= 1, got {self}")
        if not 0.5 <= self.hedge_quantile < 1:
            raise InvalidInput(f"hedge_quantile must be in [0.5, 1), got {self.hedge_quantile}")
        if not 0 <= self.hedge_ratio <= 1:
            raise InvalidInput(f"hedge_ratio must be in [0, 1], got {self.hedge_ratio}")
        if min(self.failover_wait_s, self.timeout_s, self.retry_after_s) <= 0:
            raise InvalidInput(f"failover_wait_s, timeout_s and retry_after_s must be > 0, got {self}")


class LatencyWindow:
    """The last ``size`` latencies of a deployment (seconds), for the hedging threshold."""

    def __init__(self, size: int = 512) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._values)

    def add(self, seconds: float) -> None:
        self._values.append(seconds)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (nearest rank), or None with no samples."""
        return nearest_rank(self._values, q)

    def values(self) -> list[float]:
        return list(self._values)


def nearest_rank(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile of ``values`` by nearest rank (one of the values), or None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class _Request:
    request_id: str
    deployment: str
    payload: Any
    validate: Callable[[Any], Any]
    result: asyncio.Future[Any]
    tried: list[str] = field(default_factory=list)
    """Replicas this request was sent to, in order."""
    live: dict[str, float] = field(default_factory=dict)
    """Replica id -> loop time sent, for the copies not yet answered or lost."""
    last_error: str = ""
    pieces: asyncio.Queue[Any] | None = None
    """A streamed request: its answer's pieces, in order, as they arrive (then None, or the error)."""
    tokens: int = 0
    """What answering it is worth, in tokens (metered to the car whose answer wins)."""
    make_payload: Callable[[str], Any] | None = None
    """A streamed request: the payload that continues after the text already delivered (for failover)."""
    delivered: str = ""


@dataclass(frozen=True)
class Taken:
    """What one long-poll of a replica hands its car: requests to run and request ids to stop."""

    requests: list[tuple[str, Any]]
    cancelled: list[str]
    closed: bool = False
    """The replica was detached: the car should stop serving this lease."""


class ReplicaChannel:
    """One car's replica of one deployment: what it has to do, and what it has in flight."""

    def __init__(self, replica_id: str, deployment: str, vehicle_id: str) -> None:
        self.replica_id, self.deployment, self.vehicle_id = replica_id, deployment, vehicle_id
        self.queue: deque[tuple[str, Any]] = deque()
        self.cancelled: list[str] = []
        self.in_flight: set[str] = set()
        self.closed = False
        self.served = 0
        self.failed = 0
        self.last_sent = -1
        """The router's send counter when this replica last got a request: ties go to the one idle longest."""
        self._wake = asyncio.Event()

    def push(self, request_id: str, payload: Any) -> None:
        self.queue.append((request_id, payload))
        self.in_flight.add(request_id)
        self._wake.set()

    def cancel(self, request_id: str) -> None:
        """Call a copy off: drop it if the car has not taken it yet, else tell the car at its next poll. A copy the
        car took counts as in flight until the car has been told (it is still working on it), so a stalled car
        does not look idle."""
        before = len(self.queue)
        self.queue = deque(item for item in self.queue if item[0] != request_id)
        if len(self.queue) < before:
            self.in_flight.discard(request_id)
        elif request_id in self.in_flight:
            self.cancelled.append(request_id)
            self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def take(self, max_requests: int, wait_s: float) -> Taken:
        """Up to ``max_requests`` queued requests and the ids called off since the last take; waits up to
        ``wait_s`` for anything to arrive."""
        if not (self.queue or self.cancelled or self.closed) and wait_s > 0:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait_s)
            except TimeoutError:
                pass
        requests = [self.queue.popleft() for _ in range(min(max_requests, len(self.queue)))]
        cancelled, self.cancelled = self.cancelled, []
        self.in_flight.difference_update(cancelled)
        if not self.queue and not self.cancelled:
            self._wake.clear()
        return Taken(requests, cancelled, closed=self.closed)


class ServingRouter:
    def __init__(self, config: RouterConfig | None = None) -> None:
        self.config = config or RouterConfig()
        self._replicas: dict[str, ReplicaChannel] = {}
        self._by_deployment: dict[str, dict[str, ReplicaChannel]] = {}
        self._requests: dict[str, _Request] = {}
        self._latency: dict[str, LatencyWindow] = {}
        self._hedge_tokens: dict[str, float] = {}
        self._attached: dict[str, asyncio.Event] = {}
        self._ids = itertools.count()
        self._sends = itertools.count()
        self.hedged = 0
        self.hedges_won = 0
        self.failovers = 0
        self.requests = 0
        self.counts: dict[str, dict[str, int]] = {}
        """Per deployment: requests, hedged, hedges_won, failovers."""
        self.served_by_gone: dict[str, int] = {}
        self.on_served: Callable[[str, int, int], None] = lambda replica_id, requests, tokens: None
        """Told (replica, requests answered, tokens) as answers are accepted: the usage ledger's counts."""
        """Requests answered by replicas since detached, per deployment."""

    # --- replicas ------------------------------------------------------------------------------------------------

    def attach(self, deployment: str, replica_id: str, vehicle_id: str) -> ReplicaChannel:
        """The channel of ``replica_id`` (a resident lease), made on first use."""
        channel = self._replicas.get(replica_id)
        if channel is not None and not channel.closed:
            return channel
        channel = ReplicaChannel(replica_id, deployment, vehicle_id)
        self._replicas[replica_id] = channel
        self._by_deployment.setdefault(deployment, {})[replica_id] = channel
        self._attached.setdefault(deployment, asyncio.Event()).set()
        return channel

    def channel(self, replica_id: str) -> ReplicaChannel | None:
        channel = self._replicas.get(replica_id)
        return None if channel is None or channel.closed else channel

    def all_replicas(self) -> list[ReplicaChannel]:
        return list(self._replicas.values())

    def replicas(self, deployment: str) -> list[ReplicaChannel]:
        return list(self._by_deployment.get(deployment, {}).values())

    def detach(self, replica_id: str, why: str) -> None:
        """The replica is gone (its lease closed): every request it held unanswered goes to another replica."""
        channel = self._replicas.pop(replica_id, None)
        if channel is None:
            return
        channel.close()
        self.served_by_gone[channel.deployment] = self.served_by_gone.get(channel.deployment, 0) + channel.served
        pool = self._by_deployment.get(channel.deployment, {})
        pool.pop(replica_id, None)
        if not pool:
            self._attached.get(channel.deployment, asyncio.Event()).clear()
        for request_id in list(channel.in_flight):
            request = self._requests.get(request_id)
            if request is None:
                continue
            request.live.pop(replica_id, None)
            request.last_error = f"car {channel.vehicle_id} left ({why})"
            if not request.live:
                self.failovers += 1
                self._count(channel.deployment, "failovers")
                asyncio.get_running_loop().create_task(self._failover(request))

    # --- one request ---------------------------------------------------------------------------------------------

    async def call(self, deployment: str, payload: Any, validate: Callable[[Any], Any], *, tokens: int = 0) -> Any:
        """Send ``payload`` to a replica of ``deployment`` and return ``validate(answer)`` of the first valid
        answer. Raises Overloaded (none can take it now), Unavailable (no valid answer in time)."""
        loop = asyncio.get_running_loop()
        first = self._pick(deployment, exclude=())
        if first is None:
            self._refuse(deployment)
        assert first is not None
        self.requests += 1
        self._count(deployment, "requests")
        request = _Request(f"r{next(self._ids)}", deployment, payload, validate, loop.create_future(), tokens=tokens)
        self._requests[request.request_id] = request
        self._earn_hedge(deployment)
        self._send(request, first)
        hedge = loop.create_task(self._hedge_later(request)) if self.config.hedge else None
        try:
            return await asyncio.wait_for(asyncio.shield(request.result), self.config.timeout_s)
        except TimeoutError:
            why = f"; {request.last_error}" if request.last_error else ""
            raise Unavailable(f"no valid answer from deployment {deployment!r} within {self.config.timeout_s:g} s "
                              f"({len(request.tried)} car(s) tried{why})") from None
        finally:
            if hedge is not None:
                hedge.cancel()
            self._forget(request)

    def _refuse(self, deployment: str) -> NoReturn:
        self._count(deployment, "refused")  # a sign the deployment is short of cars (see autoscale.py)
        pool = self.replicas(deployment)
        state = "no replica is connected" if not pool else f"all {len(pool)} replicas are busy"
        raise Overloaded(f"deployment {deployment!r} cannot take a request now: {state}; retry after "
                         f"{self.config.retry_after_s:g} s", retry_after_s=self.config.retry_after_s)

    def _forget(self, request: _Request) -> None:
        """Answered, failed, timed out, or the client went away: call every copy off."""
        self._requests.pop(request.request_id, None)
        for replica_id in list(request.live):
            channel = self._replicas.get(replica_id)
            if channel is not None:
                channel.cancel(request.request_id)
        request.live.clear()
        if not request.result.done():
            request.result.cancel()

    def answer(self, replica_id: str, request_id: str, answer: Any = None, error: str | None = None) -> bool:
        """A car's answer to one request. False (and nothing changes) when the request was not sent to this
        replica or is already answered; an invalid answer or an error sends the request elsewhere."""
        channel = self._replicas.get(replica_id)
        request = self._requests.get(request_id)
        if channel is None or request is None or replica_id not in request.live:
            return False
        if request.pieces is not None and error is None:
            return self._piece(channel, request, answer)
        channel.in_flight.discard(request_id)
        sent = request.live.pop(replica_id)
        if error is None:
            try:
                result = request.validate(answer)
            except InvalidInput as exc:
                error = f"invalid answer: {exc.message}"
            else:
                channel.served += 1
                self.on_served(replica_id, 1, request.tokens)
                self._latency.setdefault(request.deployment, LatencyWindow()).add(
                    asyncio.get_running_loop().time() - sent)
                if request.tried and request.tried[0] != replica_id:
                    self.hedges_won += 1
                    self._count(request.deployment, "hedges_won")
                if not request.result.done():
                    request.result.set_result(result)
                return True
        channel.failed += 1
        request.last_error = f"car {channel.vehicle_id}: {error}"
        log.info("request %s failed on replica %s: %s", request_id, replica_id, error)
        if not request.live:
            asyncio.get_running_loop().create_task(self._failover(request))
        return True

    def _piece(self, channel: ReplicaChannel, request: _Request, answer: Any) -> bool:
        """The next piece of a streamed answer: delivered if it continues exactly where the client is (a piece
        from before a failover, or repeated, is dropped); the last piece ends the request."""
        assert request.pieces is not None
        try:
            offset, text, finish = request.validate(answer)
        except InvalidInput as exc:
            channel.in_flight.discard(request.request_id)
            request.live.pop(channel.replica_id, None)
            channel.failed += 1
            request.last_error = f"car {channel.vehicle_id}: invalid answer: {exc.message}"
            if not request.live:
                asyncio.get_running_loop().create_task(self._failover(request))
            return True
        if offset != len(request.delivered):
            return False
        request.delivered += text
        request.pieces.put_nowait((text, finish))
        self.on_served(channel.replica_id, int(finish is not None), len(text))
        if finish is not None:
            channel.in_flight.discard(request.request_id)
            request.live.pop(channel.replica_id, None)
            channel.served += 1
            if not request.result.done():
                request.result.set_result(request.delivered)
        return True

    def _fail(self, request: _Request, exc: Exception) -> None:
        if not request.result.done():
            request.result.set_exception(exc)
            request.result.exception()  # retrieved here: a stream reads the error from its queue instead
        if request.pieces is not None:
            request.pieces.put_nowait(exc)

    async def stream(self, deployment: str, make_payload: Callable[[str], Any],
                     validate: Callable[[Any], tuple[int, str, str | None]]
                     ) -> AsyncGenerator[tuple[str, str | None], None]:
        """Send a streamed request (``make_payload('')``) and yield its answer's pieces ``(text, finish_reason)``
        as they arrive; the last has a finish reason. A car that leaves mid-answer hands the request to another,
        told to continue after the text already delivered (``make_payload(delivered)``): no piece is lost or sent
        twice. Streams are not hedged. Raises as :meth:`call` does."""
        loop = asyncio.get_running_loop()
        first = self._pick(deployment, exclude=())
        if first is None:
            self._refuse(deployment)
        self.requests += 1
        self._count(deployment, "requests")
        request = _Request(f"r{next(self._ids)}", deployment, make_payload(""), validate, loop.create_future(),
                           pieces=asyncio.Queue(), make_payload=make_payload)
        self._requests[request.request_id] = request
        assert first is not None and request.pieces is not None
        self._send(request, first)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(request.pieces.get(), self.config.timeout_s)
                except TimeoutError:
                    raise Unavailable(f"deployment {deployment!r} sent nothing for {self.config.timeout_s:g} s "
                                      f"({len(request.tried)} car(s) tried)") from None
                if isinstance(item, Exception):
                    raise item
                yield item
                if item[1] is not None:
                    return
        finally:
            self._forget(request)

    def _count(self, deployment: str, what: str) -> None:
        counts = self.counts.setdefault(deployment, {})
        counts[what] = counts.get(what, 0) + 1

    # --- placement, failover and hedging -------------------------------------------------------------------------

    def _pick(self, deployment: str, exclude: tuple[str, ...] | list[str], *, over_cap: bool = False
              ) -> ReplicaChannel | None:
        candidates = [c for c in self.replicas(deployment) if c.replica_id not in exclude and not c.closed
                      and (over_cap or len(c.in_flight) < self.config.max_in_flight)]
        return min(candidates, key=lambda c: (len(c.in_flight), c.last_sent), default=None)

    def _send(self, request: _Request, channel: ReplicaChannel) -> None:
        request.tried.append(channel.replica_id)
        request.live[channel.replica_id] = asyncio.get_running_loop().time()
        channel.last_sent = next(self._sends)
        channel.push(request.request_id, request.payload)

    async def _failover(self, request: _Request) -> None:
        """Send ``request`` to a replica it has not tried (a car that failed it would fail it again; one that left
        is gone), waiting for one to connect if none is; fail it once ``max_attempts`` cars have had it."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.config.failover_wait_s
        while not request.result.done() and request.request_id in self._requests:
            if len(request.tried) >= self.config.max_attempts:
                self._fail(request, Unavailable(
                    f"request failed on {len(request.tried)} cars of deployment {request.deployment!r}; last: "
                    f"{request.last_error}"))
                return
            channel = self._pick(request.deployment, request.tried, over_cap=True)
            if channel is not None:
                if request.make_payload is not None:  # a stream continues after what the client already has
                    request.payload = request.make_payload(request.delivered)
                self._send(request, channel)
                return
            left = give_up - loop.time()
            if left <= 0:
                self._fail(request, Unavailable(
                    f"no replica of deployment {request.deployment!r} left to answer ({request.last_error})"))
                return
            attached = self._attached.setdefault(request.deployment, asyncio.Event())
            attached.clear()
            try:
                await asyncio.wait_for(attached.wait(), left)
            except TimeoutError:
                pass

    def _earn_hedge(self, deployment: str) -> None:
        tokens = self._hedge_tokens.get(deployment, 1.0) + self.config.hedge_ratio
        self._hedge_tokens[deployment] = min(tokens, 1.0 + 10 * self.config.hedge_ratio)

    def latency_s(self, deployment: str, q: float) -> float | None:
        """The ``q`` quantile of the deployment's recent latencies on this replica (seconds); None before any."""
        window = self._latency.get(deployment)
        return window.quantile(q) if window is not None else None

    def recent_latencies(self, deployment: str) -> list[float]:
        """The deployment's last answered requests' latencies (seconds), as the window holds them."""
        window = self._latency.get(deployment)
        return window.values() if window is not None else []

    def hedge_after_s(self, deployment: str) -> float | None:
        """When a request of ``deployment`` is hedged now (seconds after it was sent), or None: too few samples."""
        window = self._latency.get(deployment)
        if window is None or len(window) < self.config.hedge_min_samples:
            return None
        return window.quantile(self.config.hedge_quantile)

    async def _hedge_later(self, request: _Request) -> None:
        delay = self.hedge_after_s(request.deployment)
        if delay is None:
            return
        await asyncio.sleep(delay)
        if request.result.done() or len(request.live) != 1 or len(request.tried) >= self.config.max_attempts:
            return
        if self._hedge_tokens.get(request.deployment, 0.0) < 1.0:
            return
        channel = self._pick(request.deployment, request.tried)
        if channel is None:
            return
        self._hedge_tokens[request.deployment] -= 1.0
        self.hedged += 1
        self._count(request.deployment, "hedged")
        self._send(request, channel)
