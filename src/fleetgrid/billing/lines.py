"""A usage row as billing reads it: the ledger row with what it is joined to (its car's owner and hardware, its
job's tenant and name, the lease's hold time)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["UsageLine"]


@dataclass(frozen=True, slots=True)
class UsageLine:
    lease_id: str
    vehicle_id: str
    hardware: str
    job_id: str
    tenant: str
    workload: str
    at: float
    """When the lease closed (epoch seconds, UTC): the month a row falls in."""
    accelerator_s: float = 0.0
    held_s: float = 0.0
    """Seconds the lease was held (issued to closed); 0 where not known, then the accelerator-seconds count."""
    items: int = 0
    examples: int = 0
    steps: int = 0
    tokens: int = 0
    cellular_bytes: int = 0
    wifi_bytes: int = 0
    accepted: bool = True
    """False: the lease failed or its work was lost (a gang restarted): nothing to pay for."""
    rejected: str | None = None
    """Why work that was reported is not paid (its replica disagreed with the quorum, no quorum was reached)."""
    plugged_in: bool | None = None
    owner: str | None = None
    job_name: str = ""
