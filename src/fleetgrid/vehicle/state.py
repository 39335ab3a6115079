"""A car's live state as the vehicle bus reports it: moving or not, charge, network, plug, and when it was read."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fleetgrid.errors import InvalidInput

__all__ = ["SECONDS_PER_DAY", "DriveState", "Network", "VehicleState"]

SECONDS_PER_DAY = 86_400


class DriveState(StrEnum):
    DRIVING = "driving"
    PARKED = "parked"
    CHARGING = "charging"
    """Parked, plugged in and taking charge. A plugged-in car whose battery is full is PARKED with plugged_in."""


class Network(StrEnum):
    WIFI = "wifi"
    CELLULAR = "cellular"
    OFFLINE = "offline"


def _coerce(enum: type[StrEnum], name: str, value: Any) -> Any:
    try:
        return enum(value)
    except ValueError:
        accepted = ", ".join(m.value for m in enum)
        raise InvalidInput(f"vehicle state {name} {value!r} is not one of: {accepted}") from None


@dataclass(frozen=True, slots=True)
class VehicleState:
    """One reading of the car. ``at`` is clock seconds, read as local time (so midnight is a multiple of 86400).

    Physically impossible combinations are rejected: CHARGING implies ``plugged_in``, DRIVING implies not.
    """

    drive: DriveState
    soc: float
    """State of charge, a fraction in [0, 1]."""
    network: Network
    plugged_in: bool
    at: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "drive", _coerce(DriveState, "drive", self.drive))
        object.__setattr__(self, "network", _coerce(Network, "network", self.network))
        soc = self.soc
        if isinstance(soc, bool) or not isinstance(soc, int | float) or not (math.isfinite(soc) and 0 <= soc <= 1):
            raise InvalidInput(f"vehicle state soc must be a fraction in [0, 1], got {soc!r}")
        object.__setattr__(self, "soc", float(soc))
        if not isinstance(self.plugged_in, bool):
            raise InvalidInput(f"vehicle state plugged_in must be true or false, got {self.plugged_in!r}")
        if isinstance(self.at, bool) or not isinstance(self.at, int | float) or not math.isfinite(self.at):
            raise InvalidInput(f"vehicle state at must be finite clock seconds, got {self.at!r}")
        object.__setattr__(self, "at", float(self.at))
        if self.drive is DriveState.CHARGING and not self.plugged_in:
            raise InvalidInput("vehicle state drive 'charging' needs plugged_in=True; use 'parked' when unplugged")
        if self.drive is DriveState.DRIVING and self.plugged_in:
            raise InvalidInput("vehicle state drive 'driving' needs plugged_in=False; a car cannot drive plugged in")

    @property
    def local_hour(self) -> float:
        """Hour of the local day in [0, 24), fractional: ``(at % 86400) / 3600``."""
        return (self.at % SECONDS_PER_DAY) / 3600.0

    def to_json(self) -> dict[str, Any]:
        return {
            "drive": self.drive.value,
            "soc": self.soc,
            "network": self.network.value,
            "plugged_in": self.plugged_in,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VehicleState:
        accepted = ["drive", "soc", "network", "plugged_in", "at"]
        if not isinstance(data, dict) or set(data) != set(accepted):
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise InvalidInput(f"vehicle state needs exactly the keys {', '.join(accepted)}; got {got}")
        return cls(**data)
