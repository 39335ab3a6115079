from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from fleetgrid.clock import ManualClock
from fleetgrid.errors import InvalidInput
from fleetgrid.vehicle.dataplan import DATAPLAN_FORMAT, DataPlan, month_of
from fleetgrid.vehicle.policy import OwnerPolicy
from fleetgrid.vehicle.state import Network

JAN_31_2359 = datetime(2026, 1, 31, 23, 59, tzinfo=UTC).timestamp()


def plan(cap: int = 1000, allow_cellular: bool = True, t: float = JAN_31_2359) -> tuple[DataPlan, ManualClock]:
    clock = ManualClock(t)
    return DataPlan(OwnerPolicy(monthly_cellular_cap_bytes=cap, allow_cellular=allow_cellular), clock), clock


def test_cellular_cap_arithmetic() -> None:
    dp, _ = plan(cap=1000)
    assert dp.allows(1000, Network.CELLULAR)
    assert not dp.allows(1001, Network.CELLULAR)
    dp.record(600, Network.CELLULAR)
    assert dp.cellular_used == 600
    assert dp.cellular_remaining == 400
    assert dp.allows(400, Network.CELLULAR)
    assert not dp.allows(401, Network.CELLULAR)
    dp.record(400, Network.CELLULAR)
    assert not dp.allows(1, Network.CELLULAR)
    assert dp.allows(0, Network.CELLULAR)


def test_bytes_already_moved_count_even_past_the_cap() -> None:
    dp, _ = plan(cap=100)
    dp.record(150, Network.CELLULAR)
    assert dp.cellular_used == 150
    assert dp.cellular_remaining == 0
    assert not dp.allows(0, Network.CELLULAR)


def test_wifi_is_never_capped_and_not_counted_against_the_cap() -> None:
    dp, _ = plan(cap=10)
    dp.record(10**12, Network.WIFI)
    assert dp.allows(10**12, Network.WIFI)
    assert dp.cellular_used == 0
    assert dp.wifi_bytes_total == 10**12
    assert dp.allows(10, Network.CELLULAR)


def test_offline_never_allows_and_cannot_record() -> None:
    dp, _ = plan()
    assert not dp.allows(0, Network.OFFLINE)
    with pytest.raises(InvalidInput, match="cannot record 5 bytes moved while offline"):
        dp.record(5, Network.OFFLINE)


def test_cellular_not_allowed_by_owner() -> None:
    dp, _ = plan(allow_cellular=False)
    assert not dp.allows(0, Network.CELLULAR)
    assert dp.cellular_remaining == 0
    assert dp.allows(1, Network.WIFI)


def test_month_rollover_resets_the_cellular_count_not_the_totals() -> None:
    dp, clock = plan(cap=1000)
    dp.record(900, Network.CELLULAR)
    dp.record(50, Network.WIFI)
    assert dp.month == "2026-01"
    assert not dp.allows(200, Network.CELLULAR)
    clock.advance(59)  # 23:59:59 on the 31st: still January
    assert dp.cellular_used == 900
    clock.advance(1)  # midnight, 1 February
    assert dp.month == "2026-02"
    assert dp.cellular_used == 0
    assert dp.allows(1000, Network.CELLULAR)
    dp.record(10, Network.CELLULAR)
    assert dp.cellular_used == 10
    assert (dp.cellular_bytes_total, dp.wifi_bytes_total) == (910, 50)


def test_month_of_reads_clock_seconds_as_local_time() -> None:
    assert month_of(JAN_31_2359) == "2026-01"
    assert month_of(JAN_31_2359 + 60) == "2026-02"


@pytest.mark.parametrize("nbytes", [-1, 1.5, True, "10"])
def test_bad_byte_counts_are_rejected(nbytes: object) -> None:
    dp, _ = plan()
    with pytest.raises(InvalidInput, match=r"byte count must be an integer >= 0"):
        dp.allows(nbytes, Network.WIFI)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=r"byte count must be an integer >= 0"):
        dp.record(nbytes, Network.WIFI)  # type: ignore[arg-type]


def test_unknown_network_is_rejected() -> None:
    dp, _ = plan()
    with pytest.raises(InvalidInput, match=r"network 'lte' is not one of: wifi, cellular, offline"):
        dp.allows(1, "lte")  # type: ignore[arg-type]


def test_json_round_trip_keeps_the_counts() -> None:
    dp, clock = plan(cap=1000)
    dp.record(300, Network.CELLULAR)
    dp.record(7, Network.WIFI)
    data = dp.to_json()
    assert data == {
        "format": DATAPLAN_FORMAT,
        "month": "2026-01",
        "cellular_used": 300,
        "wifi_bytes_total": 7,
        "cellular_bytes_total": 300,
    }
    restored = DataPlan.from_json(data, dp.policy, clock)
    assert restored.to_json() == data
    assert not restored.allows(701, Network.CELLULAR)


def test_restoring_a_past_month_starts_the_count_afresh() -> None:
    dp, clock = plan(cap=1000)
    dp.record(999, Network.CELLULAR)
    data = dp.to_json()
    clock.advance(86_400 * 40)
    restored = DataPlan.from_json(data, dp.policy, clock)
    assert restored.cellular_used == 0
    assert restored.cellular_bytes_total == 999


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": "x/1"}, r"format 'x/1' is not supported; expected 'fleetgrid.dataplan/1'"),
        ({"month": "2026-13"}, r"month must be 'YYYY-MM', got '2026-13'"),
        ({"cellular_used": -4}, r"cellular_used must be an integer >= 0, got -4"),
        ({"extra": 1}, r"needs exactly the keys format, month, cellular_used"),
    ],
)
def test_from_json_rejects_bad_saves(changes: dict, message: str) -> None:
    dp, clock = plan()
    with pytest.raises(InvalidInput, match=message):
        DataPlan.from_json(dp.to_json() | changes, dp.policy, clock)


def test_concurrent_records_are_all_counted() -> None:
    dp, _ = plan(cap=10**9)

    def worker() -> None:
        for _ in range(1000):
            dp.record(1, Network.CELLULAR)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert dp.cellular_used == 4000
    assert dp.cellular_bytes_total == 4000
