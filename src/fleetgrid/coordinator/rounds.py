"""The pieces of one training job's round loop: its run state, the acknowledged reports it folds in, and the
:class:`LeaseFleet` through which a strategy's round loop reaches the cars (offers and leases are store rows); plus
the final model's bytes. :class:`fleetgrid.coordinator.training.TrainingService` drives them.
"""

from __future__ import annotations

import json
import math
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from safetensors.torch import save as st_save

from ..errors import InvalidInput
from ..protocol import JobStatus, PrivacyProgress, TrainingProgress, TrainSubmit, UpdateReport
from ..workloads.training import (
    ClientUpdate,
    DataSpec,
    FlatLayout,
    LocalTrainingConfig,
    Strategy,
    TrainInstructions,
    build_model,
    config_from_dict,
)
from ..workloads.training.secure import SecureSum
from .store import JobRecord

if TYPE_CHECKING:
    from .training import TrainingService

__all__ = ["LeaseFleet", "Run", "Stopped", "TargetReached", "car_shards", "check_lease_support", "check_plan",
           "client_update", "data_spec", "final_model_bytes", "jsonable", "partial_updates", "reached", "with_training"]


def check_plan(report: UpdateReport, instructions: Mapping[str, Any], what: str) -> None:
    """Refuse a report that quotes another round or version than its lease's ``instructions``, or other planned
    steps than the lease's ``local`` config gives a car of its ``num_examples`` (H, or fewer where ``max_passes``
    caps it; see :meth:`LocalTrainingConfig.planned_steps`), or more steps done than planned. A claimed count past
    the car's shard is refused later, by the strategy."""
    if (report.round, report.base_version) != (instructions.get("round"), instructions.get("base_version")):
        raise InvalidInput(f"{what} quotes round {report.round} / version {report.base_version}; its lease is for "
                           f"round {instructions.get('round')} / version {instructions.get('base_version')}")
    local = config_from_dict(LocalTrainingConfig, dict(instructions.get("local") or {}))
    planned = local.planned_steps(report.num_examples)
    if report.steps_done > report.steps_planned or report.steps_planned != planned:
        raise InvalidInput(f"{what} reports {report.steps_done} of {report.steps_planned} steps; its lease "
                           f"planned {planned} for {report.num_examples} examples and steps_done cannot exceed that")


class Stopped(Exception):
    """The job was cancelled or the coordinator is shutting down: leave the round loop, keep the checkpoint."""


class TargetReached(Exception):
    """Every named held-out metric reached its target: finish the job early."""


@dataclass(slots=True)
class Report:
    """An acknowledged update, as the round loop receives it: the unit it completed and the update itself."""

    idx: int
    digest: str
    """The unit's result: the stored record of the report (see ``train_artifacts.update_record``)."""
    update: ClientUpdate
    release: tuple[tuple[str, str], ...] = ()
    """(owner, digest) of the artifacts that carried it, released once a checkpoint holds it."""


@dataclass
class Run:
    """One running training job: its strategy and the acknowledged reports not yet folded in. Offers and leases
    are unit and lease rows in the store, like every workload's."""

    job: JobRecord
    submit: TrainSubmit
    data: DataSpec
    strategy: Strategy
    updates: queue.Queue[Report] = field(default_factory=queue.Queue)
    consumed: list[tuple[int, str]] = field(default_factory=list)
    """(idx, digest) of reports handed to the strategy (or dropped) since the last checkpoint."""
    spent: list[tuple[str, str]] = field(default_factory=list)
    """(owner, digest) of the artifacts of those reports, released once the checkpoint marking them is saved."""
    snapshots: dict[int, tuple[str, int]] = field(default_factory=dict)
    """Global version -> (digest, size) of its snapshot artifact, for the versions a live round may still need."""
    deltas: dict[int, tuple[str, int]] = field(default_factory=dict)
    """Global version v -> (digest, size) of the artifact of the downlink delta from v - 1, likewise."""
    compacts: dict[int, tuple[str, int, str]] = field(default_factory=dict)
    """Global version -> (digest, size, params_digest of its decoded params) of its compact snapshot artifact, with
    ``snapshot_bits`` on; the versions kept are the snapshots'."""
    seen: set[int] = field(default_factory=set)
    """Units whose report is queued or consumed already."""
    next_idx: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    reports: int = 0
    rejected: int = 0


