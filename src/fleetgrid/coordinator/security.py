"""Who may call what, as the OpenAPI document tells it: one HTTP bearer scheme per kind of credential, each route's
accepted schemes, and the error answers every route declares.

A route says which credentials it takes by marking its endpoint or its credential dependency with
:func:`accepts`; :func:`document` then writes the security requirements and error responses into the schema when
it is built (nothing is written by hand per route), so Swagger UI's Authorize button and "Try it out" work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from ..errors import DatabaseInUse
from ..protocol import ErrorBody
from ..wire_errors import WIRE_ERRORS

__all__ = ["SCHEMES", "accepts", "document"]

F = TypeVar("F", bound=Callable[..., Any])

SCHEMES: dict[str, str] = {
    "vehicle": "A car's credential, 'fgv.<vehicle_id>.<secret>', which POST /v1/vehicles/enroll returns. A car that "
               "enrolled with a public key also signs every request (X-Fleetgrid-Signature; see the README).",
    "tenant": "A tenant's token (fgt_...): `fleetgrid credentials` shows the default tenant's, `fleetgrid tenant "
              "add NAME` makes another.",
    "operator": "The operator token (fgo_...) in DATA_DIR/credentials.json (`fleetgrid credentials`). Also what a "
                "Prometheus scraper sends to GET /metrics.",
    "owner": "A car owner's token, tied to the owner's cars.",
}
"""Every kind of bearer credential, by scheme name, as the OpenAPI document describes it."""

_MARK = "_fleetgrid_accepts"
_ERRORS_MARK = "_fleetgrid_errors"


def accepts(*schemes: str, errors: Iterable[int] = ()) -> Callable[[F], F]:
    """Mark a route's endpoint, or the dependency that checks its credential, as taking any one of ``schemes``
    (none: a public route). ``errors``: statuses it answers beyond those :func:`document` infers (e.g. 507)."""
    unknown = set(schemes) - set(SCHEMES)
    if unknown:
        raise ValueError(f"unknown security scheme(s) {sorted(unknown)}; known: {sorted(SCHEMES)}")
    extra = tuple(errors)

    def mark(fn: F) -> F:
        setattr(fn, _MARK, tuple(schemes))
        if extra:
            setattr(fn, _ERRORS_MARK, extra)
        return fn

    return mark


def document(schema: dict[str, Any], routes: Iterable[BaseRoute]) -> None:
    """Add the security schemes, each operation's accepted schemes and its error answers to an OpenAPI ``schema``
    built from ``routes``. A route that nobody marked gets no ``security`` key (a test looks for those)."""
    components = schema.setdefault("components", {})
    components["securitySchemes"] = {name: {"type": "http", "scheme": "bearer", "description": text}
                                     for name, text in SCHEMES.items()}
    known = components.setdefault("schemas", {})
    known["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    for route in routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        marked = _marks(route)
        for method in route.methods or ():
            operation = schema.get("paths", {}).get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            if marked is not None:
                operation["security"] = [{name: []} for name in marked[0]]
            responses = operation.setdefault("responses", {})
            for status in _error_statuses(route, method, operation, marked):
                responses[str(status)] = _error_response(status)
    # FastAPI's own validation error body is never sent: a 422 is an ErrorBody too.
    for name in ("HTTPValidationError", "ValidationError"):
        known.pop(name, None)


def _marks(route: APIRoute) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """The schemes the route's endpoint and dependencies accept (their union), and their extra error statuses."""
    schemes: list[str] = []
    extra: list[int] = []
    found = False
    calls: list[Callable[..., Any] | None] = [route.endpoint]
    pending = list(route.dependant.dependencies)
    while pending:
        dep = pending.pop()
        calls.append(dep.call)
        pending.extend(dep.dependencies)
    for call in calls:
        marked = getattr(call, _MARK, None)
        if marked is not None:
            found = True
            schemes.extend(s for s in marked if s not in schemes)
            extra.extend(getattr(call, _ERRORS_MARK, ()))
    return (tuple(schemes), tuple(extra)) if found else None


def _error_statuses(route: APIRoute, method: str, operation: dict[str, Any],
                    marked: tuple[tuple[str, ...], tuple[int, ...]] | None) -> list[int]:
    """What a route can answer besides success, from what it takes: a credential (401), path parameters (404, and
    403 with a car's credential: another car's lease), any input (400, 422), a body (413), a change of state
    (409); plus the statuses it was marked with."""
    takes_input = bool(operation.get("parameters")) or "requestBody" in operation
    statuses: set[int] = set(marked[1]) if marked is not None else set()
    if marked is not None and marked[0]:
        statuses |= {401, 429}  # 429: the address (or car id) failed authentication too often lately
    if "{" in route.path_format:
        statuses.add(404)
        if marked is not None and "vehicle" in marked[0]:
            statuses.add(403)
    if takes_input:
        statuses |= {400, 422}
    if "requestBody" in operation:
        statuses.add(413)
    if method in ("POST", "PUT", "DELETE", "PATCH"):
        statuses.add(409)
    return sorted(statuses)


def _error_response(status: int) -> dict[str, Any]:
    # DatabaseInUse has a status but is raised at start-up only, never answered.
    codes = sorted(cls.code for cls in WIRE_ERRORS if cls.status == status and cls is not DatabaseInUse)
    if status == 422:
        codes.append("invalid_request")  # the request validation handler's code (app.py), not an errors.py class
    listed = f" (error: {', '.join(codes)})" if codes else ""
    return {
        "description": f"{_REASONS.get(status, 'error')}{listed}",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }


_REASONS = {
    400: "malformed or out-of-range input",
    401: "missing, malformed, unknown or revoked credential",
    403: "a valid caller touching what is not theirs",
    404: "no such thing for this caller",
    409: "contradicts the current state",
    413: "request body over the limit",
    416: "byte range outside the artifact",
    422: "request does not match the schema",
    429: "too many failed authentications (or enrollments) lately; try again after Retry-After",
    507: "the coordinator's storage is full; try again later",
}
