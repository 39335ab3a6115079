"""ASGI middleware in front of the coordinator: every request gets an id, is timed by route template and counted by
error code, and (with JSON logs on) leaves one log line.

The request id is the client's ``X-Request-ID`` when that is sane (1 to 128 of ``A-Z a-z 0-9 . _ : / + = -``), so a
proxy's id carries through; otherwise a fresh one: a random prefix per process (replicas differ) and a counter, a
tenth of the cost of a UUID. It goes back in the response's ``X-Request-ID`` header and in every error body (see
:func:`note_error`). The work per request is a few dictionary look-ups and one histogram observation: the lease
cycle is the coordinator's hot path.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .metrics import UNMATCHED, CoordinatorMetrics

__all__ = ["REQUEST_ID_HEADER", "RequestObserver", "note_error", "note_principal"]

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

REQUEST_ID_HEADER = "x-request-id"
_HEADER = REQUEST_ID_HEADER.encode()
_SANE_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")

access_log = logging.getLogger("fleetgrid.access")


def note_error(scope: MutableMapping[str, Any], code: str) -> str | None:
    """Record the error code of the answer being sent (for the errors counter); returns the request id, which
    every error body carries."""
    state = scope.setdefault("state", {})
    state["error_code"] = code
    return state.get("request_id")


def note_principal(scope: MutableMapping[str, Any], kind: str) -> None:
    """Note that the request's credential was checked and is a ``kind`` ('vehicle', 'tenant', 'operator'), for the
    request log."""
    scope.setdefault("state", {})["principal"] = kind


class RequestObserver:
    """The outermost layer: request id, latency by ``route`` (the matched route's template, or ``unmatched``),
    errors by code (``http_<status>`` when no error body named one), and the JSON request log when
    ``access_log``. The principal kind logged is what the route's credential check noted (:func:`note_principal`);
    a token is never logged."""

    def __init__(self, handler: ASGIApp, metrics: CoordinatorMetrics, *, access_log: bool = False,
                 app: Any = None) -> None:
        self.handler = handler
        """What answers the request (the layers below this one)."""
        self.app = app if app is not None else handler
        """The application at the bottom of the layers (its lifespan and state are what callers look for)."""
        self.metrics = metrics
        self.access_log = access_log
        self._templates: dict[Any, str] | None = None
        self._prefix = os.urandom(6).hex() + "-"
        self._ids = itertools.count(1)

    def _template(self, scope: Scope) -> str:
        """The path template of a matched route that is not a FastAPI route (they name themselves in
        ``scope["route"]``): the OpenAPI document, a mount of static files."""
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return UNMATCHED
        if self._templates is None:
            routes = getattr(scope.get("app"), "routes", ())
            self._templates = {getattr(r, "endpoint", None) or getattr(r, "app", None): r.path for r in routes}
        return self._templates.get(endpoint, UNMATCHED)

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.handler(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _client_id(scope["headers"]) or f"{self._prefix}{next(self._ids):x}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        id_header = (_HEADER, request_id.encode())
        status = 500  # what the client gets if the app raises before it answers (the server sends a 500)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        try:
            await self.handler(scope, receive, send_with_id)
        except Exception:
            status = 500
            state.setdefault("error_code", "internal")
            raise
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            template = route.path if route is not None else self._template(scope)
            self.metrics.observe_request(scope["method"], template, seconds)
            if status >= 400:
                self.metrics.error(state.get("error_code") or f"http_{status}", status)
                if status == 429:
                    self.metrics.refused_for_rate(scope["path"])
            if self.access_log:
                access_log.info("request", extra={"fields": {
                    "request_id": request_id, "method": scope["method"], "route": template, "status": status,
                    "duration_ms": round(seconds * 1000, 3), "principal": state.get("principal"),
                    "error": state.get("error_code") if status >= 400 else None,
                }})


def _client_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == _HEADER:
            return value.decode() if _SANE_ID.fullmatch(value) else None
    return None
