"""The OpenAI-compatible API over the fleet: ``POST /v1/embeddings``, authenticated by a tenant token as the API
key, with the deployment's name as ``model``.

Bodies and errors follow OpenAI's: an error is ``{"error": {"message", "type", "param", "code"}}`` with a 4xx
status that names the problem, so the official ``openai`` client raises its usual exceptions. A client that goes
away before its answer calls the request off on the car.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetgrid.coordinator.app import body_schema
from fleetgrid.coordinator.security import accepts
from fleetgrid.errors import FleetgridError, InvalidInput, NotFound, Overloaded
from fleetgrid.protocol import API_PREFIX
from fleetgrid.workloads.serving.messages import MAX_INPUT_CHARS, MAX_INPUTS

if TYPE_CHECKING:
    from fleetgrid.coordinator.app import Coordinator
    from fleetgrid.workloads.serving.service import ServingService

__all__ = ["EmbeddingsRequest", "bad_param", "openai_error", "openai_routes"]

T = TypeVar("T")


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings body; ``input`` is one text or a list of them (token arrays are not accepted)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=200)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)

    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else self.input
        if not texts:
            raise bad_param("input", "input is an empty list; send 1 to "
                         f"{MAX_INPUTS} non-empty strings")
        if not all(isinstance(t, str) for t in texts):
            raise bad_param("input", "input holds token ids; this API takes text: send 1 to "
                         f"{MAX_INPUTS} strings")
        if len(texts) > MAX_INPUTS:
            raise bad_param("input", f"input holds {len(texts)} strings; at most {MAX_INPUTS} per request")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise bad_param(f"input[{i}]", f"input[{i}] is empty; every input must be a non-empty string")
            if len(text) > MAX_INPUT_CHARS:
                raise bad_param(f"input[{i}]", f"input[{i}] has {len(text)} characters; at most {MAX_INPUT_CHARS}")
        return texts  # type: ignore[return-value]


def bad_param(param: str, message: str) -> InvalidInput:
    """A bad value of one body field: an InvalidInput that names it as OpenAI's ``param``."""
    exc = InvalidInput(message)
    exc.param = param  # type: ignore[attr-defined]
    return exc


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_exceeded",
          503: "service_unavailable"}


def openai_error(exc: FleetgridError) -> JSONResponse:
    """An errors.py error as OpenAI's error object (with ``Retry-After`` on a 429)."""
    code = "model_not_found" if isinstance(exc, NotFound) else exc.code
    body = {"error": {"message": exc.message, "type": _TYPES.get(exc.status, "api_error"),
                      "param": getattr(exc, "param", None), "code": code}}
    response = JSONResponse(body, status_code=exc.status)
    if isinstance(exc, Overloaded):
        response.headers["retry-after"] = str(max(1, math.ceil(exc.retry_after_s)))
    return response


async def _parse(model: type[BaseModel], request: Request) -> Any:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except ValueError:
        raise InvalidInput("the body is not JSON; send a JSON object such as "
                           '{"model": "minilm-l6-v2", "input": "some text"}') from None
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "extra_forbidden":
            raise bad_param(param, f"unknown parameter {param!r}; accepted: {sorted(model.model_fields)}") from None
        raise bad_param(param, f"{param}: {first['msg']}") from None


async def _unless_gone(request: Request, work: Awaitable[T]) -> T:
    """``await work``, cancelled if the client disconnects first (its copies on cars are then called off)."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            raise InvalidInput("the client disconnected")  # nobody reads this answer
        return task.result()
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()


def openai_routes(app: FastAPI, coord: Coordinator, service: ServingService) -> None:
    async def catalog(who: str) -> list[dict[str, Any]]:
        from fleetgrid.models.registry import list_models

        deployed = await service.deployments(who, fresh=True)
        out = [{"id": d.name, "object": "model", "created": d.created, "owned_by": who, "deployed": True,
                "model": d.model, "replicas": d.replicas} for d in deployed.values()]
        out += [{"id": m.name, "object": "model", "created": 0, "owned_by": "fleetgrid", "deployed": False,
                 "description": m.description, "input": m.input_kind, "item_shape": m.item_shape,
                 "output_shape": m.output_shape, "needs_model_file": m.needs_model_file}
                for m in list_models() if m.name not in deployed]
        return out

    @app.get(f"{API_PREFIX}/models", tags=["openai"])
    @accepts("tenant")
    async def models(request: Request) -> Response:
        """OpenAI's model list: your deployments (``deployed: true``, callable now) and the registered models
        jobs can name."""
        try:
            return JSONResponse({"object": "list", "data": await catalog(await service.tenant(request))})
        except FleetgridError as exc:
            return openai_error(exc)

    @app.get(f"{API_PREFIX}/models/{{model}}", tags=["openai"])
    @accepts("tenant")
    async def model(model: str, request: Request) -> Response:
        try:
            found = [m for m in await catalog(await service.tenant(request)) if m["id"] == model]
            if not found:
                raise NotFound(f"model {model!r} is neither deployed nor registered; GET /v1/models lists them")
            return JSONResponse(found[0])
        except FleetgridError as exc:
            return openai_error(exc)

    @app.post(f"{API_PREFIX}/embeddings", tags=["openai"], response_class=JSONResponse,
              openapi_extra=body_schema(EmbeddingsRequest))
    @accepts("tenant", errors=(400, 404, 429, 503))
    async def embeddings(request: Request) -> Response:
        """OpenAI's embeddings: each input's vector from a car holding the deployed model."""
        try:
            who = await service.tenant(request)
            service.limit.admit(who, asyncio.get_running_loop().time())
            body: EmbeddingsRequest = await _parse(EmbeddingsRequest, request)
            texts = body.texts()
            deployment = await service.deployment(who, body.model)
            deployment.require(generates=False)
            if body.dimensions is not None and body.dimensions != deployment.dim:
                raise bad_param("dimensions", f"model {body.model!r} gives {deployment.dim} dimensions; send "
                             f"dimensions={deployment.dim} or leave it out")
            tokens = sum(_pieces(t) for t in texts)
            vectors = await _unless_gone(request, service.router.call(
                deployment.job_id, texts, deployment.validator(texts), tokens=tokens))
        except FleetgridError as exc:
            return openai_error(exc)
        return JSONResponse({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": _encoded(row, body.encoding_format)}
                     for i, row in enumerate(vectors)],
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })


def _encoded(row: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode()
    return row.tolist()


def _pieces(text: str) -> int:
    """Word pieces the model read, near enough for usage: words plus its two special tokens, at most 256."""
    return min(256, len(text.split()) + 2)
