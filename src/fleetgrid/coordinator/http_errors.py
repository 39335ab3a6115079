"""Errors as HTTP answers, in one place: an :mod:`fleetgrid.errors` exception answers its status and code, a request
that does not match the schema a 422 naming the field (and the fields accepted), Starlette's own errors (an unknown
path, a wrong method) their status. Every body is an :class:`~fleetgrid.protocol.ErrorBody` with the request id.
"""

from __future__ import annotations

import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import FleetgridError
from .observe import note_error

__all__ = ["install_error_handlers"]


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error as an :class:`~fleetgrid.protocol.ErrorBody` with the request's id."""

    @app.exception_handler(FleetgridError)
    async def _ours(request: Request, exc: FleetgridError) -> JSONResponse:
        response = _error_response(request, exc.status, exc.code, exc.message)
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after is not None:  # Overloaded: when to try again
            response.headers["retry-after"] = str(max(1, math.ceil(retry_after)))
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(request, 422, "invalid_request", _validation_message(request, exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(request, exc.status_code, "http_error", str(exc.detail))


def _error_response(request: Request, status: int, code: str, message: str) -> JSONResponse:
    request_id = note_error(request.scope, code)
    return JSONResponse({"error": code, "message": message, "request_id": request_id}, status_code=status)


def _validation_message(request: Request, exc: RequestValidationError) -> str:
    parts = []
    tagged = getattr(request.app.state, "submit_models", {})
    for err in exc.errors()[:8]:
        raw = tuple(err.get("loc", ()))
        parts_ = [p for i, p in enumerate(raw) if p != "body" and not (i == 1 and raw[0] == "body" and p in tagged)]
        loc = ".".join(str(p) for p in parts_) or "body"
        if err.get("type") == "extra_forbidden":
            accepted = _accepted_fields(request, raw)
            parts.append(f"unknown field {loc!r}" + (f" (accepted: {', '.join(accepted)})" if accepted else ""))
        elif err.get("type") == "json_invalid":
            parts.append(f"body is not valid JSON ({err.get('msg')})")
        else:
            parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts) + ". See /docs for the schema."


def _accepted_fields(request: Request, loc: tuple) -> list[str]:
    route = request.scope.get("route")
    body = getattr(route, "body_field", None)
    model = getattr(request.state, "body_model", None) or getattr(getattr(body, "field_info", None), "annotation", None)
    tagged = getattr(request.app.state, "submit_models", {})
    if len(loc) > 1 and loc[0] == "body" and loc[1] in tagged:  # a member of the job submission union
        model = tagged[loc[1]]
    return sorted(getattr(model, "model_fields", {}) or [])
