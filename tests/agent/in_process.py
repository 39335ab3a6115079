"""The real coordinator app, run in this process for the agent's tests.

:func:`in_process` runs the app, lifespan and all, on an event loop in a background thread and hands out an httpx
transport into it, so the agent's own clients talk to it without a socket. :func:`on_socket` serves the same app
with uvicorn on 127.0.0.1, for the tests that need a real connection: a body that arrives in pieces, or one that is
cut off. Either way a :class:`WireTap` records every exchange, so a test asserts on what the car really sent and
got; a test that needs the coordinator to misbehave passes ``wrap``, a thin middleware of its own between the tap
and the app. The coordinator's clock is a :class:`ManualClock` that only the test moves: leases expire when the
test says so, never because the machine was slow.
"""

from __future__ import annotations

import contextlib
import fnmatch
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pydantic
import uvicorn
from anyio.from_thread import BlockingPortal, start_blocking_portal
from harness import ENROLL, OPERATOR, TENANT
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetgrid.agent.transport import CoordinatorClient
from fleetgrid.client import FleetgridClient
from fleetgrid.clock import Clock, ManualClock
from fleetgrid.coordinator.app import Coordinator, create_app
from fleetgrid.coordinator.config import CoordinatorConfig
from fleetgrid.coordinator.server import bind
from fleetgrid.protocol import EnrollRequest, LeaseAck, LeaseGrant

__all__ = ["Exchange", "LiveCoordinator", "PortalTransport", "WireTap", "in_process", "on_socket"]

T0 = 1_700_000_000.0
_M = TypeVar("_M", bound=pydantic.BaseModel)


@dataclass(frozen=True)
class Exchange:
    """One request to the app and its answer, both bodies whole."""

    method: str
    path: str
    headers: dict[str, str]
    """The request's headers, names in lower case."""
    body: bytes
    status: int
    answer: bytes

    def sent(self, model: type[_M]) -> _M:
        return model.model_validate_json(self.body)

    def got(self, model: type[_M]) -> _M:
        return model.model_validate_json(self.answer)


