"""The fleet's history for the dashboard: one sample per interval of the clock, counting every car once in its
state, kept for ``state_history_s`` and no longer."""

from __future__ import annotations

from fleetgrid.clock import ManualClock
from fleetgrid.coordinator.history import CarStateSampler
from fleetgrid.coordinator.store import VehicleRecord, open_store


def test_samples_fall_on_interval_boundaries_count_each_car_once_and_expire(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'h.db'}")
    try:
        clock = ManualClock(10_000.0)
        for i, (drive, eligible) in enumerate([("parked", True), ("driving", False), ("charging", False)]):
            store.add_vehicle(VehicleRecord(vehicle_id=f"v{i}", name=f"v{i}", hardware="ai4",
                                            credential_hash=f"h{i}", enrolled_at=0.0))
            store.report_state(f"v{i}", {"drive": drive}, eligible, clock.now())
        store.add_vehicle(VehicleRecord(vehicle_id="gone", name="gone", hardware="ai4", credential_hash="hg",
                                        enrolled_at=0.0))  # never reported: offline
        sampler = CarStateSampler(store, clock, interval_s=300.0, keep_s=900.0, online_window_s=60.0)
        assert sampler.maybe_sample()
        assert not sampler.maybe_sample()  # the same interval: nothing more
        (at, counts), = sampler.history()
        assert at == 9_900.0  # on the interval's boundary (10,000 rounded down to a multiple of 300)
        assert counts == {"eligible": 1, "driving": 1, "charging": 1, "offline": 1, "working": 0, "parked": 0,
                          "revoked": 0}
        for _ in range(5):
            clock.advance(300.0)
            assert sampler.maybe_sample()
        history = sampler.history(10**6)
        assert [t for t, _ in history] == [10_800.0, 11_100.0, 11_400.0]  # older than 900 s: deleted
        assert history[-1][1]["offline"] == 4  # nobody reported for 25 minutes
    finally:
        store.close()
