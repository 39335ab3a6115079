"""Every exception fleetgrid raises, in one tree; the HTTP layer maps each branch to one status code.

    FleetgridError
    +-- InvalidInput            400  a request, spec, file or setting that is malformed or out of range
    |   +-- UnknownModel        400  a model name that is not registered
    |   +-- InputShapeError     400  inputs whose shape or dtype the model does not accept
    |   +-- HashMismatch        400  an upload whose bytes do not hash to the digest it was sent under
    |   +-- DishonestShare      400  a secure-aggregation share that does not match its dealer's commitment
    +-- AuthError               401  a missing, malformed, unknown or revoked credential
    +-- Forbidden               403  a valid caller touching what is not theirs
    +-- NotFound                404  a job, lease, vehicle or artifact that does not exist (for this caller)
    +-- Conflict                409  a request that contradicts state: a closed lease, a cancelled job
    |   +-- LeaseExpired        409  a lease whose deadline has passed
    |   +-- DatabaseInUse       409  a SQLite file another coordinator process already holds
    |   +-- TooFewSurvivors     409  a secure-aggregation round that lost more cars than it can recover from
    +-- PayloadTooLarge         413  a request body over the configured limit
    +-- RangeNotSatisfiable     416  a byte range outside the artifact
    +-- Overloaded              429  nothing can take the request now; try again after ``retry_after_s``
    |   +-- RateLimited         429  too many failed credentials or enrollments from one address, car or token
    +-- Unavailable             503  no car could answer the request in time
    +-- InsufficientStorage     507  the coordinator's disk (or quota) is full; try again later
    +-- TransportError               the agent could not reach the coordinator (never sent over HTTP)
    +-- Preempted                    the worker was stopped because the car became ineligible

Every message names the offending thing and what would be accepted.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "Conflict",
    "DatabaseInUse",
    "DishonestShare",
    "FleetgridError",
    "Forbidden",
    "HashMismatch",
    "InputShapeError",
    "InsufficientStorage",
    "InvalidInput",
    "LeaseExpired",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "Preempted",
    "RangeNotSatisfiable",
    "RateLimited",
    "TooFewSurvivors",
    "TransportError",
    "Unavailable",
    "UnknownModel",
]


class FleetgridError(Exception):
    """Base of every fleetgrid error. ``status`` is the HTTP status the coordinator answers with."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(FleetgridError):
    status = 400
    code = "invalid_input"


class UnknownModel(InvalidInput):
    code = "unknown_model"


class InputShapeError(InvalidInput):
    code = "bad_input_shape"


class HashMismatch(InvalidInput):
    code = "hash_mismatch"


class DishonestShare(InvalidInput):
    """A car revealed (or dealt) a secret share that its commitment says is wrong; ``car_ids`` names the cars."""

    code = "dishonest_share"

    def __init__(self, message: str, car_ids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.car_ids = car_ids


class AuthError(FleetgridError):
    status = 401
    code = "unauthorized"


class Forbidden(FleetgridError):
    status = 403
    code = "forbidden"


class NotFound(FleetgridError):
    status = 404
    code = "not_found"


class Conflict(FleetgridError):
    status = 409
    code = "conflict"


class LeaseExpired(Conflict):
    code = "lease_expired"


class DatabaseInUse(Conflict):
    """Raised at start-up, never over HTTP: SQLite serves one coordinator process; replicas need PostgreSQL."""

    code = "database_in_use"


class TooFewSurvivors(Conflict):
    """Too many cars of a secure-aggregation round dropped for its secrets to be rebuilt: the round is void."""

    code = "too_few_survivors"


class PayloadTooLarge(FleetgridError):
    status = 413
    code = "payload_too_large"


class RangeNotSatisfiable(FleetgridError):
    status = 416
    code = "range_not_satisfiable"


class Overloaded(FleetgridError):
    """Refused now, not wrong: the answer carries ``Retry-After``."""

    status = 429
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimited(Overloaded):
    """Refused before being checked: this client failed authentication (or enrolled) too often lately."""

    code = "rate_limited"


class Unavailable(FleetgridError):
    """No car could answer in time (every replica tried left or failed); the request may be sent again."""

    status = 503
    code = "unavailable"


class InsufficientStorage(FleetgridError):
    """The coordinator could not store what was sent because its disk or quota is full: not the caller's fault."""

    status = 507
    code = "insufficient_storage"


class TransportError(FleetgridError):
    """The coordinator could not be reached or answered unexpectedly; raised on the agent side only."""

    code = "transport"


class Preempted(FleetgridError):
    """The car became ineligible and its worker was stopped; raised on the agent side only."""

    code = "preempted"