class WireTap:
    """ASGI middleware that records every HTTP exchange with the app it wraps, and every exception that escaped it
    (the app answers a client's mistakes itself; anything escaping is a bug, which a test's teardown reports)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.errors: list[BaseException] = []
        self._exchanges: list[Exchange] = []
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body, answer, status = bytearray(), bytearray(), [0]

        async def tapped_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
            return message

        async def tapped_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body":
                answer.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, tapped_receive, tapped_send)
        except Exception as exc:
            self.errors.append(exc)
            raise
        finally:
            headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
            with self._lock:
                self._exchanges.append(
                    Exchange(scope["method"], scope["path"], headers, bytes(body), status[0], bytes(answer)))

    def calls(self, route: str) -> list[Exchange]:
        """The exchanges so far, in the order they ended, whose ``"METHOD /path"`` matches ``route``: a glob such as
        ``"POST /v1/leases/*/renew"``."""
        with self._lock:
            exchanges = list(self._exchanges)
        return [x for x in exchanges if fnmatch.fnmatchcase(f"{x.method} {x.path}", route)]

    def grants(self) -> list[LeaseGrant]:
        """Every inference lease the car was granted, asked for on its own or along with a completion."""
        out: list[LeaseGrant] = []
        for x in self.calls("POST /v1/leases*"):
            if x.status != 200:
                continue
            if x.path == "/v1/leases":
                out.append(x.got(LeaseGrant))
            elif x.path.endswith("/complete") and (ack := x.got(LeaseAck)).next_lease is not None:
                assert isinstance(ack.next_lease, LeaseGrant)
                out.append(ack.next_lease)
        return out


class PortalTransport(httpx.BaseTransport):
    """A synchronous httpx transport into an ASGI app whose event loop runs in another thread.

    httpx's ASGITransport is async only and the agent's client is synchronous: each request is handed to the app's
    loop through an anyio blocking portal, so requests from the agent's threads run there side by side, next to the
    app's own tasks (the sweeper, long-poll wake-ups), as under uvicorn. An answer is read whole before it returns:
    its body reaches the client as one chunk, never cut off (tests of cut bodies use :func:`on_socket`).
    """

    def __init__(self, app: ASGIApp, portal: BlockingPortal) -> None:
        self._asgi = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self._portal = portal

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._portal.call(self._exchange, request)

    async def _exchange(self, request: httpx.Request) -> httpx.Response:
        replayable = httpx.Request(request.method, request.url, headers=request.headers, content=request.read(),
                                   extensions=request.extensions)
        response = await self._asgi.handle_async_request(replayable)
        body = b"".join([chunk async for chunk in response.aiter_raw()])
        return httpx.Response(response.status_code, headers=response.headers, stream=httpx.ByteStream(body),
                              extensions=response.extensions)


class LiveCoordinator:
    """One real coordinator: SQLite and artifacts in ``data_dir``, the tokens of :mod:`harness` (tenant 'acme'),
    lease deadlines on :attr:`clock` (a :class:`ManualClock` unless given). ``settings`` are further
    :class:`CoordinatorConfig` fields."""

    def __init__(self, data_dir: Path, *, clock: Clock | None = None,
                 wrap: Callable[[ASGIApp], ASGIApp] | None = None, **settings: Any) -> None:
        defaults: dict[str, Any] = {"enroll_token": ENROLL, "operator_token": OPERATOR,
                                    "tenant_tokens": {"acme": TENANT}}
        if clock is None:
            # A manual clock stands still while a car computes: all of a lease's compute time is "slack", and no
            # lease can expire while the (wall-clock) app lags behind, so admission need not hold leases back.
            clock = ManualClock(T0)
            defaults |= {"compute_slack_s": 3600.0, "admission_max_delay_s": 3600.0}
        self.clock = clock
        config = CoordinatorConfig(data_dir=data_dir, **(defaults | settings))
        self.coordinator = Coordinator(config, self.clock)
        app = create_app(coordinator=self.coordinator)
        self.fastapi = app.app
        self.tap = WireTap(wrap(app) if wrap is not None else app)
        self.url = "http://coordinator.test"
        self.transport: httpx.BaseTransport | None = None
        """Into the app in this process (:func:`in_process`); None when it listens on :attr:`url`."""

    def car(self, credential: str | None = None, **options: Any) -> CoordinatorClient:
        """The agent's client for this coordinator; it signs with the coordinator's (manual) clock's time, as a real
        car signs with a wall clock that agrees with the coordinator's."""
        options.setdefault("now", self.clock.now)
        return CoordinatorClient(self.url, credential, transport=self.transport, **options)

    def tenant(self) -> FleetgridClient:
        return FleetgridClient(self.url, TENANT, transport=self.transport)

    def enroll(self, name: str = "car") -> str:
        """Enroll a car through the API; returns its credential."""
        with self.car() as car:
            return car.enroll(EnrollRequest(enrollment_token=ENROLL, name=name, hardware="ai4")).credential

    def check_clean(self) -> None:
        assert not self.tap.errors, f"the coordinator raised: {self.tap.errors!r}"


@contextlib.contextmanager
def in_process(data_dir: Path, *, clock: Clock | None = None, wrap: Callable[[ASGIApp], ASGIApp] | None = None,
               **settings: Any) -> Iterator[LiveCoordinator]:
    """The coordinator running in this process, inside its lifespan, reached through ``.transport``."""
    live = LiveCoordinator(data_dir, clock=clock, wrap=wrap, **settings)
    try:
        with start_blocking_portal() as portal, \
                portal.wrap_async_context_manager(live.fastapi.router.lifespan_context(live.fastapi)):
            live.transport = PortalTransport(live.tap, portal)
            yield live
    finally:
        live.coordinator.store.close()
    live.check_clean()


class _Server(uvicorn.Server):
    """uvicorn, saying when its socket listens and the app's start-up has run (or failed)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()


@contextlib.contextmanager
def on_socket(data_dir: Path, *, clock: Clock | None = None, wrap: Callable[[ASGIApp], ASGIApp] | None = None,
              **settings: Any) -> Iterator[LiveCoordinator]:
    """The coordinator served by uvicorn on 127.0.0.1 from a thread of this process, at ``.url``."""
    live = LiveCoordinator(data_dir, clock=clock, wrap=wrap, **settings)
    sock = bind("127.0.0.1", 0)
    server = _Server(uvicorn.Config(live.tap, http="h11", lifespan="on", log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        assert server.ready.wait(60) and server.started, "uvicorn did not start"
        live.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        yield live
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        live.coordinator.store.close()
    live.check_clean()
