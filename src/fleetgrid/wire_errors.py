"""The coordinator's error answers turned back into :mod:`fleetgrid.errors`, for every client (car, tenant,
operator)."""

from __future__ import annotations

import httpx
import pydantic

from fleetgrid import errors
from fleetgrid.protocol import ErrorBody

__all__ = ["WIRE_ERRORS", "error_from_response"]

#: Errors the coordinator can answer with: every errors.py class that has an HTTP status (TransportError and
#: Preempted keep the base's 500 because they never cross the wire).
WIRE_ERRORS: tuple[type[errors.FleetgridError], ...] = tuple(
    cls
    for cls in (getattr(errors, name) for name in errors.__all__)
    if issubclass(cls, errors.FleetgridError) and cls.status != errors.FleetgridError.status
)
_BY_CODE = {cls.code: cls for cls in WIRE_ERRORS}
# Only branch roots stand for a status, so an unknown code under 409 is a Conflict, not a LeaseExpired.
_BY_STATUS = {cls.status: cls for cls in WIRE_ERRORS if cls.__bases__ == (errors.FleetgridError,)}


def error_from_response(response: httpx.Response) -> errors.FleetgridError:
    """The errors.py exception a non-2xx answer stands for: by ``ErrorBody.error`` code, else by status.

    A code the agent does not know falls back to the class for the status (a newer coordinator may refine codes);
    a status with no class (5xx, a proxy's 502) is a :class:`TransportError`.
    """
    where = f"{response.request.method} {response.request.url.path}"
    try:
        body = ErrorBody.model_validate_json(response.content)
        code, message = body.error, body.message
    except (pydantic.ValidationError, ValueError):
        code, message = "", response.text[:200] or response.reason_phrase
    cls = _BY_CODE.get(code)
    if cls is None or cls.status != response.status_code:
        cls = _BY_STATUS.get(response.status_code)
    if cls is not None and issubclass(cls, errors.Overloaded):  # keep when to try again
        return cls(message, retry_after_s=_retry_after(response))
    if cls is not None:
        return cls(message)
    return errors.TransportError(f"{where} answered {response.status_code} ({code or 'no error code'}): {message}")


def _retry_after(response: httpx.Response) -> float:
    """The answer's ``Retry-After`` in seconds (1 when absent or not a number of seconds)."""
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0
