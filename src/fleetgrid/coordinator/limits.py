"""ASGI middleware that refuses request bodies over the configured size before the app sees them."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from .observe import note_error

__all__ = ["BodyLimit"]

Scope = dict[str, Any]
Message = dict[str, Any]


class BodyLimit:
    """JSON bodies are read whole (they are small) and refused past ``max_json`` bytes; artifact uploads stream
    through untouched, since their route counts bytes while hashing and refuses past ``max_artifact``."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, max_json: int, max_artifact: int,
                 artifact_prefix: str = "/v1/artifacts/") -> None:
        self.app = app
        self.max_json = max_json
        self.max_artifact = max_artifact
        self.artifact_prefix = artifact_prefix

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        streaming = scope["path"].startswith(self.artifact_prefix)
        limit = self.max_artifact if streaming else self.max_json
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, send, limit)
            return
        if streaming:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await self._refuse(scope, send, limit)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: Scope, send: Callable[[Message], Awaitable[None]], limit: int) -> None:
        body = json.dumps({
            "error": "payload_too_large",
            "message": f"request body exceeds the {limit}-byte limit for this route; send a smaller body"
            + (" (large inputs go to PUT /v1/artifacts/{sha256})" if limit < 1 << 24 else ""),
            "request_id": note_error(scope, "payload_too_large"),
        }).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
