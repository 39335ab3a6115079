"""The eligibility monitor: a bus that cannot be read counts as ineligible, and a spell keeps its start time."""

from __future__ import annotations

import threading

from fleetgrid.agent.monitor import EligibilityMonitor
from fleetgrid.clock import ManualClock
from fleetgrid.vehicle.bus import ManualVehicleBus, VehicleBus
from fleetgrid.vehicle.policy import OwnerPolicy
from fleetgrid.vehicle.state import DriveState


class FlakyBus(VehicleBus):
    def __init__(self, inner: VehicleBus) -> None:
        self.inner, self.broken = inner, False

    def read_state(self):
        if self.broken:
            raise OSError("CAN bus timeout")
        return self.inner.read_state()


def test_readings_follow_the_bus_and_an_unreadable_bus_is_ineligible():
    clock = ManualClock(1_700_000_000.0)
    manual = ManualVehicleBus(clock=clock)
    bus = FlakyBus(manual)
    seen: list = []
    three = threading.Event()

    def on_reading(reading) -> None:
        seen.append(reading)
        if len(seen) >= 3:
            three.set()

    monitor = EligibilityMonitor(bus, OwnerPolicy(), 0.001, on_reading)
    first = monitor.reading()
    assert first.eligible and first.ineligible_since is None and first.state.drive is DriveState.PARKED
    manual.set(drive=DriveState.DRIVING)
    monitor.start()
    try:
        assert three.wait(5)
        driving = monitor.reading()
        assert not driving.eligible and driving.eligibility.reasons == ("driving",)
        bus.broken = True
        seen.clear()
        three.clear()
        assert three.wait(5)
        broken = monitor.reading()
    finally:
        monitor.stop()
    assert broken.state is None and broken.eligibility.reasons == ("the vehicle bus cannot be read",)
    # One ineligible spell (driving, then unreadable) keeps the instant it began: latency is measured from there.
    assert broken.ineligible_since == driving.ineligible_since is not None
