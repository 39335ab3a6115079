"""The watch on the car: a thread that reads the vehicle bus every few milliseconds and judges eligibility.

It remembers when the car was first seen ineligible (a wall-clock instant, the start of a preemption's latency)
and hands every reading to a callback at once, so the agent can stop the worker within one bus read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleetgrid.vehicle.bus import VehicleBus
from fleetgrid.vehicle.eligibility import Eligibility, check_eligibility
from fleetgrid.vehicle.policy import OwnerPolicy
from fleetgrid.vehicle.state import VehicleState

__all__ = ["EligibilityMonitor", "Reading"]

log = logging.getLogger(__name__)

_UNREADABLE = "the vehicle bus cannot be read"


@dataclass(frozen=True, slots=True)
class Reading:
    state: VehicleState | None
    """None only when the bus raised: then the car counts as ineligible."""
    eligibility: Eligibility
    ineligible_since: float | None
    """``time.perf_counter()`` of the first read in the current ineligible spell; None while eligible."""

    @property
    def eligible(self) -> bool:
        return self.eligibility.eligible


class EligibilityMonitor:
    """Reads ``bus`` every ``interval_s`` wall seconds on a daemon thread; ``on_reading`` runs on that thread."""

    def __init__(
        self,
        bus: VehicleBus,
        policy: OwnerPolicy,
        interval_s: float,
        on_reading: Callable[[Reading], None] | None = None,
    ) -> None:
        self.bus = bus
        self.policy = policy
        self.interval_s = interval_s
        self.on_reading = on_reading
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._reading = self._read(previous=None)

    def reading(self) -> Reading:
        """The latest reading (taken at most ``interval_s`` ago while the thread runs)."""
        with self._lock:
            return self._reading

    def start(self) -> None:
        self._halt.clear()
        self._thread = threading.Thread(target=self._loop, name="fleetgrid-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._halt.wait(self.interval_s):
            reading = self._read(previous=self.reading())
            with self._lock:
                self._reading = reading
            if self.on_reading is not None:
                try:
                    self.on_reading(reading)
                except Exception:  # the watch must outlive any one bad callback
                    log.exception("agent callback failed on a vehicle reading")

    def _read(self, previous: Reading | None) -> Reading:
        try:
            state = self.bus.read_state()
            eligibility = check_eligibility(self.policy, state)
        except Exception as exc:  # noqa: BLE001 - a car we cannot read is a car we must not compute on
            log.warning("vehicle bus read failed: %s", exc)
            state, eligibility = None, Eligibility(eligible=False, reasons=(_UNREADABLE,))
        seen = time.perf_counter()
        if eligibility.eligible:
            since = None
        elif previous is not None and previous.ineligible_since is not None:
            since = previous.ineligible_since
        else:
            since = seen
        return Reading(state=state, eligibility=eligibility, ineligible_since=since)
