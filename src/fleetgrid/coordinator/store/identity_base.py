"""The store's identity half: enrollment tokens (hashes only), suspended cars, and the append-only audit log of
operator actions and automatic suspensions. Kept apart from :mod:`.base` (one idea per module); :class:`.base.Store`
has it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import VehicleRecord

__all__ = ["AuditRecord", "EnrollmentTokenRecord", "IdentityState"]


@dataclass(slots=True)
class EnrollmentTokenRecord:
    """An enrollment token the operator issued; the token itself is never stored, only its sha256."""

    token_id: str
    label: str
    created_at: float
    created_by: str
    uses: int | None = None
    """How many enrollments it allows in all; None: any number (until it expires or is revoked)."""
    used: int = 0
    expires_at: float | None = None
    revoked_at: float | None = None

    @property
    def uses_left(self) -> int | None:
        return None if self.uses is None else max(0, self.uses - self.used)


@dataclass(slots=True)
class AuditRecord:
    seq: int
    at: float
    actor: str
    """Who did it: 'operator', or the component acting on its own (e.g. 'reputation')."""
    action: str
    """What was done, e.g. 'enrollment_token.issue', 'vehicle.suspend'."""
    target: str
    """What it was done to: a token id, a vehicle id, a tenant's name."""
    details: dict[str, Any] = field(default_factory=dict)


class IdentityState(ABC):
    _vehicle_watchers: list[Callable[[str], None]]

    def watch_vehicles(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(vehicle_id)`` after every committed suspension or unsuspension through this store object (the
        authenticator drops its cached record, so the change holds at once here, whoever made it)."""
        if not hasattr(self, "_vehicle_watchers"):
            self._vehicle_watchers = []
        self._vehicle_watchers.append(fn)

    def _vehicle_changed(self, vehicle_id: str) -> None:
        for fn in getattr(self, "_vehicle_watchers", ()):
            fn(vehicle_id)

    # --- enrollment tokens --------------------------------------------------------------------------------------
    @abstractmethod
    def add_enrollment_token(self, token: EnrollmentTokenRecord, token_hash: str) -> None:
        """Store an issued token (by hash) and its audit row ('enrollment_token.issue', by ``created_by``)."""

    @abstractmethod
    def list_enrollment_tokens(self) -> list[EnrollmentTokenRecord]:
        """Every issued token, revoked and used-up ones included, oldest first."""

    @abstractmethod
    def revoke_enrollment_token(self, token_id: str, actor: str, now: float) -> EnrollmentTokenRecord | None:
        """Make the token unusable, with its audit row (none when it was revoked already); the token after, None
        if there is no such token."""

    @abstractmethod
    def enroll_with_token(self, token_hash: str, vehicle: VehicleRecord, now: float) -> str:
        """Spend one use of the issued token with this hash and add ``vehicle``, in one
        transaction: of two enrollments racing for a token's last use, exactly one succeeds. Returns the token's
        id. Raises AuthError, changing nothing, if no live token has the hash (unknown, expired, revoked, used up:
        the message says which)."""

    # --- suspension ---------------------------------------------------------------------------------------------
    @abstractmethod
    def suspend_vehicle(self, vehicle_id: str, reason: str, actor: str, *, now: float | None = None) -> bool:
        """Suspend a car (it is refused every request and lease until unsuspended), with its audit row; False if it
        was suspended already (nothing written). NotFound if there is no such car. ``now``: default the wall
        clock."""

    @abstractmethod
    def unsuspend_vehicle(self, vehicle_id: str, actor: str, *, now: float | None = None) -> bool:
        """Lift a suspension, with its audit row; False if the car was not suspended. NotFound if no such car."""

    # --- audit log ----------------------------------------------------------------------------------------------
    @abstractmethod
    def append_audit(self, actor: str, action: str, target: str, details: dict[str, Any], now: float) -> None:
        """Add one row to the audit log. The log has no method to change or remove a row."""

    @abstractmethod
    def audit_log(self, *, limit: int = 100, before: int | None = None) -> list[AuditRecord]:
        """The newest ``limit`` rows (with ``before``: those older than that seq), newest first."""
