"""Credentials: random bearer tokens, stored only as sha256 hashes, with an in-memory cache of what is valid.

Tokens carry 256 bits of randomness, so a fast hash is as safe as a slow one here; a vehicle credential embeds the
vehicle id so it is looked up without scanning. Revoking a vehicle drops it from the cache at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from ..errors import AuthError
from .store import Store, VehicleRecord

__all__ = ["Authenticator", "bearer", "hash_token", "new_token", "vehicle_credential"]


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


class Authenticator:
    """Resolves bearer tokens to tenants, vehicles or the operator."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._tenants: dict[str, str] = {}
        self._vehicles: dict[str, VehicleRecord] = {}

    def tenant(self, header: str | None) -> str:
        token_hash = hash_token(bearer(header))
        name = self._tenants.get(token_hash)
        if name is None:
            name = self.store.tenant_by_token_hash(token_hash)
            if name is None:
                raise AuthError("unknown tenant token; use the token printed by 'fleetgrid serve' or 'fleetgrid tenant add'")
            self._tenants[token_hash] = name
        return name

    def operator(self, header: str | None) -> None:
        expected = self.store.get_secret("operator")
        if expected is None or not hmac.compare_digest(hash_token(bearer(header)), expected):
            raise AuthError("not the operator token; operator routes need the operator credential")

    def vehicle(self, header: str | None) -> VehicleRecord:
        token = bearer(header)
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != "fgv":
            raise AuthError("malformed vehicle credential; expected the 'fgv.<vehicle_id>.<secret>' issued at enrollment")
        vehicle = self._vehicles.get(parts[1])
        if vehicle is None:
            vehicle = self.store.get_vehicle(parts[1])
            if vehicle is None:
                raise AuthError(f"unknown vehicle {parts[1]!r}; enroll again with the fleet enrollment token")
            self._vehicles[vehicle.vehicle_id] = vehicle
        if not hmac.compare_digest(hash_token(token), vehicle.credential_hash):
            raise AuthError(f"wrong credential for vehicle {vehicle.vehicle_id}")
        if vehicle.revoked:
            raise AuthError(f"vehicle {vehicle.vehicle_id}'s credential was revoked; enroll again to get a new one")
        return vehicle

    def enrollment(self, token: str) -> None:
        expected = self.store.get_secret("enroll")
        if expected is None or not hmac.compare_digest(hash_token(token), expected):
            raise AuthError("wrong fleet enrollment token; ask the fleet operator for the current one")

    def forget_vehicle(self, vehicle_id: str) -> None:
        self._vehicles.pop(vehicle_id, None)
