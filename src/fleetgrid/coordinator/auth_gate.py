"""Failed authentication, limited per client address: every 401 the coordinator answers, whichever route and
credential kind, spends from the address's bucket; once it is empty the address gets 429 with ``Retry-After``
before any credential is looked at, until the bucket refills.

An ASGI layer rather than a check in each credential dependency, so no route (tenant, operator, owner, car,
enrollment) can forget it. The address is the TCP peer's: behind a reverse proxy every client shares the proxy's,
so put the limit in the proxy there (or raise this one). Honest clients that share an address (a NAT) share its
bucket, which is why only failures spend from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..errors import RateLimited
from .observe import note_error
from .ratelimit import RateLimiter

__all__ = ["AuthFailureGate", "client_address"]

Scope = MutableMapping[str, Any]
Message = dict[str, Any]


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class AuthFailureGate:
    def __init__(self, app: Callable[..., Awaitable[None]], limiter: RateLimiter) -> None:
        self.app, self.limiter = app, limiter

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        address = client_address(scope)
        try:
            self.limiter.check(address)
        except RateLimited as exc:
            await _refuse(scope, send, exc)
            return

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                self.limiter.spend(address)
            await send(message)

        await self.app(scope, receive, watch)


async def _refuse(scope: Scope, send: Callable[[Message], Awaitable[None]], exc: RateLimited) -> None:
    body = json.dumps({
        "error": exc.code,
        "message": f"{exc.message} (failed authentications from {client_address(scope)})",
        "request_id": note_error(scope, exc.code),
    }).encode()
    await send({"type": "http.response.start", "status": exc.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(max(1, math.ceil(exc.retry_after_s))).encode())]})
    await send({"type": "http.response.body", "body": body})
