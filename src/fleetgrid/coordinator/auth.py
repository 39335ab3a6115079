"""Credentials: random bearer tokens, stored only as sha256 hashes, with a short-lived cache of what is valid.

Tokens carry 256 bits of randomness, so a fast hash is as safe as a slow one here; a vehicle credential embeds the
vehicle id so it is looked up without scanning. Revoking a vehicle drops it from this process's cache at once; other
coordinators on the same database see it when their cache entry expires (``auth_cache_ttl_s``), and refuse the car
work at once anyway, since leasing checks the revoked flag in the store.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Generic, TypeVar

from ..clock import Clock, WallClock
from ..errors import AuthError
from .store import Store, VehicleRecord

__all__ = ["OWNER_TOKEN_PREFIX", "Authenticator", "bearer", "hash_token", "new_token", "vehicle_credential"]

OWNER_TOKEN_PREFIX = "fgown"
"""Owner tokens read ``fgown_<secret>`` (``fgo_`` is the operator's, ``fgt_`` a tenant's, ``fgv.`` a car's)."""

T = TypeVar("T")


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

    def __init__(self, store: Store, clock: Clock | None = None, ttl_s: float = 5.0) -> None:
        self.store = store
        clock = clock or WallClock()
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

    def vehicle(self, header: str | None) -> VehicleRecord:
        token, vehicle_id = self._vehicle_token(header)
        vehicle = self._vehicles.get(vehicle_id)
        if vehicle is None:
            vehicle = self.store.get_vehicle(vehicle_id)
            if vehicle is None:
                raise AuthError(f"unknown vehicle {vehicle_id!r}; enroll again with the fleet enrollment token")
            self._vehicles.put(vehicle.vehicle_id, vehicle)
        return self._check_vehicle(token, vehicle)

    def cached_vehicle(self, header: str | None) -> VehicleRecord | None:
        """:meth:`vehicle` without touching the store: None when the vehicle is not cached (then call that, off
        the event loop). Errors are raised as :meth:`vehicle` raises them."""
        token, vehicle_id = self._vehicle_token(header)
        vehicle = self._vehicles.get(vehicle_id)
        return self._check_vehicle(token, vehicle) if vehicle is not None else None

    @staticmethod
    def _vehicle_token(header: str | None) -> tuple[str, str]:
        token = bearer(header)
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != "fgv":
            raise AuthError(
                "malformed vehicle credential; expected the 'fgv.<vehicle_id>.<secret>' issued at enrollment")
        return token, parts[1]

    @staticmethod
    def _check_vehicle(token: str, vehicle: VehicleRecord) -> VehicleRecord:
        if not hmac.compare_digest(hash_token(token), vehicle.credential_hash):
            raise AuthError(f"wrong credential for vehicle {vehicle.vehicle_id}")
        if vehicle.revoked:
            raise AuthError(f"vehicle {vehicle.vehicle_id}'s credential was revoked; enroll again to get a new one")
        if vehicle.suspended:
            raise AuthError(f"vehicle {vehicle.vehicle_id}'s credential is suspended: {vehicle.suspended_reason}; "
                            "ask the fleet operator to review it")
        return vehicle

    def enrollment(self, token: str) -> None:
        expected = self.store.get_secret("enroll")
        if expected is None or not hmac.compare_digest(hash_token(token), expected):
            raise AuthError("wrong fleet enrollment token; ask the fleet operator for the current one")

    def remember_vehicle(self, vehicle: VehicleRecord) -> None:
        self._vehicles.put(vehicle.vehicle_id, vehicle)

    def forget_vehicle(self, vehicle_id: str) -> None:
        self._vehicles.drop(vehicle_id)

    def forget_tenant(self, token_hash: str) -> None:
        self._tenants.drop(token_hash)
