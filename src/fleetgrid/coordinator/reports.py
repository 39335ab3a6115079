"""Every report of work a car makes (a unit completed or given up, a training update) held to what the coordinator
saw: the report's usage clamped (:func:`fleetgrid.coordinator.metering.cross_check`) and the car's reputation
lowered for each report that claimed more."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..core import Usage
from ..errors import InvalidInput, UnknownModel
from ..models.registry import get_model_spec
from ..protocol import UpdateReport
from ..vehicle.hardware import get_profile
from .metering import Implausible, Seen, cross_check
from .reputation import Verdict
from .store import LeaseRecord, Store, UnitRecord, VehicleRecord
from .throughput import min_seconds, work_of

__all__ = ["ReportCheck", "fastest_s"]

log = logging.getLogger("fleetgrid.coordinator.reports")


def fastest_s(hardware: str, usage: Usage, *, model: str, input_bytes: int, training: bool = False) -> float:
    """The fewest seconds a car with ``hardware`` could have done the work ``usage`` claims of ``model`` (its
    items and examples, reading ``input_bytes``); 0 when the profile is not known."""
    try:
        profile = get_profile(hardware)
    except InvalidInput:  # enrolled under a profile this coordinator does not know: nothing to hold it to
        return 0.0
    try:
        ops = get_model_spec(model).ops_per_item
    except UnknownModel:  # a model only training knows: its inputs' bytes still bound it
        ops = 0.0
    return min_seconds(work_of(usage, ops_per_item=ops, input_bytes=input_bytes, training=training), profile)


class ReportCheck:
    """Cross-checks reports and records what failed: a verdict on the car, and a count by reason (metrics)."""

    def __init__(self, store: Store, now: Callable[[], float]) -> None:
        self.store, self.now = store, now
        self.counted: Callable[[str], None] = lambda reason: None
        """Told the reason of every implausible claim (:data:`fleetgrid.coordinator.metering.REASONS`)."""

    def check(self, usage: Usage, seen: Seen) -> tuple[Usage, list[Implausible]]:
        """``usage`` clamped to ``seen``, and what it claimed beyond; pass the latter to :meth:`record` once the
        report's usage row is written."""
        return cross_check(usage, seen)

    def check_update(self, vehicle: VehicleRecord, lease: LeaseRecord, unit: UnitRecord, model: str,
                     report: UpdateReport, uploaded: int) -> tuple[Usage, list[Implausible]]:
        """A training update's usage, held to its share as this coordinator saw it: the time its lease was held,
        the global model it was served (the snapshot and the deltas it may fetch instead) and the ``uploaded``
        bytes (its update and record), and the least time the car's hardware needs for the examples it claims."""
        usage = Usage(examples=report.examples_seen, steps=report.steps_done, accelerator_s=report.compute_s,
                      cellular_bytes=report.cellular_bytes, wifi_bytes=report.wifi_bytes)
        files = (unit.payload or {}).get("files") or {}
        served = sum(int(ref.get("size", 0)) for ref in [files.get("snapshot") or {}, files.get("compact") or {},
                                                         *(files.get("deltas") or [])])
        seen = Seen(held_s=max(0.0, self.now() - lease.issued_at), payload_bytes=served + uploaded,
                    fastest_s=fastest_s(vehicle.hardware, usage, model=model, input_bytes=0, training=True))
        return cross_check(usage, seen)

    def record(self, vehicle_id: str, problems: list[Implausible]) -> None:
        """A report of ``vehicle_id`` failed the cross-checks: lower its reputation (an implausible verdict)."""
        if not problems:
            return
        log.warning("vehicle %s reported implausibly: %s", vehicle_id, "; ".join(map(str, problems)))
        self.store.record_verdicts([(vehicle_id, Verdict.IMPLAUSIBLE)], self.now())
        for problem in problems:
            self.counted(problem.reason)
