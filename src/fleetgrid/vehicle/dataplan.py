"""Accounting of the bytes fleetgrid moves through a car, against the owner's monthly cellular cap.

Months are calendar months of the clock's time read as local time (the same reading as
:attr:`VehicleState.local_hour`), so the count resets at local midnight on the 1st.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from typing import Any

from fleetgrid.clock import Clock
from fleetgrid.errors import InvalidInput
from fleetgrid.vehicle.policy import OwnerPolicy
from fleetgrid.vehicle.state import Network

__all__ = ["DATAPLAN_FORMAT", "DataPlan", "month_of"]

DATAPLAN_FORMAT = "fleetgrid.dataplan/1"
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def month_of(t: float) -> str:
    """The calendar month ``"YYYY-MM"`` of clock seconds ``t`` read as local time."""
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m")


def _check_bytes(nbytes: Any) -> int:
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise InvalidInput(f"byte count must be an integer >= 0, got {nbytes!r}")
    return nbytes


def _check_network(network: Any) -> Network:
    try:
        return Network(network)
    except ValueError:
        raise InvalidInput(f"network {network!r} is not one of: {', '.join(n.value for n in Network)}") from None


class DataPlan:
    """Bytes used this month over cellular, and all-time totals per link. Thread-safe.

    ``record`` counts bytes that have moved (even past the cap: they are spent); ``allows`` answers whether
    a transfer may start.
    """

    def __init__(self, policy: OwnerPolicy, clock: Clock) -> None:
        self.policy = policy
        self.clock = clock
        self._lock = threading.Lock()
        self._month = month_of(clock.now())
        self._cellular_used = 0
        self.wifi_bytes_total = 0
        self.cellular_bytes_total = 0

    def _roll(self) -> None:
        # Called with the lock held: a new month starts the cellular count afresh.
        month = month_of(self.clock.now())
        if month != self._month:
            self._month = month
            self._cellular_used = 0

    @property
    def month(self) -> str:
        with self._lock:
            self._roll()
            return self._month

    @property
    def cellular_used(self) -> int:
        """Cellular bytes counted against this month's cap."""
        with self._lock:
            self._roll()
            return self._cellular_used

    @property
    def cellular_remaining(self) -> int:
        """Cellular bytes still allowed this month (0 when the owner does not allow cellular)."""
        if not self.policy.allow_cellular:
            return 0
        return max(0, self.policy.monthly_cellular_cap_bytes - self.cellular_used)

    def record(self, nbytes: int, network: Network) -> None:
        """Count ``nbytes`` moved over ``network``; cellular bytes count against the month of ``clock.now()``."""
        nbytes = _check_bytes(nbytes)
        network = _check_network(network)
        if network is Network.OFFLINE:
            raise InvalidInput(f"cannot record {nbytes} bytes moved while offline; record them as wifi or cellular")
        with self._lock:
            if network is Network.WIFI:
                self.wifi_bytes_total += nbytes
            else:
                self._roll()
                self._cellular_used += nbytes
                self.cellular_bytes_total += nbytes

    def allows(self, nbytes: int, network: Network) -> bool:
        """Wi-Fi always; cellular only if the owner allows it and it stays within the cap; offline never."""
        nbytes = _check_bytes(nbytes)
        network = _check_network(network)
        if network is Network.WIFI:
            return True
        if network is Network.OFFLINE or not self.policy.allow_cellular:
            return False
        return self.cellular_used + nbytes <= self.policy.monthly_cellular_cap_bytes

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            self._roll()
            return {
                "format": DATAPLAN_FORMAT,
                "month": self._month,
                "cellular_used": self._cellular_used,
                "wifi_bytes_total": self.wifi_bytes_total,
                "cellular_bytes_total": self.cellular_bytes_total,
            }

    @classmethod
    def from_json(cls, data: dict[str, Any], policy: OwnerPolicy, clock: Clock) -> DataPlan:
        """Restore counts saved by :meth:`to_json`; a saved month that has ended restarts the cellular count."""
        accepted = ["format", "month", "cellular_used", "wifi_bytes_total", "cellular_bytes_total"]
        if not isinstance(data, dict) or set(data) != set(accepted):
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise InvalidInput(f"saved data plan needs exactly the keys {', '.join(accepted)}; got {got}")
        if data["format"] != DATAPLAN_FORMAT:
            raise InvalidInput(
                f"saved data plan format {data['format']!r} is not supported; expected {DATAPLAN_FORMAT!r}"
            )
        if not isinstance(data["month"], str) or not _MONTH.match(data["month"]):
            raise InvalidInput(f"saved data plan month must be 'YYYY-MM', got {data['month']!r}")
        counts = {}
        for key in ("cellular_used", "wifi_bytes_total", "cellular_bytes_total"):
            try:
                counts[key] = _check_bytes(data[key])
            except InvalidInput:
                raise InvalidInput(f"saved data plan {key} must be an integer >= 0, got {data[key]!r}") from None
        plan = cls(policy, clock)
        plan._month = data["month"]
        plan._cellular_used = counts["cellular_used"]
        plan.wifi_bytes_total = counts["wifi_bytes_total"]
        plan.cellular_bytes_total = counts["cellular_bytes_total"]
        return plan
