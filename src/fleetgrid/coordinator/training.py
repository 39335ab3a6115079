"""Training jobs on the coordinator: the strategy's round loop, with the fleet's leases as its transport.

Each running training job has one driver thread that runs :meth:`Strategy.run` over a :class:`LeaseFleet`. The
fleet side is event-driven: a car asking for work (``POST /v1/leases``) marks itself available; the round loop
offers chosen cars a share of the round, each a unit row only that car may lease until the offer expires; the
car's next ask leases it like any unit (the same lease rows, renewals and expiry as every workload). Every byte
travels as an artifact (:mod:`.train_artifacts`): the global versions down, the cars' updates up. A car's report
(``POST /v1/train/leases/{id}/update``, JSON naming its uploaded update) is validated at once, so a bad one is
refused with a 4xx and never reaches the global; an accepted one is stored (its record as the unit's result, the
unit done, the lease completed and metered in one transaction) before it is acknowledged, then queued for the
loop. After every new global version the strategy's whole state is checkpointed as an artifact, marking the
updates it folded in; a coordinator killed mid-round resumes from its last version, feeds the loop every
acknowledged update not yet in it, and reopens the round they belong to, so the cars' work is not lost.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from ..clock import Clock
from ..core import LeaseState, UnitState
from ..errors import Conflict, FleetgridError, Forbidden, InvalidInput, LeaseExpired, NotFound
from ..protocol import JobState, LeaseAck, TrainGrant, TrainingProgress, TrainSubmit, UpdateReport
from ..workloads.training import (
    DataSpec,
    FlatLayout,
    Strategy,
    TrainInstructions,
    build_eval_set,
    build_local_dataset,
    build_model,
    decode,
    heldout_prior,
    make_evaluator,
    make_strategy,
    strategy_from_state_bytes,
    to_dict,
)
from ..workloads.training.robust import check_examples
from ..workloads.training.secagg import RoundPlan
from ..workloads.training.strategies import read_metadata
from ..workloads.training.tasks import MODELS, shard_sizes
from .artifacts import ArtifactStore, sha256_hex
from .config import CoordinatorConfig
from .metering import check_compute_s
from .reports import ReportCheck
from .rounds import (
    LeaseFleet,
    Report,
    Run,
    Stopped,
    TargetReached,
    car_shards,
    check_lease_support,
    check_plan,
    client_update,
    data_spec,
    final_model_bytes,
    jsonable,
    partial_updates,
    privacy_progress,
    reached,
)
from .secure_rounds import SecureRounds, check_secure_job
from .store import JobRecord, LeaseRecord, LedgerRecord, Store, UnitRecord, VehicleRecord
from .store.billing_base import RefusalRecord
from .train_artifacts import TrainingArtifacts, job_owner, read_record, report_holds, update_record

__all__ = ["TrainingService"]

log = logging.getLogger("fleetgrid.coordinator.training")

_LIVE = (JobState.QUEUED, JobState.RUNNING)


class TrainingService:
    """Every training job this coordinator drives. Route handlers call in from the thread pool; each job's round
    loop runs on its own thread; ``lock`` guards the in-memory parts they share (who asked for work lately)."""

    def __init__(self, store: Store, artifacts: ArtifactStore, config: CoordinatorConfig, clock: Clock) -> None:
        self.store, self.artifacts, self.config, self.clock = store, artifacts, config, clock
        self.lock = threading.RLock()
        self.runs: dict[str, Run] = {}
        self.notify: Callable[[list[str]], None] = lambda vehicles: None
        """Wakes these long-polling cars (work was offered to them); the app points it at its long-polls."""
        self.available_window_s = 5.0
        """A car that asked for work this recently counts as available for a round: it is long-polling, or it just
        took an inference unit (then the offer waits for its next ask). A car gone quiet drops out quickly."""
        self.offer_ttl_s = 15.0
        """An offer not taken up by then is withdrawn, so the round loop offers that share to another car."""
        self._asked: dict[str, float] = {}
        self._shards: dict[str, int] = {}
        self._turns: dict[str, int] = {}  # car -> training leases granted it, for a car with several shards
        self.replica = "r-" + uuid.uuid4().hex[:12]
        """This coordinator process, as the driver of the training jobs it claims."""
        self.claim_ttl_s = config.driver_claim_ttl_s
        """A replica renews its claims every sixth of this; one that died is taken over after at most this long."""
        self._keeper: threading.Thread | None = None
        self._starting = threading.Lock()
        self._halt = threading.Event()
        self._numel: dict[str, int] = {}
        self.files = TrainingArtifacts(store, artifacts, clock)
        """The jobs' global versions and the cars' updates in the artifact store."""
        self.lease_closed: Callable[[str, str], None] = lambda kind, outcome: None
        """Told ('train', 'completed') once an update's report closed its lease: the metrics."""
        self.reports = ReportCheck(store, clock.now)
        self.secure = SecureRounds(self)  # secure-aggregation rounds: those this replica drives, and the relay
        self.any_live = True
        """Whether a training job is live (any replica's): refreshed with the claims every tick; while False no
        unit is offered to a particular car, so leasing need not look for one."""

    # --- tenants ------------------------------------------------------------------------------------------------
    def submit(self, tenant: str, req: TrainSubmit) -> JobRecord:
        """Validate everything a car or the round loop would trip on later, then start the job."""
        if req.model not in MODELS:
            raise InvalidInput(f"unknown training model {req.model!r}; accepted: {sorted(MODELS)}")
        data = data_spec(req.data)
        init = FlatLayout.of(model := build_model(req.model, seed=req.init_seed)).flatten(model)
        strategy = make_strategy(req.strategy, init, req.settings)
        check_secure_job(strategy)
        check_lease_support(strategy)
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
        unknown = sorted(set(req.target_metric or {}) - {"accuracy", "loss"})
        if unknown:
            raise InvalidInput(f"unknown target metric(s) {unknown}; accepted: accuracy, loss")
        now = self.clock.now()
        job_id = "job-" + uuid.uuid4().hex[:12]
        spec = req.model_dump(mode="json") | {"data": to_dict(data), "settings": to_dict(strategy.config)}
        job = JobRecord(job_id=job_id, tenant=tenant, name=req.name or job_id, kind="train", model=req.model,
                        spec=spec, items=req.rounds, units_total=req.rounds, created_at=now)
        self.store.create_job(job, [])
        self.any_live = True
        if self._claim(job_id):
            self._start(job, strategy)
        return job

    # --- which replica drives which job -------------------------------------------------------------------------
    def start(self) -> int:
        """Drive every live training job no other replica drives, and keep doing so (renewing this replica's claims
        and taking over jobs whose driver died) on a background thread; returns how many jobs it took now."""
        taken = self.take_over()
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep, name="fleetgrid-train-keeper", daemon=True)
            self._keeper.start()
        return taken

    def _keep(self) -> None:
        while not self._halt.wait(self.claim_ttl_s / 6):
            try:
                self.take_over()
            except Exception:  # noqa: BLE001 - a passing database error: try again at the next tick
                log.exception("renewing training job claims failed")

    def _claim(self, job_id: str) -> bool:
        now = self.clock.now()
        # On a store no other process can open, a claim left by this coordinator's previous life is void at once.
        seen = math.inf if self.store.single_process else now
        return self.store.claim_job(job_id, self.replica, seen, now + self.claim_ttl_s)

    def take_over(self) -> int:
        """Renew this replica's claims (a run whose claim is lost stops: another replica drives it now) and resume
        every live training job nobody drives; returns how many were taken."""
        for job_id, run in list(self.runs.items()):
            if run.thread is not None and not run.thread.is_alive():
                self.runs.pop(job_id, None)
                self.store.drop_claim(job_id, self.replica)
            elif not self._claim(job_id):
                log.warning("training job %s is driven by another coordinator now; this one stops driving it", job_id)
                run.stop.set()
                self.runs.pop(job_id, None)
        taken = 0
        live = [job for job in self.store.list_jobs() if job.kind == "train" and job.state in _LIVE]
        self.any_live = bool(live)
        for job in live:
            if job.job_id in self.runs or self._halt.is_set():
                continue
            if self._claim(job.job_id) and self._resume(job):
                taken += 1
        return taken

    def _resume(self, job: JobRecord) -> bool:
        try:
            strategy = self._strategy_at_checkpoint(job)
        except Exception as exc:  # noqa: BLE001 - a job that cannot resume fails; the others go on
            log.exception("training job %s cannot resume", job.job_id)
            self.store.finish_job(job.job_id, JobState.FAILED, self.clock.now(), error=f"cannot resume: {exc}")
            return False
        if not self._start(job, strategy):
            return False
        log.info("driving training job %s from version %d", job.job_id, strategy.version)
        return True

    def _strategy_at_checkpoint(self, job: JobRecord) -> Strategy:
        if job.checkpoint_digest:
            return strategy_from_state_bytes(self.artifacts.read_bytes(job.checkpoint_digest))
        model = build_model(job.model, seed=job.spec.get("init_seed", 0))
        init = FlatLayout.of(model).flatten(model)
        return make_strategy(job.spec["strategy"], init, job.spec["settings"])

    def cancel(self, job_id: str) -> None:
        run = self.runs.get(job_id)
        if run is not None:
            run.stop.set()
            self.close_round(run)

    def close_round(self, run: Run) -> None:
        """Withdraw the job's offers and cancel its open leases (a late update then gets a 409)."""
        self.store.cancel_open_units(run.job.job_id, self.clock.now())

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self._halt.set()
        for run in list(self.runs.values()):
            run.stop.set()
        for job_id, run in list(self.runs.items()):
            if run.thread is not None:
                run.thread.join(timeout_s)
            self.store.drop_claim(job_id, self.replica)  # another replica takes over at once
        if self._keeper is not None:
            self._keeper.join(timeout_s)

    def progress(self, job: JobRecord) -> TrainingProgress:
        run = self.runs.get(job.job_id)
        if run is not None:
            s = run.strategy
            with s.lock:
                history = list(s.history)
                version, rnd = s.version, s.round
                privacy = s.privacy_report()
            return TrainingProgress(
                version=version, target_versions=job.units_total, round=rnd, strategy=s.name,
                bytes_up=run.bytes_up, bytes_down=run.bytes_down, reports=run.reports, rejected=run.rejected,
                checkpoint=job.checkpoint_digest, history=jsonable(history), driver=self.replica,
                partial_updates=partial_updates(history), handbacks=job.preemptions,
                privacy=privacy_progress(privacy), secure_aggregation=s.config.secure_aggregation,
            )
        meta = self._checkpoint_meta(job)
        return TrainingProgress(
            version=job.units_done, target_versions=job.units_total, round=meta.get("round", 0),
            strategy=job.spec.get("strategy", "?"), bytes_up=meta.get("bytes_up", 0),
            bytes_down=meta.get("bytes_down", 0), reports=meta.get("reports", 0), rejected=meta.get("rejected", 0),
            checkpoint=job.checkpoint_digest, history=jsonable(meta.get("history", [])), driver=job.driver,
            partial_updates=partial_updates(meta.get("history", [])), handbacks=job.preemptions,
            privacy=privacy_progress(meta.get("privacy")),
            secure_aggregation=bool(job.spec.get("settings", {}).get("secure_aggregation")),
        )

    def _checkpoint_meta(self, job: JobRecord) -> dict[str, Any]:
        digest = job.result_digest if job.state == JobState.DONE else job.checkpoint_digest
        if not digest or not self.artifacts.exists(digest):
            return {}
        return read_metadata(self.artifacts.read_bytes(digest))

    # --- vehicles -----------------------------------------------------------------------------------------------
    def asked(self, vehicle_id: str) -> None:
        """A car asked for work: it counts as available for the next round of every job for a while."""
        with self.lock:
            self._asked[vehicle_id] = self.clock.now()

    def available(self, run: Run) -> list[str]:
        """Cars to offer a share of the round: those asking for work lately, less those busy with this job. With
        replicas, cars asking another replica count too (seen eligible within the online window)."""
        now = self.clock.now()
        busy = set(self.store.live_offers(run.job.job_id, now))
        with self.lock:
            asked = {v for v, at in self._asked.items() if now - at <= self.available_window_s}
        if not self.store.single_process:
            asked |= set(self.store.recently_eligible(now - self.config.online_window_s))
        return sorted(asked - busy)

    def offer(self, run: Run, assignments: Mapping[str, TrainInstructions], secagg: RoundPlan | None = None) -> None:
        """Offer each car its share of the round: a unit only that car may lease, until the offer expires (with
        ``secagg``, the secure round's plan)."""
        published = self.files.publish(run)
        now = self.clock.now()
        job_id = run.job.job_id
        offers = []
        for vehicle_id, ins in assignments.items():
            if ins.base_version != published:  # the loop dispatches the version it holds: a bug worth stopping for
                raise Conflict(f"job {job_id}: a share of version {ins.base_version} offered at version {published}")
            files = self.files.grant_files(run, published, type(run.strategy).keep_versions)
            idx, run.next_idx = run.next_idx, run.next_idx + 1
            offers.append(UnitRecord(
                unit_id=f"{job_id}:t{idx}", job_id=job_id, idx=idx, replica=0, start_item=0,
                end_item=ins.local.steps, input_digest=files["snapshot"]["digest"], input_format="train",
                target_vehicle=vehicle_id, offer_expires=now + self.offer_ttl_s,
                payload={"round": ins.round, "base_version": ins.base_version, "model_digest": ins.model_digest,
                         "local": to_dict(ins.local), "seed": ins.seed, "files": files}
                | self.secure.payload(secagg, vehicle_id),
            ))
        self.store.offer_units(offers)
        self.notify(list(assignments))

    def grant(self, job: JobRecord, unit: UnitRecord, lease: LeaseRecord) -> TrainGrant:
        """The lease of an offered share, as the car sees it."""
        ins = unit.payload or {}
        data = data_spec(job.spec["data"])
        files = ins.get("files")
        if files is None:  # offered by a coordinator that still served models on its own route
            raise Conflict(f"share {unit.unit_id} of job {job.job_id} names no model artifacts; lease new work")
        return TrainGrant(
            lease_id=lease.lease_id, job_id=job.job_id, round=ins["round"], base_version=ins["base_version"],
            model_digest=ins["model_digest"], snapshot=files["snapshot"], deltas=files["deltas"],
            compact=files.get("compact"), model=job.model,
            local=ins["local"], seed=ins["seed"],
            data=to_dict(data), shard=self._shard(lease.vehicle_id, data.num_vehicles), deadline=lease.deadline,
            renew_every_s=self.config.lease_ttl_s / 3, secagg=ins.get("secagg"),
        )

    def _owned(self, vehicle: VehicleRecord, lease_id: str) -> tuple[LeaseRecord, UnitRecord, JobRecord]:
        context = self.store.lease_context(lease_id)
        if context is None or context[2].kind != "train":
            raise NotFound(f"training lease {lease_id!r} does not exist; lease new work with POST /v1/leases")
        if context[0].vehicle_id != vehicle.vehicle_id:
            raise Forbidden(f"lease {lease_id} belongs to another vehicle; a vehicle may touch only its own leases")
        return context

    def _require_active(self, lease: LeaseRecord, unit: UnitRecord) -> None:
        if lease.state == LeaseState.ACTIVE and lease.deadline < self.clock.now():
            raise LeaseExpired(f"training lease {lease.lease_id} expired at its deadline; lease new work")
        if lease.state == LeaseState.EXPIRED:
            raise LeaseExpired(f"training lease {lease.lease_id} expired at its deadline; lease new work")
        if lease.state == LeaseState.CANCELLED:
            raise Conflict(f"round {(unit.payload or {}).get('round')} of job {lease.job_id} is closed; this lease's "
                           "work is no longer wanted. Lease new work with POST /v1/leases")
        if lease.state != LeaseState.ACTIVE:
            raise Conflict(f"lease {lease.lease_id} is {lease.state}, not active; lease new work")

    def counted_down(self, job_ids: list[str], chunks: Iterator[bytes]) -> Iterator[bytes]:
        """``chunks`` of these jobs' global versions on their way to a car, counted as they go (by the replica
        that drives the job; a version two jobs share counts for both)."""
        for chunk in chunks:
            runs = [run for run in map(self.runs.get, job_ids) if run is not None]
            with self.lock:
                for run in runs:
                    run.bytes_down += len(chunk)
            yield chunk

    def update(self, vehicle: VehicleRecord, lease_id: str, report: UpdateReport) -> LeaseAck:
        """Validate a car's report and the update artifact it names against the global (never touching it), store
        the report's record, close the lease, and queue the update for the round loop. Nothing is written before
        every check passed. Once this answers, the update survives a restart: the record is the unit's result and
        the unit is done, and a coordinator that resumes the job feeds the round loop every such update again."""
        lease, unit, job = self._owned(vehicle, lease_id)
        record = update_record(vehicle.vehicle_id, report)
        digest = sha256_hex(record)
        if lease.state == LeaseState.COMPLETED:
            if lease.result_digest == digest:
                return LeaseAck(lease_id=lease_id, state=LeaseState.COMPLETED)  # a retried report counts once
            raise Conflict(f"lease {lease_id} already reported a different update; a lease reports once")
        self._require_active(lease, unit)
        self.secure.refuse_plain(lease_id, unit)
        check_compute_s(report.compute_s, lease_id=lease_id, issued_at=lease.issued_at, now=self.clock.now(),
                        slack_s=self.config.compute_slack_s)
        check_plan(report, unit.payload or {}, f"update of lease {lease_id}")
        run = self.runs.get(job.job_id)
        payload = self.files.read_update(vehicle.vehicle_id, report.update, self._numel_of(job), job.model)
        update = client_update(vehicle.vehicle_id, report, payload)
        cap = self.example_cap(data_spec(job.spec["data"]), vehicle.vehicle_id)
        if run is not None:
            try:
                with run.strategy.lock:  # raises InvalidInput / Conflict; the global is not touched
                    run.strategy.accept(update, max_examples=cap)
            except (InvalidInput, Conflict) as exc:
                with self.lock:
                    run.rejected += 1
                self.store.record_refusal(RefusalRecord(  # unpaid, and its car's owner is told why
                    lease_id=lease_id, vehicle_id=vehicle.vehicle_id, job_id=job.job_id, at=self.clock.now(),
                    reason=exc.message, compute_s=report.compute_s, steps=report.steps_done,
                    examples=report.examples_seen))
                raise
        else:  # another replica drives the job: check what can be checked here; it validates again when folding in
            check_examples(update, cap)
            self._check_shape(job, payload)
        self.artifacts.put_bytes(record)
        usage, implausible = self.reports.check_update(vehicle, lease, unit, job.model, report,
                                                       len(payload) + len(record))
        entry = LedgerRecord(
            lease_id=lease_id, vehicle_id=vehicle.vehicle_id, job_id=job.job_id, items=0, workload="train",
            examples=usage.examples, steps=usage.steps, compute_s=usage.accelerator_s,
            cellular_bytes=usage.cellular_bytes, wifi_bytes=usage.wifi_bytes, at=self.clock.now(),
        )
        self.store.complete(lease, unit, digest, entry, self.clock.now(),
                            artifact=(len(record), job_owner(job.job_id)))
        self.reports.record(vehicle.vehicle_id, implausible)
        self.store.after_commit(lambda: self.lease_closed(job.kind, LeaseState.COMPLETED.value))
        if run is not None:
            with self.lock:
                run.bytes_up += len(payload)
                run.reports += 1
                run.seen.add(unit.idx)
            run.updates.put(Report(unit.idx, digest, update,
                                   release=report_holds(job.job_id, digest, vehicle.vehicle_id, report.update)))
        return LeaseAck(lease_id=lease_id, state=LeaseState.COMPLETED)

    def _numel_of(self, job: JobRecord) -> int:
        run = self.runs.get(job.job_id)
        if run is not None:
            return run.strategy.numel
        numel = self._numel.get(job.model)
        if numel is None:
            numel = self._numel[job.model] = FlatLayout.of(build_model(job.model)).numel
        return numel

    def _check_shape(self, job: JobRecord, payload: bytes) -> None:
        numel = self._numel_of(job)
        delta = decode(payload)  # InvalidInput on a malformed or non-finite payload
        if delta.shape != (numel,):
            raise InvalidInput(f"update has shape {delta.shape}; model {job.model!r} needs ({numel},)")

    def collect(self, run: Run) -> int:
        """Queue the updates other replicas acknowledged for this job since the last look; returns how many."""
        found = 0
        for unit in self.store.unconsumed_results(run.job.job_id):
            if unit.idx in run.seen:
                continue
            run.seen.add(unit.idx)
            digest = unit.result_digest or ""
            try:
                vehicle_id, report = read_record(self.artifacts.read_bytes(digest))
                payload = self.artifacts.read_bytes(report.update)
            except (FleetgridError, ValueError) as exc:
                log.warning("job %s: stored update of unit %s is unreadable (%s); dropped", run.job.job_id,
                            unit.unit_id, exc)
                run.consumed.append((unit.idx, digest))
                run.spent.append((job_owner(run.job.job_id), digest))
                continue
            with self.lock:
                run.bytes_up += len(payload)
                run.reports += 1
            run.updates.put(Report(unit.idx, digest, client_update(vehicle_id, report, payload),
                                   release=report_holds(run.job.job_id, digest, vehicle_id, report.update)))
            found += 1
        return found

    def release_vehicle(self, vehicle_id: str) -> None:
        """A revoked car is no longer available (its leases are released with every other workload's)."""
        with self.lock:
            self._asked.pop(vehicle_id, None)

    def expire_due(self) -> int:
        """Withdraw offers nobody took in time and forget cars that stopped asking; returns the offers withdrawn.
        (Training leases past their deadline expire with every other lease.)"""
        now = self.clock.now()
        withdrawn = self.store.cancel_expired_offers(now)
        with self.lock:
            for v in [v for v, at in self._asked.items() if now - at > self.available_window_s]:
                del self._asked[v]
        return withdrawn

    def _shard(self, vehicle_id: str, num_shards: int) -> int:
        """The shard a car trains under its next training lease. Its shards come from its enrollment rank (stable
        across restarts, the same on every run; see ``car_shards``): one while there are as many cars as shards,
        else several, taken in turn lease by lease, so that a lone car trains on the whole split, not on one shard
        of it again and again. (The turns are the car's, over all its training leases: two jobs it trains at once
        share them out.)"""
        owned = self.owned_shards(vehicle_id, num_shards)
        if len(owned) == 1:
            return owned[0]
        with self.lock:
            turn = self._turns.get(vehicle_id, 0)
            self._turns[vehicle_id] = turn + 1
        return owned[turn % len(owned)]

    def owned_shards(self, vehicle_id: str, num_shards: int) -> list[int]:
        rank = self._shards.get(vehicle_id)
        if rank is None:
            order = sorted(self.store.list_vehicles(), key=lambda v: (v.enrolled_at, v.vehicle_id))
            self._shards = {v.vehicle_id: i for i, v in enumerate(order)}
            rank = self._shards.get(vehicle_id, 0)
        return car_shards(rank, len(self._shards), num_shards)

    def example_cap(self, data: DataSpec, vehicle_id: str) -> int:
        """The most examples a report may claim: the size of the job's largest shard (an honest car reports its
        shard's size). Not the shard this process would give the car now: that map lives in memory, so after a
        restart (or on another replica) a car's acknowledged update from before would be checked against another
        shard and an honest report refused, leaving its round short of reports."""
        return max(shard_sizes(data))

    # --- the round loop -----------------------------------------------------------------------------------------
    def _start(self, job: JobRecord, strategy: Strategy) -> bool:
        """Drive ``job`` here, unless this process already does (a submission and the keeper's tick can race to
        start the same job: one round loop per job per process, or two would offer units under the same ids)."""
        with self._starting:
            if job.job_id in self.runs:
                return False
            submit = TrainSubmit.model_validate(job.spec)
            run = Run(job=job, submit=submit, data=data_spec(job.spec["data"]), strategy=strategy)
            if job.checkpoint_digest:
                meta = self._checkpoint_meta(job)
                run.bytes_up, run.bytes_down = meta.get("bytes_up", 0), meta.get("bytes_down", 0)
                run.reports, run.rejected = meta.get("reports", 0), meta.get("rejected", 0)
                self.files.from_meta(run, meta)
            run.next_idx = self.store.next_unit_idx(job.job_id)
            self._refeed(run)
            self.runs[job.job_id] = run
        run.thread = threading.Thread(target=self._drive, args=(run,), name=f"train-{job.job_id}", daemon=True)
        run.thread.start()
        return True

    def _refeed(self, run: Run) -> None:
        """On taking a job over (a restart, or another replica's death): queue every update acknowledged but not
        yet folded into the checkpoint, and reopen the round attempt they (and any share still out on a car)
        belong to, so none of that work is lost."""
        waiting = self.collect(run)
        acked = {u.idx for u in self.store.unconsumed_results(run.job.job_id)}
        open_or_acked = [u for u in self.store.units_of(run.job.job_id)
                         if u.state in (UnitState.PENDING, UnitState.LEASED) or u.idx in acked]
        latest = max((int((u.payload or {}).get("round", 0)) for u in open_or_acked), default=0)
        if latest > run.strategy.round:
            run.strategy.reopen_round(latest)
        if waiting:
            log.info("job %s resumes with %d acknowledged updates of round %d", run.job.job_id, waiting, latest)

    def _drive(self, run: Run) -> None:
        job, strategy = run.job, run.strategy
        try:
            if job.state == JobState.QUEUED:
                self.store.start_job(job.job_id)
            model, x, y = self._held_out(run)
            strategy.target_prior = heldout_prior(model, x, y)  # what the cars' logit adjustment aims at
            evaluate = make_evaluator(model, x, y)
            strategy.run(LeaseFleet(self, run), run.submit.rounds, evaluate_fn=evaluate,
                         on_version=lambda s: self._checkpoint(run))
        except Stopped:
            ended = self.store.get_job(job.job_id)
            if ended is not None and ended.state not in _LIVE:  # cancelled, not handed to another replica
                self.files.release_job(job.job_id, run.spent)
            return
        except TargetReached:
            pass
        except Exception as exc:  # noqa: BLE001 - the job fails with the reason; the coordinator goes on
            log.exception("training job %s failed", job.job_id)
            self.store.finish_job(job.job_id, JobState.FAILED, self.clock.now(), error=str(exc)[:2000])
            self.files.release_job(job.job_id, run.spent)
            return
        self._finish(run)
        self.files.release_job(job.job_id, run.spent)

    def _held_out(self, run: Run) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
        """The job's model and the held-out (x, y) every new global is scored on (``eval_max`` of them)."""
        x, y = build_eval_set(run.data, max_windows=run.submit.eval_max)
        n = run.submit.eval_max
        return build_model(run.job.model), x[:n], y[:n]

    def _checkpoint(self, run: Run) -> None:
        """Store the strategy's full state as an artifact and point the job at it; then check the target."""
        strategy = run.strategy
        self.files.publish(run)  # before the state: the checkpoint records what this version published
        stale = self.files.prune(run, strategy.version, strategy.max_staleness, type(strategy).keep_versions)
        with strategy.lock:
            blob = strategy.state_bytes(extra={**self._counters(run), "files": self.files.to_meta(run)})
            version = strategy.version
            latest = strategy.history[-1] if strategy.history else {}
        digest = self.artifacts.put_bytes(blob)
        self.store.add_artifact(digest, len(blob), f"tenant:{run.job.tenant}", self.clock.now())
        consumed, run.consumed = run.consumed, []
        spent, run.spent = run.spent, []
        if not self.store.save_checkpoint(run.job.job_id, version, digest, consumed, driver=self.replica):
            log.warning("job %s: version %d not saved, another coordinator drives the job now", run.job.job_id,
                        version)
            raise Stopped()
        self.files.release(stale + spent)
        log.info("job %s version %d: %s", run.job.job_id, version,
                 {k: round(v, 4) for k, v in latest.items() if isinstance(v, float)})
        if run.stop.is_set():
            raise Stopped()
        target = run.submit.target_metric or {}
        if target and all(reached(name, latest.get(name), goal) for name, goal in target.items()):
            raise TargetReached()

    def _counters(self, run: Run) -> dict[str, int]:
        return {"bytes_up": run.bytes_up, "bytes_down": run.bytes_down, "reports": run.reports,
                "rejected": run.rejected}

    def _finish(self, run: Run) -> None:
        blob = final_model_bytes(run.job.model, run.strategy, self._counters(run))
        digest = self.artifacts.put_bytes(blob)
        now = self.clock.now()
        self.store.add_artifact(digest, len(blob), f"tenant:{run.job.tenant}", now)
        self.store.finish_job(run.job.job_id, JobState.DONE, now, result_digest=digest)
        log.info("training job %s done at version %d", run.job.job_id, run.strategy.version)
