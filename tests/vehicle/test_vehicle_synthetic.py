from __future__ import annotations

import itertools

import pytest

from fleetgrid.errors import InvalidInput
from fleetgrid.vehicle.schedule import VehicleTrace, load_traces, save_traces
from fleetgrid.vehicle.soc import BATTERY_KWH, CHARGER_KW, CHARGING_EFFICIENCY, DRIVING_KWH_PER_MINUTE, DayProfile
from fleetgrid.vehicle.synthetic import synthetic_trace

SEEDS = range(40)


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.parametrize("seed", SEEDS)
def test_synthetic_days_are_plausible_commuter_days(seed: int) -> None:
    trace = synthetic_trace("v-1", seed, days=3)
    assert trace.vehicle_id == "v-1"
    assert len(trace.days) == 3
    for day in trace.days:
        assert 2 <= len(day.trips) <= 3
        morning, evening = day.trips[0], day.trips[1]
        assert 7 * 60 <= morning[0] <= 8.5 * 60
        assert 16.5 * 60 <= evening[0] <= 18.5 * 60
        driving = sum(end - start for start, end in day.trips)
        assert 40 <= driving <= 130  # AAA 2023: 60.7 min a day on average
        for trip in day.trips:
            assert not any(overlaps(trip, other) for other in (*day.plugged, *day.wifi))
        # Plugged in at home in the evening until midnight, after the last trip; and overnight before leaving.
        assert day.plugged[-1][1] == 1440 and day.plugged[-1][0] > day.trips[-1][1]
        assert day.plugged[0][0] == 0
        # Home Wi-Fi overnight, none at work.
        assert day.on_wifi(3 * 60) and day.on_wifi(23 * 60 + 59)
        assert not day.on_wifi((day.trips[0][1] + day.trips[1][0]) / 2)
        assert 0.0 <= day.soc_start <= 1.0


def test_same_seed_gives_the_same_trace() -> None:
    assert synthetic_trace("a", 7, days=5) == synthetic_trace("a", 7, days=5)
    assert synthetic_trace("a", 7, days=5).to_json() == synthetic_trace("a", 7, days=5).to_json()


def test_different_seeds_give_different_days() -> None:
    firsts = {synthetic_trace("a", seed).days[0] for seed in SEEDS}
    assert len(firsts) == len(SEEDS)


def test_some_days_have_an_errand() -> None:
    trips = [len(day.trips) for seed in SEEDS for day in synthetic_trace("a", seed, days=5).days]
    share = trips.count(3) / len(trips)
    assert 0.25 < share < 0.6  # 0.43 expected


def test_each_day_starts_where_the_last_ended() -> None:
    trace = synthetic_trace("a", 3, days=4)
    drain = DRIVING_KWH_PER_MINUTE / 60 / BATTERY_KWH
    charge = CHARGER_KW * CHARGING_EFFICIENCY / 3600 / BATTERY_KWH
    for before, after in itertools.pairwise(trace.days):
        assert after.soc_start == pytest.approx(DayProfile.build(before, drain, charge).end_soc, abs=1e-4)


def test_synthetic_trace_survives_the_shared_json_format(tmp_path) -> None:
    traces = [synthetic_trace(f"v-{i}", i, days=2) for i in range(3)]
    path = tmp_path / "traces.jsonl"
    save_traces(path, traces)
    assert load_traces(path) == traces
    assert VehicleTrace.from_json(traces[0].to_json()) == traces[0]


@pytest.mark.parametrize("days", [0, -1, 1.5, True])
def test_days_must_be_a_positive_integer(days: object) -> None:
    with pytest.raises(InvalidInput, match=r"days must be an integer >= 1"):
        synthetic_trace("a", 1, days=days)  # type: ignore[arg-type]
