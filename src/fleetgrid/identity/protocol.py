"""The identity routes' wire models: enrollment tokens, the audit log, suspending a car. Shared by the coordinator's
routes and the operator's client and CLI."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["AuditEntry", "EnrollmentTokenIssue", "EnrollmentTokenIssued", "EnrollmentTokenView", "SuspendRequest",
           "VehicleSuspension"]

_YEAR_S = 366 * 86400.0


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnrollmentTokenIssue(_Wire):
    """What the operator asks for. Default: one enrollment, no expiry."""

    uses: int | None = Field(default=1, ge=1, le=1_000_000,
                             description="enrollments the token allows in all; null: any number until it expires")
    expires_in_s: float | None = Field(default=None, gt=0, le=_YEAR_S, allow_inf_nan=False,
                                       description="seconds from now until the token stops working")
    expires_at: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                     description="unix time when the token stops working (instead of expires_in_s)")
    label: str = Field(default="", max_length=200, description="what it is for, e.g. 'garage 4, December'")

    @model_validator(mode="after")
    def _one_expiry(self) -> EnrollmentTokenIssue:
        if self.expires_in_s is not None and self.expires_at is not None:
            raise ValueError("give expires_in_s or expires_at, not both")
        return self


class EnrollmentTokenView(_Wire):
    token_id: str
    label: str
    created_at: float
    created_by: str
    uses: int | None = Field(description="enrollments allowed in all; null: unlimited")
    used: int
    uses_left: int | None
    expires_at: float | None
    revoked_at: float | None
    state: Literal["live", "expired", "used_up", "revoked"]


class EnrollmentTokenIssued(EnrollmentTokenView):
    token: str = Field(description="the token itself: shown this once, stored only hashed")


class AuditEntry(_Wire):
    seq: int
    at: float
    actor: str
    action: str
    target: str
    details: dict[str, Any]


class SuspendRequest(_Wire):
    reason: str = Field(min_length=1, max_length=500, description="why, for the audit log and the car's 403")


class VehicleSuspension(_Wire):
    vehicle_id: str
    suspended: bool
    changed: bool = Field(description="false if the car already was in that state")
    reason: str | None = None
