"""What cars report about themselves (drive state, charge, link, eligibility), written in batches.

Every lease request and heartbeat carries the car's state. Writing each one on its own would make 10,000
long-polling cars 10,000 transactions per round of polls; here a report only marks the car's latest state
(when it changed, or every ``refresh_s`` so ``last_seen`` stays fresh), and :meth:`VehicleStates.flush` writes
all marked cars in one transaction, from the sweeper every second and before anything reads the fleet.
"""

from __future__ import annotations

import threading
from typing import Any

from ..clock import Clock
from ..protocol import StateReport
from .store import Store, VehicleRecord

__all__ = ["CAR_STATES", "VehicleStates", "car_state", "count_car_states"]

CAR_STATES = ("revoked", "offline", "working", "eligible", "driving", "charging", "parked")
"""What a car is doing, as the fleet's gauges count it: each car is in the first of these that applies."""


def car_state(vehicle: VehicleRecord, now: float, online_window_s: float, *, working: bool) -> str:
    """The car's place in :data:`CAR_STATES`: ``working`` if it holds a lease, else what its last report said
    (``offline`` when it said nothing within ``online_window_s``)."""
    if vehicle.revoked:
        return "revoked"
    if vehicle.last_seen is None or now - vehicle.last_seen > online_window_s:
        return "offline"
    if working:
        return "working"
    if vehicle.eligible:
        return "eligible"
    drive = (vehicle.state or {}).get("drive")
    return drive if drive in ("driving", "charging") else "parked"


def count_car_states(store: Store, now: float, online_window_s: float) -> dict[str, int]:
    """Every enrolled car counted once, in its :func:`car_state`: two queries, whatever the fleet's size."""
    active = {lease.vehicle_id for lease in store.active_leases()}
    by_state = dict.fromkeys(CAR_STATES, 0)
    for v in store.list_vehicles():
        by_state[car_state(v, now, online_window_s, working=v.vehicle_id in active)] += 1
    return by_state


class VehicleStates:
    def __init__(self, store: Store, clock: Clock, refresh_s: float = 10.0) -> None:
        self.store, self.clock, self.refresh_s = store, clock, refresh_s
        self._lock = threading.Lock()
        self._last: dict[str, tuple[tuple, float]] = {}
        self._pending: dict[str, tuple[dict[str, Any], bool, float]] = {}

    def report(self, vehicle_id: str, state: StateReport) -> None:
        """Note a car's state: cheap (no store call), safe from the event loop and from any thread."""
        key = (state.drive, state.network, state.plugged_in, state.eligible, round(state.soc, 2))
        now = self.clock.now()
        with self._lock:
            last = self._last.get(vehicle_id)
            if last is not None and last[0] == key and now - last[1] < self.refresh_s:
                return
            self._last[vehicle_id] = (key, now)
            data = state.model_dump(mode="json", exclude={"reasons"}) | {"reasons": state.reasons[:4]}
            self._pending[vehicle_id] = (data, state.eligible, now)

    def eligible(self, vehicle_id: str) -> bool | None:
        """Whether the car's latest report to this process said it was eligible; None if it made none here."""
        with self._lock:
            last = self._last.get(vehicle_id)
        return None if last is None else last[0][3]

    def plugged_in(self, vehicle_id: str) -> bool | None:
        """Whether the car's latest report to this process said it was plugged in; None if it made none here."""
        with self._lock:
            last = self._last.get(vehicle_id)
        return None if last is None else last[0][2]

    def flush(self) -> int:
        """Write every noted state in one transaction; returns how many cars. A failed write keeps them noted."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        try:
            self.store.report_states([(vid, data, eligible, at) for vid, (data, eligible, at) in pending.items()])
        except BaseException:
            with self._lock:
                self._pending = pending | self._pending  # newer reports (noted meanwhile) win
            raise
        return len(pending)
