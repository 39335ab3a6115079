"""OpenAI's text generation over the fleet: ``POST /v1/completions`` and ``POST /v1/chat/completions``, whole or
streamed as server-sent events, on a deployment of the character-level LM a fleet training job made.

Tokens are characters (the model's vocabulary). A chat is rendered as one prompt, ``role: content`` a line, then
``assistant: ``. A car that drives away mid-answer hands the generation to another car, which continues after the
characters the client already has: the stream neither repeats nor loses any.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from fleetgrid.coordinator.app import body_schema
from fleetgrid.coordinator.security import accepts
from fleetgrid.errors import FleetgridError, InvalidInput
from fleetgrid.protocol import API_PREFIX
from fleetgrid.workloads.serving.messages import MAX_NEW_TOKENS, MAX_PROMPT_CHARS, GenerateParams
from fleetgrid.workloads.serving.openai_api import _parse, _unless_gone, bad_param, openai_error

if TYPE_CHECKING:
    from fleetgrid.coordinator.app import Coordinator
    from fleetgrid.workloads.serving.service import ServingService

__all__ = ["ChatRequest", "CompletionRequest", "generation_routes"]


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = 1
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = Field(default=None, max_length=256)

    def params(self, prompt: str, default_max: int) -> GenerateParams:
        if self.n != 1:
            raise bad_param("n", f"n={self.n}: one answer per request is served; send n=1 (or leave it out)")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise bad_param("prompt", f"the prompt has {len(prompt)} characters, over the context length of "
                         f"{MAX_PROMPT_CHARS} (the model reads the last 64)")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 4 or any(not s or len(s) > 64 for s in stop):
            raise bad_param("stop", "stop takes up to 4 non-empty strings of at most 64 characters")
        return GenerateParams(prompt=prompt, max_tokens=self.max_tokens or default_max, temperature=self.temperature,
                              top_p=self.top_p, stop=stop, seed=self.seed)


class CompletionRequest(_Sampling):
    prompt: str | list[str]

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise bad_param("prompt", f"prompt holds {len(self.prompt)} strings; send one")
        return self.prompt[0]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "developer"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)
    name: str | None = Field(default=None, max_length=64)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)

    def text(self) -> str:
        return "".join(f"{m.role}: {m.content}\n" for m in self.messages) + "assistant: "


class _Answer:
    """The OpenAI objects for one completion or chat answer, whole or in chunks."""

    def __init__(self, chat: bool, model: str, prompt: str) -> None:
        self.chat, self.model, self.prompt = chat, model, prompt
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.text = ""

    def _base(self, object_: str) -> dict[str, Any]:
        return {"id": self.id, "object": object_, "created": self.created, "model": self.model}

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": len(self.prompt), "completion_tokens": len(self.text),
                "total_tokens": len(self.prompt) + len(self.text)}

    def whole(self, finish: str | None) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": self.text}, "finish_reason": finish}
            return self._base("chat.completion") | {"choices": [choice], "usage": self.usage()}
        choice = {"index": 0, "text": self.text, "logprobs": None, "finish_reason": finish}
        return self._base("text_completion") | {"choices": [choice], "usage": self.usage()}

    def chunk(self, piece: str, finish: str | None, first: bool = False) -> str:
        self.text += piece
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": piece} if first else (
                {"content": piece} if piece else {})
            body = self._base("chat.completion.chunk") | {
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        else:
            body = self._base("text_completion") | {
                "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n"


def generation_routes(app: FastAPI, coord: Coordinator, service: ServingService) -> None:
    async def generate(request: Request, model: type[CompletionRequest | ChatRequest]) -> Response:
        try:
            who = await service.tenant(request)
            service.limit.admit(who, asyncio.get_running_loop().time())
            body = await _parse(model, request)
            deployment = await service.deployment(who, body.model)
            deployment.require(generates=True)
            default_max = 16 if isinstance(body, CompletionRequest) else MAX_NEW_TOKENS // 8
            limit = body.max_completion_tokens if isinstance(body, ChatRequest) else None
            params = body.params(body.text(), default_max)
            if limit is not None:
                params = params.model_copy(update={"max_tokens": limit})
            answer = _Answer(isinstance(body, ChatRequest), body.model, params.prompt)
            pieces = service.router.stream(
                deployment.job_id, lambda prefix: params.model_copy(update={"prefix": prefix}),
                deployment.piece_validator(params.max_tokens))
            # The first piece before any byte goes out: a refusal is still a proper 4xx/5xx answer.
            first = await _unless_gone(request, pieces.__anext__())
        except FleetgridError as exc:
            return openai_error(exc)
        except StopAsyncIteration:
            return openai_error(InvalidInput("the model produced no answer"))
        if body.stream:
            return StreamingResponse(_events(answer, first, pieces), media_type="text/event-stream",
                                     headers={"cache-control": "no-cache"})
        try:
            finish = first[1]
            answer.text = first[0]
            while finish is None:
                piece, finish = await _unless_gone(request, pieces.__anext__())
                answer.text += piece
        except FleetgridError as exc:
            return openai_error(exc)
        finally:
            await pieces.aclose()
        return JSONResponse(answer.whole(finish))

    @app.post(f"{API_PREFIX}/completions", tags=["openai"], response_class=JSONResponse,
              openapi_extra=body_schema(CompletionRequest))
    @accepts("tenant", errors=(400, 404, 429, 503))
    async def completions(request: Request) -> Response:
        """OpenAI's completions (``stream: true`` for server-sent events) from cars holding the model."""
        return await generate(request, CompletionRequest)

    @app.post(f"{API_PREFIX}/chat/completions", tags=["openai"], response_class=JSONResponse,
              openapi_extra=body_schema(ChatRequest))
    @accepts("tenant", errors=(400, 404, 429, 503))
    async def chat(request: Request) -> Response:
        """OpenAI's chat completions (``stream: true`` for server-sent events) from cars holding the model."""
        return await generate(request, ChatRequest)


async def _events(answer: _Answer, first: tuple[str, str | None],
                  pieces: AsyncGenerator[tuple[str, str | None], None]) -> AsyncIterator[str]:
    """The answer as server-sent events, then ``[DONE]``; an error after the first byte is an error event (the
    status line has gone). A client that disconnects cancels this, and with it the generation on the car."""
    try:
        yield answer.chunk(first[0], first[1], first=True)
        finish = first[1]
        while finish is None:
            piece, finish = await pieces.__anext__()
            yield answer.chunk(piece, finish)
        yield "data: [DONE]\n\n"
    except FleetgridError as exc:
        error = {"message": exc.message, "type": "service_unavailable", "code": exc.code}
        yield f"data: {json.dumps({'error': error})}\n\n"
    finally:
        await pieces.aclose()
