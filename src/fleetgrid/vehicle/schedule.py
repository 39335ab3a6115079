"""A vehicle's day as intervals: trips, plug-in sessions and home Wi-Fi reach.

This is the trace format shared by the fleet simulator (which exports calibrated schedules) and the simulated
vehicle bus (which replays them). Times are minutes after local midnight, ``0 <= start < end <= 1440``.
A multi-day trace is a list of days; a replay past the last day wraps around to the first.

JSON form (``fleetgrid.trace/1``)::

    {"format": "fleetgrid.trace/1", "vehicle_id": "v-0001", "days": [
        {"trips": [[450, 480], [1040, 1075]], "plugged": [[1110, 1440]], "wifi": [[0, 445], [1080, 1440]],
         "soc_start": 0.62}
    ]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MINUTES_PER_DAY", "TRACE_FORMAT", "DaySchedule", "VehicleTrace", "load_traces", "save_traces"]

MINUTES_PER_DAY = 1440
TRACE_FORMAT = "fleetgrid.trace/1"

Interval = tuple[int, int]


def _check_intervals(name: str, intervals: list[Interval]) -> tuple[Interval, ...]:
    out: list[Interval] = []
    last_end = -1
    for item in intervals:
        if len(item) != 2:
            raise ValueError(f"{name}: each interval is [start_minute, end_minute], got {item!r}")
        start, end = int(item[0]), int(item[1])
        if not 0 <= start < end <= MINUTES_PER_DAY:
            raise ValueError(
                f"{name}: interval [{start}, {end}] must satisfy 0 <= start < end <= {MINUTES_PER_DAY}"
            )
        if start < last_end:
            raise ValueError(f"{name}: intervals must be sorted and not overlap; [{start}, {end}] overlaps")
        out.append((start, end))
        last_end = end
    return tuple(out)


def _contains(intervals: tuple[Interval, ...], minute: float) -> bool:
    return any(start <= minute < end for start, end in intervals)


@dataclass(frozen=True, slots=True)
class DaySchedule:
    """One day of one vehicle. ``plugged`` and ``wifi`` never overlap a trip (a driving car is neither)."""

    trips: tuple[Interval, ...] = ()
    plugged: tuple[Interval, ...] = ()
    wifi: tuple[Interval, ...] = ()
    soc_start: float = 0.8

    def __post_init__(self) -> None:
        object.__setattr__(self, "trips", _check_intervals("trips", list(self.trips)))
        object.__setattr__(self, "plugged", _check_intervals("plugged", list(self.plugged)))
        object.__setattr__(self, "wifi", _check_intervals("wifi", list(self.wifi)))
        if not 0.0 <= self.soc_start <= 1.0:
            raise ValueError(f"soc_start is a fraction in [0, 1], got {self.soc_start}")

    def driving(self, minute: float) -> bool:
        return _contains(self.trips, minute)

    def plugged_in(self, minute: float) -> bool:
        return not self.driving(minute) and _contains(self.plugged, minute)

    def on_wifi(self, minute: float) -> bool:
        return not self.driving(minute) and _contains(self.wifi, minute)

    def to_json(self) -> dict[str, Any]:
        return {
            "trips": [list(i) for i in self.trips],
            "plugged": [list(i) for i in self.plugged],
            "wifi": [list(i) for i in self.wifi],
            "soc_start": self.soc_start,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DaySchedule:
        unknown = set(data) - {"trips", "plugged", "wifi", "soc_start"}
        if unknown:
            raise ValueError(f"unknown day-schedule keys {sorted(unknown)}; accepted: trips, plugged, wifi, soc_start")
        return cls(
            trips=tuple(tuple(i) for i in data.get("trips", [])),
            plugged=tuple(tuple(i) for i in data.get("plugged", [])),
            wifi=tuple(tuple(i) for i in data.get("wifi", [])),
            soc_start=float(data.get("soc_start", 0.8)),
        )


@dataclass(frozen=True, slots=True)
class VehicleTrace:
    """Consecutive days of one vehicle."""

    vehicle_id: str
    days: tuple[DaySchedule, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.days:
            raise ValueError(f"trace for {self.vehicle_id!r} has no days; give at least one day schedule")

    def day(self, index: int) -> DaySchedule:
        return self.days[index % len(self.days)]

    def to_json(self) -> dict[str, Any]:
        return {"format": TRACE_FORMAT, "vehicle_id": self.vehicle_id, "days": [d.to_json() for d in self.days]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VehicleTrace:
        if data.get("format") != TRACE_FORMAT:
            raise ValueError(f"trace format {data.get('format')!r} is not supported; expected {TRACE_FORMAT!r}")
        return cls(
            vehicle_id=str(data["vehicle_id"]),
            days=tuple(DaySchedule.from_json(d) for d in data["days"]),
        )


def save_traces(path: str | Path, traces: list[VehicleTrace]) -> None:
    """Write traces as JSON Lines, one vehicle a line."""
    with open(path, "w", encoding="utf-8") as fh:
        for trace in traces:
            fh.write(json.dumps(trace.to_json(), separators=(",", ":")) + "\n")


def load_traces(path: str | Path) -> list[VehicleTrace]:
    """Read traces written by :func:`save_traces` (or by ``fleetgrid simulate --export-traces``)."""
    traces = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    traces.append(VehicleTrace.from_json(json.loads(line)))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{lineno}: not a valid vehicle trace: {exc}") from exc
    return traces
