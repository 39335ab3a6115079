"""Training jobs on the coordinator: the strategy's round loop, with the fleet's leases as its transport.

Each running training job has one driver thread that runs :meth:`Strategy.run` over a :class:`LeaseFleet`. The
fleet side is event-driven: a car asking for work (``POST /v1/leases``) marks itself available; the round loop
offers chosen cars a share of the round; the car's next ask turns the offer into a training lease; its update
(``POST /v1/train/leases/{id}/update``) is validated at once, so a bad one is refused with a 4xx and never
reaches the global, and then queued for the loop. After every new global version the strategy's whole state is
checkpointed as an artifact, so a coordinator killed mid-job resumes from its last version. Training leases live
in memory only: a round cut short by a restart is simply run again.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import save as st_save

from ..clock import Clock
from ..errors import Conflict, FleetgridError, Forbidden, InvalidInput, LeaseExpired, NotFound
from ..protocol import FailRequest, JobState, LeaseAck, TrainGrant, TrainingProgress, TrainSubmit, UpdateReport
from ..workloads.training import (
    ClientUpdate,
    DataSpec,
    FlatLayout,
    Strategy,
    TrainInstructions,
    build_eval_set,
    build_local_dataset,
    build_model,
    make_evaluator,
    make_strategy,
    strategy_from_state_bytes,
    to_dict,
)
from ..workloads.training.strategies import read_metadata
from ..workloads.training.tasks import MODELS
from .artifacts import ArtifactStore
from .config import CoordinatorConfig
from .metering import check_compute_s
from .store import JobRecord, LedgerRecord, Store, VehicleRecord

__all__ = ["LeaseFleet", "TrainingService", "final_model_bytes"]

log = logging.getLogger("fleetgrid.coordinator.training")

_LIVE = (JobState.QUEUED, JobState.RUNNING)


class _Stopped(Exception):
    """The job was cancelled or the coordinator is shutting down: leave the round loop, keep the checkpoint."""


class _TargetReached(Exception):
    """Every named held-out metric reached its target: finish the job early."""


@dataclass(slots=True)
class _Offer:
    instructions: TrainInstructions
    expires: float


@dataclass(slots=True)
class _TrainLease:
    lease_id: str
    job_id: str
    vehicle_id: str
    instructions: TrainInstructions
    deadline: float
    issued_at: float
    state: str = "active"  # active | completed | handed_back | failed | cancelled | expired
    closed_at: float | None = None


@dataclass
class _Run:
    """One running training job: its strategy, the work out on cars, and the reports not yet folded in."""

    job: JobRecord
    submit: TrainSubmit
    data: DataSpec
    strategy: Strategy
    offers: dict[str, _Offer] = field(default_factory=dict)
    leases: dict[str, _TrainLease] = field(default_factory=dict)
    updates: queue.Queue[ClientUpdate] = field(default_factory=queue.Queue)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    reports: int = 0
    rejected: int = 0

    def holds(self, vehicle_id: str) -> bool:
        return vehicle_id in self.offers or any(
            lease.vehicle_id == vehicle_id and lease.state == "active" for lease in self.leases.values()
        )


class LeaseFleet:
    """The :class:`Fleet` a strategy's round loop drives, over the coordinator's cars (called on the driver thread)."""

    poll_s = 0.5
    """The round loop tops its cohort up with cars that turned up this often (see ``Strategy.run``)."""

    def __init__(self, service: TrainingService, run: _Run) -> None:
        self.service, self.run = service, run

    def now(self) -> float:
        return self.service.clock.now()

    def idle_clients(self) -> list[str]:
        return self.service.available(self.run)

    def busy_count(self) -> int:
        with self.service.lock:
            self._expire_offers()
            active = sum(lease.state == "active" for lease in self.run.leases.values())
            return len(self.run.offers) + active

    def dispatch(self, assignments: Mapping[str, TrainInstructions], strategy: Strategy) -> None:
        expires = self.now() + self.service.offer_ttl_s
        with self.service.lock:
            for vehicle_id, instructions in assignments.items():
                self.run.offers[vehicle_id] = _Offer(instructions, expires)
        self.service.notify()

    def next_update(self, deadline: float) -> ClientUpdate | None:
        while True:
            if self.run.stop.is_set():
                raise _Stopped()
            remaining = deadline - self.now()
            if remaining <= 0:
                return None
            try:
                return self.run.updates.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                with self.service.lock:
                    self._expire_offers()

    def cancel_outstanding(self) -> None:
        """Close the round: offers withdrawn, open leases cancelled (their late updates get a 409)."""
        self.service.close_round(self.run)
        while True:  # reports accepted but not needed once the round was complete: counted, not used
            try:
                self.run.updates.get_nowait()
            except queue.Empty:
                break

    def _expire_offers(self) -> None:
        now = self.now()
        for vehicle_id in [v for v, o in self.run.offers.items() if o.expires < now]:
            del self.run.offers[vehicle_id]


class TrainingService:
    """Every training job this coordinator runs. Route handlers call in from the event loop; each job's round loop
    runs on its own thread; ``lock`` guards the offers and leases they share."""

    def __init__(self, store: Store, artifacts: ArtifactStore, config: CoordinatorConfig, clock: Clock) -> None:
        self.store, self.artifacts, self.config, self.clock = store, artifacts, config, clock
        self.lock = threading.RLock()
        self.runs: dict[str, _Run] = {}
        self.notify: Callable[[], None] = lambda: None
        """Wakes long-polling cars; the app sets it to a thread-safe call into its event loop."""
        self.available_window_s = 5.0
        """A car that asked for work this recently counts as available for a round: it is long-polling, or it just
        took an inference unit (then the offer waits for its next ask). A car gone quiet drops out quickly."""
        self.offer_ttl_s = 15.0
        """An offer not taken up by then is withdrawn, so the round loop offers that share to another car."""
        self._asked: dict[str, float] = {}
        self._leases: dict[str, _Run] = {}
        self._shards: dict[str, int] = {}

    # --- tenants ------------------------------------------------------------------------------------------------
    def submit(self, tenant: str, req: TrainSubmit) -> JobRecord:
        """Validate everything a car or the round loop would trip on later, then start the job."""
        if req.model not in MODELS:
            raise InvalidInput(f"unknown training model {req.model!r}; accepted: {sorted(MODELS)}")
        data = _data_spec(req.data)
        init = FlatLayout.of(model := build_model(req.model, seed=req.init_seed)).flatten(model)
        strategy = make_strategy(req.strategy, init, req.settings)
        try:  # the cars build their shards from this spec: one that cannot be built fails here, not on every car
            local = build_local_dataset(data, 0)
            x, _ = build_eval_set(data, max_windows=req.eval_max)
            with torch.no_grad():
                model(x[:2])
        except FleetgridError:
            raise
        except Exception as exc:
            raise InvalidInput(f"data spec {req.data} cannot be built for model {req.model!r}: {exc}") from exc
        if len(local) < 1:
            raise InvalidInput(f"data spec {req.data} leaves shard 0 empty; use fewer shards or more samples")
        if req.target_metric:
            unknown = sorted(set(req.target_metric) - {"accuracy", "loss"})
            if unknown:
                raise InvalidInput(f"unknown target metric(s) {unknown}; accepted: accuracy, loss")
        now = self.clock.now()
        job_id = "job-" + uuid.uuid4().hex[:12]
        spec = req.model_dump(mode="json") | {"data": to_dict(data), "settings": to_dict(strategy.config)}
        job = JobRecord(job_id=job_id, tenant=tenant, name=req.name or job_id, kind="train", model=req.model,
                        spec=spec, items=req.rounds, units_total=req.rounds, created_at=now)
        self.store.create_job(job, [])
        self._start(job, strategy)
        return job

    def resume_all(self) -> int:
        """Restart the round loop of every live training job, each from its last checkpoint; returns how many."""
        resumed = 0
        for job in self.store.list_jobs():
            if job.kind != "train" or job.state not in _LIVE or job.job_id in self.runs:
                continue
            try:
                if job.checkpoint_digest:
                    strategy = strategy_from_state_bytes(self.artifacts.read_bytes(job.checkpoint_digest))
                else:
                    model = build_model(job.model, seed=job.spec.get("init_seed", 0))
                    init = FlatLayout.of(model).flatten(model)
                    strategy = make_strategy(job.spec["strategy"], init, job.spec["settings"])
            except Exception as exc:  # noqa: BLE001 - a job that cannot resume fails; the others go on
                log.exception("training job %s cannot resume", job.job_id)
                self.store.finish_job(job.job_id, JobState.FAILED, self.clock.now(), error=f"cannot resume: {exc}")
                continue
            log.info("resuming training job %s at version %d", job.job_id, strategy.version)
            self._start(job, strategy)
            resumed += 1
        return resumed

    def cancel(self, job_id: str) -> None:
        run = self.runs.get(job_id)
        if run is not None:
            run.stop.set()
            self.close_round(run)

    def close_round(self, run: _Run) -> None:
        """Withdraw the run's offers and cancel its open leases (a late update then gets a 409)."""
        now = self.clock.now()
        with self.lock:
            run.offers.clear()
            for lease in run.leases.values():
                if lease.state == "active":
                    lease.state, lease.closed_at = "cancelled", now

    def shutdown(self, timeout_s: float = 5.0) -> None:
        for run in list(self.runs.values()):
            run.stop.set()
        for run in list(self.runs.values()):
            if run.thread is not None:
                run.thread.join(timeout_s)

    def progress(self, job: JobRecord) -> TrainingProgress:
        run = self.runs.get(job.job_id)
        if run is not None:
            s = run.strategy
            with s.lock:
                history = list(s.history)
                version, rnd = s.version, s.round
            return TrainingProgress(
                version=version, target_versions=job.units_total, round=rnd, strategy=s.name,
                bytes_up=run.bytes_up, bytes_down=run.bytes_down, reports=run.reports, rejected=run.rejected,
                checkpoint=stored.checkpoint_digest if (stored := self.store.get_job(job.job_id)) else None,
                history=_jsonable(history),
            )
        meta = self._checkpoint_meta(job)
        return TrainingProgress(
            version=job.units_done, target_versions=job.units_total, round=meta.get("round", 0),
            strategy=job.spec.get("strategy", "?"), bytes_up=meta.get("bytes_up", 0),
            bytes_down=meta.get("bytes_down", 0), reports=meta.get("reports", 0), rejected=meta.get("rejected", 0),
            checkpoint=job.checkpoint_digest, history=_jsonable(meta.get("history", [])),
        )

    def _checkpoint_meta(self, job: JobRecord) -> dict[str, Any]:
        digest = job.result_digest if job.state == JobState.DONE else job.checkpoint_digest
        if not digest or not self.artifacts.exists(digest):
            return {}
        return read_metadata(self.artifacts.read_bytes(digest))

    # --- vehicles -----------------------------------------------------------------------------------------------
    def lease(self, vehicle: VehicleRecord) -> TrainGrant | None:
        """A share of a round offered to this car, as a lease; None if no training job wants it now. Every call
        also marks the car available for the next round."""
        now = self.clock.now()
        with self.lock:
            self._asked[vehicle.vehicle_id] = now
            for run in self.runs.values():
                offer = run.offers.pop(vehicle.vehicle_id, None)
                if offer is None or offer.expires < now or run.stop.is_set():
                    continue
                lease = _TrainLease(
                    lease_id="tl-" + uuid.uuid4().hex, job_id=run.job.job_id, vehicle_id=vehicle.vehicle_id,
                    instructions=offer.instructions, deadline=now + self.config.lease_ttl_s, issued_at=now,
                )
                run.leases[lease.lease_id] = lease
                self._leases[lease.lease_id] = run
                return self._grant(run, lease, self._shard(vehicle.vehicle_id, run.data.num_vehicles))
        return None

    def _grant(self, run: _Run, lease: _TrainLease, shard: int) -> TrainGrant:
        ins = lease.instructions
        return TrainGrant(
            lease_id=lease.lease_id, job_id=run.job.job_id, round=ins.round, base_version=ins.base_version,
            model_digest=ins.model_digest, model=run.job.model, local=to_dict(ins.local), seed=ins.seed,
            data=to_dict(run.data), shard=shard, deadline=lease.deadline, renew_every_s=self.config.lease_ttl_s / 3,
        )

    def available(self, run: _Run) -> list[str]:
        now = self.clock.now()
        with self.lock:
            return sorted(v for v, at in self._asked.items()
                          if now - at <= self.available_window_s and not run.holds(v))

    def owns(self, lease_id: str) -> bool:
        return lease_id.startswith("tl-")

    def _lease(self, vehicle: VehicleRecord, lease_id: str) -> tuple[_Run, _TrainLease]:
        run = self._leases.get(lease_id)
        lease = run.leases.get(lease_id) if run is not None else None
        if run is None or lease is None:
            raise NotFound(f"training lease {lease_id!r} does not exist (a coordinator restart ends open rounds); "
                           "lease new work with POST /v1/leases")
        if lease.vehicle_id != vehicle.vehicle_id:
            raise Forbidden(f"lease {lease_id} belongs to another vehicle; a vehicle may touch only its own leases")
        return run, lease

    def check_owner(self, vehicle: VehicleRecord, lease_id: str) -> None:
        """NotFound / Forbidden unless the training lease exists and is this vehicle's; cheap, so it runs before a
        report's body is parsed."""
        with self.lock:
            self._lease(vehicle, lease_id)

    def _check_compute(self, lease: _TrainLease, compute_s: float) -> None:
        check_compute_s(compute_s, lease_id=lease.lease_id, issued_at=lease.issued_at, now=self.clock.now(),
                        slack_s=self.config.compute_slack_s)

    def _require_active(self, lease: _TrainLease) -> None:
        if lease.state == "active" and lease.deadline < self.clock.now():
            lease.state = "expired"
        if lease.state == "expired":
            raise LeaseExpired(f"training lease {lease.lease_id} expired at its deadline; lease new work")
        if lease.state == "cancelled":
            raise Conflict(f"round {lease.instructions.round} of job {lease.job_id} is closed; this lease's work "
                           "is no longer wanted. Lease new work with POST /v1/leases")
        if lease.state != "active":
            raise Conflict(f"lease {lease.lease_id} is {lease.state}, not active; lease new work")

    def renew(self, vehicle: VehicleRecord, lease_id: str) -> LeaseAck:
        with self.lock:
            _run, lease = self._lease(vehicle, lease_id)
            self._require_active(lease)
            lease.deadline = self.clock.now() + self.config.lease_ttl_s
            return LeaseAck(lease_id=lease_id, state="active", deadline=lease.deadline)

    def model(self, vehicle: VehicleRecord, job_id: str, have: int | None) -> tuple[dict[str, Any], list[bytes]]:
        """The global version a car's open lease of the job trains from: nothing if it holds it already, deltas
        from ``have``, or a snapshot."""
        run = self.runs.get(job_id)
        with self.lock:
            held = [lease for lease in (run.leases.values() if run is not None else ())
                    if lease.vehicle_id == vehicle.vehicle_id and lease.state == "active"]
            if run is None or not held:
                raise NotFound(f"vehicle {vehicle.vehicle_id} holds no open training lease of job {job_id!r}; "
                               "models are served only to cars training them")
        with run.strategy.lock:
            download = run.strategy.download(have, version=held[-1].instructions.base_version)
        header = {"from_version": download.from_version, "version": download.version, "digest": download.digest,
                  "full": download.full is not None}
        blobs = [download.full] if download.full is not None else list(download.deltas)
        return header, blobs

    def count_down(self, job_id: str, nbytes: int) -> None:
        run = self.runs.get(job_id)
        if run is not None:
            with self.lock:
                run.bytes_down += nbytes

    def update(self, vehicle: VehicleRecord, lease_id: str, report: UpdateReport, payload: bytes,
               nbytes: int) -> LeaseAck:
        """Validate a car's update against the global (never touching it) and queue it for the round loop."""
        with self.lock:
            run, lease = self._lease(vehicle, lease_id)
            if lease.state == "completed":
                return LeaseAck(lease_id=lease_id, state="completed")  # a retried report counts once
            self._require_active(lease)
            self._check_compute(lease, report.compute_s)
            ins = lease.instructions
            if (report.round, report.base_version) != (ins.round, ins.base_version):
                raise InvalidInput(f"update quotes round {report.round} / version {report.base_version}; lease "
                                   f"{lease_id} was for round {ins.round} / version {ins.base_version}")
            if report.steps_done > report.steps_planned or report.steps_planned != ins.local.steps:
                raise InvalidInput(f"update reports {report.steps_done} of {report.steps_planned} steps; the lease "
                                   f"planned {ins.local.steps} and steps_done cannot exceed that")
            update = ClientUpdate(
                client_id=vehicle.vehicle_id, round=report.round, base_version=report.base_version, payload=payload,
                num_examples=report.num_examples, steps_done=report.steps_done, steps_planned=report.steps_planned,
                examples_seen=report.examples_seen,
                train_loss=report.train_loss if report.train_loss is not None else float("nan"),
            )
        try:
            with run.strategy.lock:
                run.strategy.accept(update)  # raises InvalidInput / Conflict; the global is not touched either way
        except (InvalidInput, Conflict):
            run.rejected += 1
            raise
        with self.lock:
            if lease.state != "active":  # the round closed while the update was being checked
                self._require_active(lease)
            lease.state, lease.closed_at = "completed", self.clock.now()
            run.bytes_up += nbytes
            run.reports += 1
            run.updates.put(update)
        self.store.record_ledger(LedgerRecord(
            lease_id=lease_id, vehicle_id=vehicle.vehicle_id, job_id=run.job.job_id, items=0,
            examples=report.examples_seen, steps=report.steps_done, workload="train",
            compute_s=report.compute_s, cellular_bytes=report.cellular_bytes, wifi_bytes=report.wifi_bytes,
            at=self.clock.now(),
        ))
        return LeaseAck(lease_id=lease_id, state="completed")

    def fail(self, vehicle: VehicleRecord, lease_id: str, req: FailRequest) -> LeaseAck:
        state = "handed_back" if req.handback else "failed"
        with self.lock:
            run, lease = self._lease(vehicle, lease_id)
            if lease.state in ("handed_back", "failed"):
                return LeaseAck(lease_id=lease_id, state=lease.state)
            self._check_compute(lease, req.compute_s)
            if lease.state == "active":
                lease.state, lease.closed_at = state, self.clock.now()
        if not req.handback:
            log.warning("vehicle %s failed training lease %s: %s", vehicle.vehicle_id, lease_id, req.reason)
        self.store.record_ledger(LedgerRecord(
            lease_id=lease_id, vehicle_id=vehicle.vehicle_id, job_id=run.job.job_id, items=0, workload="train",
            compute_s=req.compute_s, cellular_bytes=req.cellular_bytes, wifi_bytes=req.wifi_bytes,
            at=self.clock.now(), accepted=False,
        ))
        return LeaseAck(lease_id=lease_id, state=state)

    def active_leases(self, vehicle_id: str) -> list[str]:
        with self.lock:
            return [lid for lid, run in self._leases.items()
                    if run.leases[lid].vehicle_id == vehicle_id and run.leases[lid].state == "active"]

    def release_vehicle(self, vehicle_id: str) -> None:
        """A revoked car: withdraw its offers and close its training leases."""
        with self.lock:
            self._asked.pop(vehicle_id, None)
            for run in self.runs.values():
                run.offers.pop(vehicle_id, None)
                for lease in run.leases.values():
                    if lease.vehicle_id == vehicle_id and lease.state == "active":
                        lease.state = "failed"

    def expire_due(self) -> int:
        now = self.clock.now()
        expired = 0
        with self.lock:
            for run in self.runs.values():
                for lease in run.leases.values():
                    if lease.state == "active" and lease.deadline < now:
                        lease.state, lease.closed_at = "expired", now
                        expired += 1
                # Closed leases are kept a while so a retried report is answered, then forgotten.
                old = [lid for lid, lease in run.leases.items()
                       if lease.closed_at is not None and now - lease.closed_at > self.config.lease_ttl_s]
                for lease_id in old:
                    run.leases.pop(lease_id)
                    self._leases.pop(lease_id, None)
            stale = [v for v, at in self._asked.items() if now - at > self.available_window_s]
            for v in stale:
                del self._asked[v]
        return expired

    def _shard(self, vehicle_id: str, num_shards: int) -> int:
        """A car's shard: its enrollment rank modulo the shards, stable across restarts and the same on every run."""
        rank = self._shards.get(vehicle_id)
        if rank is None:
            order = sorted(self.store.list_vehicles(), key=lambda v: (v.enrolled_at, v.vehicle_id))
            self._shards = {v.vehicle_id: i for i, v in enumerate(order)}
            rank = self._shards.get(vehicle_id, 0)
        return rank % num_shards

    # --- the round loop -----------------------------------------------------------------------------------------
    def _start(self, job: JobRecord, strategy: Strategy) -> None:
        submit = TrainSubmit.model_validate(job.spec)
        run = _Run(job=job, submit=submit, data=_data_spec(job.spec["data"]), strategy=strategy)
        if job.checkpoint_digest:
            meta = self._checkpoint_meta(job)
            run.bytes_up, run.bytes_down = meta.get("bytes_up", 0), meta.get("bytes_down", 0)
            run.reports, run.rejected = meta.get("reports", 0), meta.get("rejected", 0)
        self.runs[job.job_id] = run
        run.thread = threading.Thread(target=self._drive, args=(run,), name=f"train-{job.job_id}", daemon=True)
        run.thread.start()

    def _drive(self, run: _Run) -> None:
        job, strategy = run.job, run.strategy
        try:
            if job.state == JobState.QUEUED:
                self.store.start_job(job.job_id)
            evaluate = self._evaluator(run)
            strategy.run(LeaseFleet(self, run), run.submit.rounds, evaluate_fn=evaluate,
                         on_version=lambda s: self._checkpoint(run))
        except _Stopped:
            return
        except _TargetReached:
            pass
        except Exception as exc:  # noqa: BLE001 - the job fails with the reason; the coordinator goes on
            log.exception("training job %s failed", job.job_id)
            self.store.finish_job(job.job_id, JobState.FAILED, self.clock.now(), error=str(exc)[:2000])
            return
        finally:
            with self.lock:
                run.offers.clear()
        self._finish(run)

    def _evaluator(self, run: _Run) -> Callable[[torch.Tensor], dict[str, float]]:
        data = run.data
        x, y = build_eval_set(data, max_windows=run.submit.eval_max)
        n = run.submit.eval_max
        return make_evaluator(build_model(run.job.model), x[:n], y[:n])

    def _checkpoint(self, run: _Run) -> None:
        """Store the strategy's full state as an artifact and point the job at it; then check the target."""
        strategy = run.strategy
        with strategy.lock:
            blob = strategy.state_bytes(extra=self._counters(run))
            version = strategy.version
            latest = strategy.history[-1] if strategy.history else {}
        digest = self.artifacts.put_bytes(blob)
        self.store.add_artifact(digest, len(blob), f"tenant:{run.job.tenant}", self.clock.now())
        self.store.save_checkpoint(run.job.job_id, version, digest)
        log.info("job %s version %d: %s", run.job.job_id, version,
                 {k: round(v, 4) for k, v in latest.items() if isinstance(v, float)})
        if run.stop.is_set():
            raise _Stopped()
        target = run.submit.target_metric or {}
        if target and all(_reached(name, latest.get(name), goal) for name, goal in target.items()):
            raise _TargetReached()

    def _counters(self, run: _Run) -> dict[str, int]:
        return {"bytes_up": run.bytes_up, "bytes_down": run.bytes_down, "reports": run.reports,
                "rejected": run.rejected}

    def _finish(self, run: _Run) -> None:
        blob = final_model_bytes(run.job.model, run.strategy, self._counters(run))
        digest = self.artifacts.put_bytes(blob)
        now = self.clock.now()
        self.store.add_artifact(digest, len(blob), f"tenant:{run.job.tenant}", now)
        self.store.finish_job(run.job.job_id, JobState.DONE, now, result_digest=digest)
        log.info("training job %s done at version %d", run.job.job_id, run.strategy.version)


def final_model_bytes(model_name: str, strategy: Strategy, counters: Mapping[str, int] | None = None) -> bytes:
    """The trained model as safetensors (one tensor per parameter, loadable with ``load_state_dict``); its
    metadata holds the model name, strategy, version and the per-version metrics history."""
    model = build_model(model_name)
    with strategy.lock:
        FlatLayout.of(model).load(model, strategy.params)
        meta = {"model": model_name, "strategy": strategy.name, "version": strategy.version,
                "round": strategy.round, "history": _jsonable(strategy.history), **(counters or {})}
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    return st_save(tensors, metadata={"fleetgrid": json.dumps(meta, sort_keys=True)})


def _data_spec(data: Any) -> DataSpec:
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


def _reached(name: str, value: float | None, goal: float) -> bool:
    if value is None:
        return False
    return value <= goal if name == "loss" else value >= goal


def _jsonable(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History rows with non-finite floats (a NaN loss) as None, so they are valid JSON."""
    out = []
    for row in history:
        out.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return out
