"""The store's history of the fleet: how many cars were in each state at each sample time, for the dashboard's
last-24-hours chart. Kept apart from :mod:`.base` (one idea per module); :class:`.base.Store` has it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

__all__ = ["FleetHistory"]


class FleetHistory(ABC):
    @abstractmethod
    def record_car_states(self, at: float, counts: Mapping[str, int], keep_since: float) -> None:
        """Keep ``counts`` (cars per state) as the sample taken at ``at`` (a sample already taken then is
        replaced), and drop every sample older than ``keep_since``: the history stays bounded."""

    @abstractmethod
    def car_state_history(self, since: float) -> list[tuple[float, dict[str, int]]]:
        """Samples taken at or after ``since``, oldest first: (time, cars per state)."""