class LeaseFleet:
    """The :class:`Fleet` a strategy's round loop drives, over the coordinator's cars (called on the driver thread).

    An offer is a unit of the job targeted at one car until it expires; the car's next ask leases it like any
    unit. What the loop reads (who is busy, the reports) comes from the store and the acknowledged reports."""

    poll_s = 0.5
    """The round loop tops its cohort up with cars that turned up this often (see ``Strategy.run``)."""

    def __init__(self, service: TrainingService, run: Run) -> None:
        self.service, self.run = service, run
        self._round = -1
        self._delivered: dict[str, int] = {}
        """Car -> reports handed to the loop for round ``_round``."""

    def now(self) -> float:
        return self.service.clock.now()

    def idle_clients(self) -> list[str]:
        """Cars to offer a share now. In a round that closes, a car that already reported this round as many shares
        as it holds data shards gets no more: a top-up would have it train the same shard from the same version
        again, and its data would count twice in the round."""
        cars = self.service.available(self.run)
        if not self.run.strategy.closes_rounds or self.run.strategy.round != self._round:
            return cars
        shards = self.run.data.num_vehicles
        return [c for c in cars if self._delivered.get(c, 0) < len(self.service.owned_shards(c, shards))]

    def busy_count(self) -> int:
        return len(self.service.store.live_offers(self.run.job.job_id, self.now()))

    def dispatch(self, assignments: Mapping[str, TrainInstructions], strategy: Strategy) -> None:
        if not strategy.config.secure_aggregation:
            self.service.offer(self.run, assignments)
            return
        plan = self.service.secure.open(self.run, strategy, sorted(assignments))
        if plan is not None:  # the cohort is fixed once offered: no top-ups of a secure round
            self.service.offer(self.run, assignments, secagg=plan)

    def secure_round(self, strategy: Strategy, deadline: float, redispatch: Callable[[], None]) -> SecureSum | None:
        """A round under secure aggregation (see :mod:`.secure_rounds`)."""
        return self.service.secure.drive(self.run, strategy, deadline, redispatch, self.poll_s)

    def next_update(self, deadline: float) -> ClientUpdate | None:
        while True:
            if self.run.stop.is_set():
                raise Stopped()
            remaining = deadline - self.now()
            if remaining <= 0:
                return None
            try:
                report = self.run.updates.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                if not self.service.store.single_process:  # replicas: reports may have reached another one
                    self.service.collect(self.run)
                continue
            self.run.consumed.append((report.idx, report.digest))
            self.run.spent.extend(report.release)
            update = report.update
            if update.round > self._round:
                self._round, self._delivered = update.round, {}
            if update.round == self._round:
                self._delivered[update.client_id] = self._delivered.get(update.client_id, 0) + 1
            return update

    def max_examples(self, client_id: str) -> int | None:
        return self.service.example_cap(self.run.data, client_id)

    def cancel_outstanding(self) -> None:
        """Close the round: offers withdrawn, open leases cancelled (their late updates get a 409)."""
        self.service.close_round(self.run)
        while True:  # reports accepted but not needed once the round was complete: counted, not used
            try:
                report = self.run.updates.get_nowait()
            except queue.Empty:
                break
            self.run.consumed.append((report.idx, report.digest))
            self.run.spent.extend(report.release)


