"""Credentials: random bearer tokens, stored only as sha256 hashes, with a short-lived cache of what is valid; for
cars, also the signature by the key they enrolled with (:mod:`.car_proof`), suspension, and a limit on failures
per claimed car id.

Tokens carry 256 bits of randomness, so a fast hash is as safe as a slow one here; a vehicle credential embeds the
vehicle id so it is looked up without scanning. Revoking a vehicle drops it from this process's cache at once; other
coordinators on the same database see it when their cache entry expires (``auth_cache_ttl_s``), and refuse the car
work at once anyway, since leasing checks the revoked flag in the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Generic, TypeVar

from starlette.requests import Request

from ..clock import Clock, WallClock
from ..errors import AuthError, Forbidden
from ..identity.signing import SIGNATURE_HEADER, UNSIGNED_PAYLOAD, body_hash
from .car_proof import ProofChecker
from .ratelimit import RateLimit, RateLimiter
from .store import Store, VehicleRecord

__all__ = [
    "OWNER_TOKEN_PREFIX",
    "WRONG_CAR",
    "Authenticator",
    "CarRequest",
    "car",
    "car_unread",
    "bearer",
    "hash_token",
    "new_token",
    "vehicle_credential",
]

OWNER_TOKEN_PREFIX = "fgown"
"""Owner tokens read ``fgown_<secret>`` (``fgo_`` is the operator's, ``fgt_`` a tenant's, ``fgv.`` a car's)."""

WRONG_CAR = "unknown vehicle or wrong credential; use the credential (and key) this car enrolled with, or enroll again"
"""The one answer to an unknown car id, a wrong secret and a wrong signature alike: ids cannot be probed."""
_MAX_ID = 64
_NO_CAR = "0" * 64  # no sha256 hex digest of a token is this

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CarRequest:
    """What a car's request proves itself with: its bearer credential and signature header, and what was signed."""

    authorization: str | None
    signature: str | None = None
    method: str = "GET"
    target: str = "/"
    """Path and query, as sent."""
    digest: str = body_hash(b"")
    """sha256 (hex) of the body, or :data:`~fleetgrid.identity.signing.UNSIGNED_PAYLOAD` (an artifact upload)."""

    @classmethod
    def of(cls, request: Request, digest: str) -> CarRequest:
        # The path as it was sent (percent-encoding and all), as the car signed it, not as decoded for routing.
        raw = request.scope.get("raw_path")
        path = raw.decode("latin-1") if raw else request.url.path
        query = request.scope.get("query_string", b"").decode("latin-1")
        target = path + ("?" + query if query else "")
        headers = request.headers
        return cls(headers.get("authorization"), headers.get(SIGNATURE_HEADER), request.method, target, digest)


_HASH_ON_LOOP = 64 << 10
"""Bodies up to this size are hashed on the event loop (tens of microseconds); larger ones in a thread."""


async def car(auth: Authenticator, request: Request) -> VehicleRecord:
    """The car that sent ``request`` (its body read and hashed for the signature; an artifact upload's is not:
    see :data:`~fleetgrid.identity.signing.UNSIGNED_PAYLOAD`). The store is asked off the event loop, only when the
    car is not cached."""
    body = await request.body()
    digest = body_hash(body) if len(body) <= _HASH_ON_LOOP else await asyncio.to_thread(body_hash, body)
    req = CarRequest.of(request, digest)
    found = auth.cached_vehicle(req)
    return found if found is not None else await asyncio.to_thread(auth.vehicle, req)


def car_unread(auth: Authenticator, request: Request) -> VehicleRecord:
    """The car that sent ``request`` without reading its body: a GET or HEAD (an empty body), or an artifact upload
    (its path names the sha256 of its bytes). Call it off the event loop."""
    digest = UNSIGNED_PAYLOAD if request.method == "PUT" else body_hash(b"")
    return auth.vehicle(CarRequest.of(request, digest))


def new_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def vehicle_credential(vehicle_id: str) -> str:
    return f"fgv.{vehicle_id}.{secrets.token_urlsafe(32)}"


def bearer(header: str | None) -> str:
    if not header:
        raise AuthError("missing credential; send 'Authorization: Bearer <token>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("malformed Authorization header; expected 'Bearer <token>'")
    return token.strip()


class _Cache(Generic[T]):
    """Found records by key, each trusted for ``ttl_s`` of the clock's time. Misses are never cached."""

    def __init__(self, clock: Clock, ttl_s: float) -> None:
        self.clock, self.ttl_s = clock, ttl_s
        self._entries: dict[str, tuple[T, float]] = {}

    def get(self, key: str) -> T | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.clock.now() >= entry[1]:
            self._entries.pop(key, None)  # pop: request threads may expire one entry together
            return None
        return entry[0]

    def put(self, key: str, value: T) -> None:
        if self.ttl_s > 0:
            self._entries[key] = (value, self.clock.now() + self.ttl_s)

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)


class Authenticator:
    """Resolves bearer tokens to tenants, vehicles or the operator; found ones are cached for ``ttl_s``."""

    def __init__(self, store: Store, clock: Clock | None = None, ttl_s: float = 5.0, *,
                 car_failures: RateLimit | None = None, skew_s: float = 60.0, max_nonces: int = 200_000,
                 require_keys: bool = False, max_keys: int = 100_000) -> None:
        self.store = store
        clock = clock or WallClock()
        self.car_failures = RateLimiter(car_failures or RateLimit(burst=30, per_s=0.5), clock,
                                        what="failed authentications for this vehicle id", max_keys=max_keys)
        self.proofs = ProofChecker(clock, skew_s=skew_s, max_nonces=max_nonces)
        self.require_keys = require_keys
        store.watch_vehicles(self.forget_vehicle)  # a suspension by anyone through this store holds at once
        self._tenants: _Cache[str] = _Cache(clock, ttl_s)
        self._vehicles: _Cache[VehicleRecord] = _Cache(clock, ttl_s)
        self._owners: _Cache[str] = _Cache(clock, ttl_s)

    def tenant(self, header: str | None) -> str:
        token_hash = hash_token(bearer(header))
        name = self._tenants.get(token_hash)
        if name is None:
            name = self.store.tenant_by_token_hash(token_hash)
            if name is None:
                raise AuthError("unknown or revoked tenant token; use one `fleetgrid credentials` shows or one "
                                "`fleetgrid tenant add NAME` printed")
            self._tenants.put(token_hash, name)
        return name

    def owner(self, header: str | None) -> str:
        """The owner a ``fgown_`` token belongs to."""
        token = bearer(header)
        if not token.startswith(OWNER_TOKEN_PREFIX + "_"):
            raise AuthError(f"not an owner token; owner routes need the '{OWNER_TOKEN_PREFIX}_...' token "
                            "`fleetgrid owner add NAME` printed")
        token_hash = hash_token(token)
        name = self._owners.get(token_hash)
        if name is None:
            name = self.store.owner_by_token_hash(token_hash)
            if name is None:
                raise AuthError("unknown owner token; use the one `fleetgrid owner add NAME` printed")
            self._owners.put(token_hash, name)
        return name

    def operator(self, header: str | None) -> None:
        expected = self.store.get_secret("operator")
        if expected is None or not hmac.compare_digest(hash_token(bearer(header)), expected):
            raise AuthError("not the operator token; operator routes need the operator credential")

    def vehicle(self, req: CarRequest) -> VehicleRecord:
        """The car that sent ``req``: its bearer credential, then (for a car that enrolled with a key) its signature
        over the request. An unknown car and a wrong secret or signature get one and the same answer, so car ids
        cannot be probed; failures are counted per claimed car (:class:`RateLimited` once too many)."""
        token, vehicle_id = self._vehicle_token(req.authorization)
        vehicle = self._vehicles.get(vehicle_id)
        if vehicle is None:
            vehicle = self.store.get_vehicle(vehicle_id)
            if vehicle is not None:
                self._vehicles.put(vehicle.vehicle_id, vehicle)
        return self._check_vehicle(token, vehicle_id, vehicle, req)

    def cached_vehicle(self, req: CarRequest) -> VehicleRecord | None:
        """:meth:`vehicle` without touching the store: None when the vehicle is not cached (then call that, off
        the event loop). Errors are raised as :meth:`vehicle` raises them."""
        token, vehicle_id = self._vehicle_token(req.authorization)
        vehicle = self._vehicles.get(vehicle_id)
        return self._check_vehicle(token, vehicle_id, vehicle, req) if vehicle is not None else None

    @staticmethod
    def _vehicle_token(header: str | None) -> tuple[str, str]:
        token = bearer(header)
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != "fgv" or not 0 < len(parts[1]) <= _MAX_ID:  # ids key bounded memory
            raise AuthError(
                "malformed vehicle credential; expected the 'fgv.<vehicle_id>.<secret>' issued at enrollment")
        return token, parts[1]

    def _check_vehicle(self, token: str, vehicle_id: str, vehicle: VehicleRecord | None,
                       req: CarRequest) -> VehicleRecord:
        self.car_failures.check(vehicle_id)
        # An unknown car costs the same hash comparison as a known one, and answers the same words.
        expected = vehicle.credential_hash if vehicle is not None else _NO_CAR
        if not hmac.compare_digest(hash_token(token), expected) or vehicle is None:
            self.car_failures.spend(vehicle_id)
            raise AuthError(WRONG_CAR)
        if vehicle.revoked:
            raise AuthError(f"vehicle {vehicle.vehicle_id}'s credential was revoked; enroll again to get a new one")
        if vehicle.public_key is not None:
            # Not counted against the car's id: a bad signature needs the secret already, and counting replays
            # would let whoever copied one request lock the car out by sending it again.
            self.proofs.check(vehicle_id, vehicle.public_key, req.method, req.target, req.digest, req.signature)
        elif self.require_keys:
            raise AuthError(f"vehicle {vehicle_id} enrolled without a key, and this coordinator requires signed "
                            "requests; enroll the car again (a current agent makes its key at enrollment)")
        if vehicle.suspended_at is not None:
            raise Forbidden(f"vehicle {vehicle_id} is suspended ({vehicle.suspended_reason}); the fleet operator "
                            f"can lift it (POST /v1/vehicles/{vehicle_id}/unsuspend)")
        return vehicle

    def enrollment(self, token: str) -> bool:
        """Whether ``token`` is the bootstrap enrollment token (the one in the coordinator's configuration or
        credentials.json); tokens the operator issued are checked, and spent, by the store as the car is added."""
        expected = self.store.get_secret("enroll")
        return expected is not None and hmac.compare_digest(hash_token(token), expected)

    def remember_vehicle(self, vehicle: VehicleRecord) -> None:
        self._vehicles.put(vehicle.vehicle_id, vehicle)

    def forget_vehicle(self, vehicle_id: str) -> None:
        self._vehicles.drop(vehicle_id)

    def forget_tenant(self, token_hash: str) -> None:
        self._tenants.drop(token_hash)
