"""What a car's owner allows: whether the car works at all, down to what charge, at which hours, over which network."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from fleetgrid.errors import InvalidInput

__all__ = ["DEFAULT_MIN_SOC", "DEFAULT_MONTHLY_CELLULAR_CAP_BYTES", "OwnerPolicy"]

DEFAULT_MIN_SOC = 0.2
"""Stop working at 20 % state of charge: the floor Tesla's Sentry Mode and Cabin Overheat Protection keep."""

DEFAULT_MONTHLY_CELLULAR_CAP_BYTES = 2 * 1024**3
"""2 GiB of fleetgrid traffic a month over the car's own modem (est: a small share of a connected-car plan such
as Tesla's $9.99 Premium Connectivity; no published cap was found). Wi-Fi traffic is never capped."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class OwnerPolicy:
    """An owner's settings. Every field is checked on construction; a bad one raises :class:`InvalidInput`."""

    opt_in: bool = True
    """The owner lends the car's computer at all."""
    min_soc: float = DEFAULT_MIN_SOC
    """State-of-charge floor in [0, 1] below which a car on battery stops working (see ``DEFAULT_MIN_SOC``).
    It does not apply while the car is plugged in: then the work draws from the grid, not the battery."""
    plugged_in_only: bool = False
    """Work only while the car is plugged in."""
    allowed_hours: tuple[int, int] = (0, 24)
    """Local hours ``[start, end)``; ``start > end`` wraps past midnight, so ``(22, 7)`` is 22:00-07:00.
    ``(0, 24)`` is all day; ``start == end`` is rejected as ambiguous."""
    monthly_cellular_cap_bytes: int = DEFAULT_MONTHLY_CELLULAR_CAP_BYTES
    """Most bytes fleetgrid may move over cellular in a calendar month (see ``DEFAULT_MONTHLY_CELLULAR_CAP_BYTES``)."""
    allow_cellular: bool = True
    """Fleetgrid may use the car's cellular link at all (within the cap)."""

    def __post_init__(self) -> None:
        for name in ("opt_in", "plugged_in_only", "allow_cellular"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInput(f"owner policy {name} must be true or false, got {getattr(self, name)!r}")
        soc = self.min_soc
        if isinstance(soc, bool) or not isinstance(soc, int | float) or not (math.isfinite(soc) and 0 <= soc <= 1):
            raise InvalidInput(f"owner policy min_soc must be a fraction in [0, 1] such as 0.2, got {soc!r}")
        object.__setattr__(self, "min_soc", float(soc))
        object.__setattr__(self, "allowed_hours", _check_hours(self.allowed_hours))
        cap = self.monthly_cellular_cap_bytes
        if not _is_int(cap) or cap < 0:
            raise InvalidInput(f"owner policy monthly_cellular_cap_bytes must be an integer >= 0, got {cap!r}")

    def in_allowed_hours(self, local_hour: float) -> bool:
        """Whether ``local_hour`` (0 <= hour < 24, fractional) falls in ``allowed_hours``."""
        start, end = self.allowed_hours
        if start < end:
            return start <= local_hour < end
        return local_hour >= start or local_hour < end

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["allowed_hours"] = list(self.allowed_hours)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OwnerPolicy:
        """Build from a JSON object; missing keys take their defaults, unknown keys are rejected."""
        if not isinstance(data, dict):
            raise InvalidInput(f"owner policy must be a JSON object, got {type(data).__name__}")
        accepted = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(accepted))
        if unknown:
            raise InvalidInput(f"unknown owner policy keys {unknown}; accepted: {', '.join(accepted)}")
        return cls(**data)


def _check_hours(hours: Any) -> tuple[int, int]:
    accepted = "a pair [start, end] of whole hours, 0 <= start <= 23, 0 <= end <= 24, start != end, e.g. [22, 7]"
    if not isinstance(hours, tuple | list) or len(hours) != 2:
        raise InvalidInput(f"owner policy allowed_hours must be {accepted}; got {hours!r}")
    start, end = hours
    if not (_is_int(start) and _is_int(end)) or not (0 <= start <= 23 and 0 <= end <= 24) or start == end:
        raise InvalidInput(f"owner policy allowed_hours must be {accepted} ([0, 24] for all day); got {hours!r}")
    return (start, end)