def final_model_bytes(model_name: str, strategy: Strategy, counters: Mapping[str, int] | None = None) -> bytes:
    """The trained model as safetensors (one tensor per parameter, loadable with ``load_state_dict``); its
    metadata holds the model name, strategy, version and the per-version metrics history."""
    model = build_model(model_name)
    with strategy.lock:
        FlatLayout.of(model).load(model, strategy.params)
        meta = {"model": model_name, "strategy": strategy.name, "version": strategy.version,
                "round": strategy.round, "history": jsonable(strategy.history),
                "privacy": _finite(strategy.privacy_report()), **(counters or {})}
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    return st_save(tensors, metadata={"fleetgrid": json.dumps(meta, sort_keys=True)})


def client_update(vehicle_id: str, report: UpdateReport, payload: bytes) -> ClientUpdate:
    return ClientUpdate(
        client_id=vehicle_id, round=report.round, base_version=report.base_version, payload=payload,
        num_examples=report.num_examples, steps_done=report.steps_done, steps_planned=report.steps_planned,
        examples_seen=report.examples_seen,
        train_loss=report.train_loss if report.train_loss is not None else float("nan"),
    )


def check_lease_support(strategy: Strategy) -> None:
    """InvalidInput for a setting that only the in-process harness (``SimulatedFleet``) runs so far: leases carry
    no control variate down and the car agent keeps none, so drift correction would silently be off."""
    strength = getattr(strategy.config, "drift_correction", 0.0)
    if strength:
        raise InvalidInput(
            f"drift_correction={strength} runs only in the in-process harness for now (the car agent does not keep "
            "control variates yet); submit the job with drift_correction=0"
        )


def data_spec(data: Any) -> DataSpec:
    if not isinstance(data, dict):
        raise InvalidInput(f"data must be a JSON object (a DataSpec), got {type(data).__name__}")
    fields = set(DataSpec.__dataclass_fields__)
    unknown = sorted(set(data) - fields)
    if unknown:
        raise InvalidInput(f"unknown data setting(s) {unknown}; accepted: {sorted(fields)}")
    try:
        return DataSpec(**data)
    except TypeError as exc:
        raise InvalidInput(f"bad data spec {data}: {exc}") from exc


def reached(name: str, value: float | None, goal: float) -> bool:
    if value is None:
        return False
    return value <= goal if name == "loss" else value >= goal


def jsonable(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History rows with non-finite floats (a NaN loss) as None, so they are valid JSON."""
    out = []
    for row in history:
        out.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return out


def car_shards(rank: int, cars: int, num_shards: int) -> list[int]:
    """The data shards of the car enrolled ``rank``-th (from 0) of ``cars``: its rank modulo the shards while there
    are at least as many cars as shards, else every shard ``rank + k * cars``, so that with fewer cars than shards
    each shard still belongs to one car (a lone car holds them all)."""
    if num_shards < 1:
        raise InvalidInput(f"a data split needs at least 1 shard, got {num_shards}")
    if cars <= num_shards and 0 <= rank < cars:
        return list(range(rank, num_shards, cars))
    return [rank % num_shards]


def partial_updates(history: list[dict[str, Any]]) -> int:
    """Reports of shares cut short (a preempted car sending the steps it did) in the versions of ``history``."""
    return sum(int(row.get("partial") or 0) for row in history)


def privacy_progress(report: Mapping[str, Any] | None) -> PrivacyProgress | None:
    """A strategy's ``privacy_report`` (live, or as a checkpoint stored it) on the wire; an unbounded epsilon is
    null there (JSON has no infinity)."""
    if not report:
        return None
    return PrivacyProgress.model_validate(_finite(report))


def _finite(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``row`` with non-finite floats (an unbounded epsilon) as None."""
    if row is None:
        return None
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def with_training(status: JobStatus, progress: TrainingProgress) -> JobStatus:
    """A training job's status with its progress. Its preemptions count every share a car was preempted in:
    handed back (the store's count, as for any workload) or sent as a partial update."""
    return status.model_copy(update={"training": progress,
                                     "preemptions": progress.handbacks + progress.partial_updates})
