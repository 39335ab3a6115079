"""Secure-aggregation rounds of training jobs on the coordinator: a round's cohort, the protocol's coordinator side
(:class:`~fleetgrid.workloads.training.secagg.SecAggCoordinator`) fed one car message at a time from the routes,
and the driver thread walking it through its phases with a deadline each.

The round's state lives in memory on the replica that drives the job (its round loop runs there): a car whose
request reaches another replica is refused with a 409 naming the driver. Keeping the phase messages in the shared
store, as plain updates are, would let any replica take them; until then a secure job needs its cars to reach the
driving replica (one coordinator, or sticky routing by job).

Phases: the cohort is fixed when the round's work is offered (no top-ups: the masks of a cohort cancel only among
its own members). Each car trains, then advertises its keys; advertising closes once every car advertised or the
round deadline passed. Sharing keys, masked input and unmasking then each wait ``secagg_phase_s``; a car missing
at the end of a phase has dropped. Too many dropouts abandon the round (no model step; :class:`TooFewSurvivors`);
a car whose revealed shares do not match its dealers' commitments is named and loses reputation.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core import LeaseState
from ..errors import Conflict, DishonestShare, FleetgridError, InvalidInput, TooFewSurvivors
from ..protocol import UpdateReport
from ..secagg_wire import (
    EncryptedShareBody,
    KeyAdvertisementBody,
    MaskedBody,
    SecAggAck,
    SecAggDownlink,
    ShareBundleBody,
    UnmaskBody,
    plan_to_wire,
)
from ..workloads.training import Strategy
from ..workloads.training.secagg import MaskedInput, Phase, RoundPlan, SecAggCoordinator, decode_sum
from ..workloads.training.secure import SecureSum, round_quantization
from .reputation import Verdict
from .rounds import Run, Stopped
from .store import LedgerRecord, UnitRecord, VehicleRecord
from .train_artifacts import job_owner, report_holds, update_record

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .training import TrainingService

__all__ = ["SecureRound", "SecureRounds", "check_secure_job"]

log = logging.getLogger("fleetgrid.coordinator.secure_rounds")

_RETRY_S = 0.25
"""How soon a car asks again for a phase's part that is not ready."""
_ORDER = [Phase.ADVERTISING, Phase.SHARING, Phase.MASKING, Phase.UNMASKING, Phase.DONE]
_NEEDS = {"share": Phase.SHARING, "masked": Phase.MASKING, "unmask": Phase.UNMASKING}
"""The phase the coordinator must have reached before a car can fetch its part for the phase of that name."""


def check_secure_job(strategy: Strategy) -> None:
    """InvalidInput unless a secure round of this job can be planned: a clip to quantize under, a cohort of at
    least 3 cars that survives ``secagg_max_dropout``, and a grid whose sums fit the modulus. Nothing without it."""
    if not strategy.config.secure_aggregation:
        return
    rounds = strategy.config.rounds
    if rounds.clients_per_round < 3:
        raise InvalidInput(f"secure aggregation needs clients_per_round >= 3 (a cohort whose masks hide each car), "
                           f"got {rounds.clients_per_round}")
    cohort = tuple(f"car-{i:05d}" for i in range(rounds.cohort_size))
    RoundPlan(round_id="check", cohort=cohort, vector_length=strategy.numel, seed=bytes(32),
              quantization=round_quantization(strategy.config, strategy.numel, strategy.noise_multiplier),
              max_dropout=rounds.secagg_max_dropout)


@dataclass
class SecureRound:
    """One secure round of one job: the protocol's coordinator side and who answered each phase."""

    job_id: str
    round: int
    base_version: int
    plan: RoundPlan
    server: SecAggCoordinator
    changed: threading.Condition = field(default_factory=threading.Condition)
    """Guards everything below and :attr:`server`; notified when a car's message was taken."""
    answered: dict[str, set[str]] = field(default_factory=lambda: {p: set() for p in ("advertise", "share",
                                                                                      "masked", "unmask")})
    reports: dict[str, tuple[str, UpdateReport, int]] = field(default_factory=dict)
    """Vehicle -> (lease, report, masked bytes) of each masked input taken: its lease is completed at the end."""
    liars: set[str] = field(default_factory=set)
    closed: bool = False


class SecureRounds:
    """Every secure round this replica drives, by job; the routes and the round loop meet here."""

    def __init__(self, service: TrainingService) -> None:
        self.service = service
        self.lock = threading.Lock()
        self.rounds: dict[str, SecureRound] = {}

    def payload(self, plan: RoundPlan | None, vehicle_id: str) -> dict[str, Any]:
        """What an offered share's unit holds of its secure round: the plan, as the car's grant carries it."""
        return {"secagg": plan_to_wire(plan, vehicle_id).model_dump()} if plan is not None else {}

    # --- the round loop (driver thread) ---------------------------------------------------------------------
    def open(self, run: Run, strategy: Strategy, cohort: list[str]) -> RoundPlan | None:
        """The plan of the round these cars are offered now; None (offer nothing) while a round of this attempt is
        open already or the cohort is short of ``clients_per_round``: the loop asks again as cars turn up."""
        rounds = strategy.config.rounds
        with self.lock:
            current = self.rounds.get(run.job.job_id)
            if current is not None and current.round == strategy.round and not current.closed:
                return None
            if len(cohort) < rounds.clients_per_round:
                return None
            # a fresh id per plan: a share offered before a restart (same round number) can never join this one
            round_id = f"{run.job.job_id}:r{strategy.round}:{secrets.token_hex(4)}"
            plan = RoundPlan(round_id=round_id, cohort=tuple(sorted(cohort)),
                             vector_length=strategy.numel, max_dropout=rounds.secagg_max_dropout,
                             quantization=round_quantization(strategy.config, strategy.numel,
                                                             strategy.noise_multiplier),
                             seed=secrets.token_bytes(32))
            self.rounds[run.job.job_id] = SecureRound(job_id=run.job.job_id, round=strategy.round,
                                                      base_version=strategy.version, plan=plan,
                                                      server=SecAggCoordinator(plan))
        return plan

    def drive(self, run: Run, strategy: Strategy, deadline: float, redispatch: Callable[[], None],
              poll_s: float) -> SecureSum | None:
        """Walk the round through its phases; None if it was abandoned. Leases of cars whose masked input was
        taken are completed (their work is paid), the rest cancelled."""
        clock = self.service.clock
        while (rnd := self._current(run, strategy)) is None:
            if clock.now() >= deadline:
                log.warning("job %s round %d: no full cohort of %d cars by the deadline; round abandoned",
                            run.job.job_id, strategy.round, strategy.config.rounds.clients_per_round)
                self.service.close_round(run)
                return None
            redispatch()
            if run.stop.wait(poll_s):
                raise Stopped()
        phase_s = strategy.config.rounds.secagg_phase_s
        server, cohort = rnd.server, set(rnd.plan.cohort)
        try:
            self._await(run, rnd, "advertise", cohort, deadline)
            with rnd.changed:
                server.close_advertising()
            self._await(run, rnd, "share", rnd.answered["advertise"], clock.now() + phase_s)
            with rnd.changed:
                server.close_sharing()
            self._await(run, rnd, "masked", rnd.answered["share"], clock.now() + phase_s)
            with rnd.changed:
                server.close_masking()
            self._await(run, rnd, "unmask", rnd.answered["masked"], clock.now() + phase_s)
            with rnd.changed:
                result = server.finish()
        except (TooFewSurvivors, DishonestShare) as exc:
            log.warning("job %s round %d abandoned, no model step: %s", run.job.job_id, strategy.round, exc.message)
            if isinstance(exc, DishonestShare):
                self._name_liars(rnd, exc.car_ids)
            self._close(run, rnd)
            return None
        self._close(run, rnd)
        total = decode_sum(result.total, len(result.survivors), rnd.plan.quantization)
        steps = sum(rnd.reports[c][1].steps_done for c in result.survivors if c in rnd.reports)
        lost = len(cohort - rnd.answered["unmask"] - rnd.liars)
        return SecureSum(total=total, cars=len(result.survivors), asked=len(cohort), steps=steps, dropped=lost,
                         quantization=rnd.plan.quantization, dishonest=tuple(sorted(result.dishonest)))

    def _current(self, run: Run, strategy: Strategy) -> SecureRound | None:
        with self.lock:
            rnd = self.rounds.get(run.job.job_id)
        return rnd if rnd is not None and rnd.round == strategy.round and not rnd.closed else None

    def _await(self, run: Run, rnd: SecureRound, phase: str, expected: set[str], until: float) -> None:
        """Until every expected car sent ``phase`` or ``until`` passed (then the missing ones have dropped)."""
        with rnd.changed:
            while not expected <= rnd.answered[phase] | rnd.liars:
                if run.stop.is_set():
                    self._close(run, rnd)
                    raise Stopped()
                left = until - self.service.clock.now()
                if left <= 0:
                    missing = sorted(expected - rnd.answered[phase])
                    log.info("job %s round %d: %d cars dropped before %s: %s", run.job.job_id, rnd.round,
                             len(missing), phase, missing[:8])
                    return
                rnd.changed.wait(min(left, 0.2))

    def _name_liars(self, rnd: SecureRound, cars: tuple[str, ...]) -> None:
        fresh = sorted(set(cars) - rnd.liars)
        rnd.liars |= set(fresh)
        if fresh:
            log.warning("job %s round %d: cars %s revealed shares their dealers did not commit to", rnd.job_id,
                        rnd.round, fresh)
            self.service.store.record_verdicts([(c, Verdict.IMPLAUSIBLE) for c in fresh], self.service.clock.now())

    def _close(self, run: Run, rnd: SecureRound) -> None:
        with rnd.changed:
            if rnd.closed:
                return
            rnd.closed = True
            rnd.changed.notify_all()
        for vehicle_id, (lease_id, report, nbytes) in sorted(rnd.reports.items()):
            try:
                self._complete(run, vehicle_id, lease_id, report, nbytes)
            except FleetgridError as exc:  # e.g. the lease expired meanwhile: unpaid, the sum is unaffected
                log.warning("job %s: lease %s of a secure round not completed: %s", run.job.job_id, lease_id, exc)
        self.service.close_round(run)

    def _complete(self, run: Run, vehicle_id: str, lease_id: str, report: UpdateReport, nbytes: int) -> None:
        """Close a lease whose masked input was taken, metered like a plain update's report."""
        service, store = self.service, self.service.store
        context, vehicle = store.lease_context(lease_id), store.get_vehicle(vehicle_id)
        if context is None or vehicle is None or context[0].state != LeaseState.ACTIVE:
            raise Conflict(f"lease {lease_id} is no longer active")
        lease, unit, job = context
        record = update_record(vehicle_id, report)
        digest = service.artifacts.put_bytes(record)
        usage, implausible = service.reports.check_update(vehicle, lease, unit, job.model, report,
                                                          nbytes + len(record))
        entry = LedgerRecord(lease_id=lease_id, vehicle_id=vehicle_id, job_id=job.job_id, items=0, workload="train",
                             examples=usage.examples, steps=usage.steps, compute_s=usage.accelerator_s,
                             cellular_bytes=usage.cellular_bytes, wifi_bytes=usage.wifi_bytes,
                             at=service.clock.now())
        store.complete(lease, unit, digest, entry, service.clock.now(), artifact=(len(record), job_owner(job.job_id)))
        service.reports.record(vehicle_id, implausible)
        store.after_commit(lambda: service.lease_closed(job.kind, LeaseState.COMPLETED.value))
        run.consumed.append((unit.idx, digest))
        run.spent.extend(report_holds(job.job_id, digest, vehicle_id, report.update))
        with service.lock:
            run.reports += 1

    # --- the cars (route threads) ---------------------------------------------------------------------------
    def refuse_plain(self, lease_id: str, unit: UnitRecord) -> None:
        """A share of a secure round is never reported in clear (the coordinator would see that car's update)."""
        plan = (unit.payload or {}).get("secagg")
        if plan:
            raise Conflict(f"lease {lease_id} is a share of secure round {plan['round_id']!r}: "
                           "send its update masked through /v1/train/leases/{id}/secagg/{phase}, never in clear")

    def _round_of(self, vehicle: VehicleRecord, lease_id: str) -> tuple[SecureRound, Run]:
        """The open round this lease belongs to, on this replica; 403 for another car's lease, 409 once the round
        closed or when another replica drives the job."""
        service = self.service
        lease, unit, job = service._owned(vehicle, lease_id)
        plan = (unit.payload or {}).get("secagg")
        if not plan:
            raise Conflict(f"lease {lease_id} is a share of a plain round of job {job.job_id}: report its update "
                           "with POST /v1/train/leases/{id}/update, not through secure aggregation")
        if lease.state != LeaseState.ACTIVE:
            raise Conflict(f"lease {lease_id} is {lease.state}, not active: its secure round is over for this car")
        service._require_active(lease, unit)
        run = service.runs.get(job.job_id)
        with self.lock:
            rnd = self.rounds.get(job.job_id)
        if run is None:
            raise Conflict(f"job {job.job_id} is driven by replica {job.driver!r}, not this one ({service.replica}); "
                           "secure-aggregation messages are held only by the driving replica: send them there")
        if rnd is None or rnd.plan.round_id != plan.get("round_id") or rnd.closed:
            raise Conflict(f"secure round {plan.get('round_id')!r} of job {job.job_id} is closed; lease new work")
        return rnd, run

    def receive(self, vehicle: VehicleRecord, lease_id: str, phase: str, body: BaseModel) -> SecAggAck:
        """Take a car's message of ``phase``; 400 if malformed, 409 if out of phase or already sent."""
        rnd, run = self._round_of(vehicle, lease_id)
        car = vehicle.vehicle_id
        masked: tuple[UpdateReport, bytes] | None = None
        if phase == "masked":
            assert isinstance(body, MaskedBody)
            masked = (body.report, self._read_masked(vehicle, lease_id, rnd, body.report))
        with rnd.changed:
            if rnd.closed:
                raise Conflict(f"secure round {rnd.plan.round_id!r} closed before car {car!r}'s {phase} arrived")
            server = rnd.server
            if phase == "advertise":
                assert isinstance(body, KeyAdvertisementBody)
                adv = body.to_message(car)
                server.receive_advertisement(adv)
                nbytes = adv.nbytes
            elif phase == "share":
                assert isinstance(body, ShareBundleBody)
                bundle = body.to_message(car)
                server.receive_shares(bundle)
                nbytes = bundle.nbytes
            elif phase == "masked":
                assert masked is not None
                server.receive_masked_input(MaskedInput(car_id=car, payload=masked[1]))
                rnd.reports[car] = (lease_id, masked[0], len(masked[1]))
                nbytes = len(masked[1])
            elif phase == "unmask":
                assert isinstance(body, UnmaskBody)
                response = body.to_message(car)
                nbytes = response.nbytes
                try:
                    server.receive_unmasking(response)
                except DishonestShare as exc:
                    self._name_liars(rnd, exc.car_ids or (car,))
                    rnd.changed.notify_all()
                    raise
            else:
                raise InvalidInput(f"unknown secure-aggregation phase {phase!r}; accepted: advertise, share, "
                                   "masked, unmask")
            rnd.answered[phase].add(car)
            rnd.changed.notify_all()
        with self.service.lock:
            run.bytes_up += nbytes
        return SecAggAck(round_id=rnd.plan.round_id, phase=phase)

    def _read_masked(self, vehicle: VehicleRecord, lease_id: str, rnd: SecureRound, report: UpdateReport) -> bytes:
        if (report.round, report.base_version) != (rnd.round, rnd.base_version):
            raise InvalidInput(f"masked input quotes round {report.round} / version {report.base_version}; lease "
                               f"{lease_id} is for round {rnd.round} / version {rnd.base_version}")
        if report.steps_done > report.steps_planned:
            raise InvalidInput(f"masked input reports {report.steps_done} of {report.steps_planned} steps; "
                               "steps_done cannot exceed steps_planned")
        return self.service.files.read_update(vehicle.vehicle_id, report.update, rnd.plan.vector_length,
                                              self.service.runs[rnd.job_id].job.model)

    def download(self, vehicle: VehicleRecord, lease_id: str, phase: str) -> SecAggDownlink:
        """The car's part of ``phase`` once the coordinator reached it; ``ready=False`` until then."""
        if phase not in _NEEDS:
            raise InvalidInput(f"unknown secure-aggregation phase {phase!r} to fetch; accepted: share, masked, "
                               "unmask")
        rnd, run = self._round_of(vehicle, lease_id)
        car, round_id = vehicle.vehicle_id, rnd.plan.round_id
        with rnd.changed:
            if _ORDER.index(rnd.server.phase) < _ORDER.index(_NEEDS[phase]):
                return SecAggDownlink(round_id=round_id, phase=phase, ready=False,  # type: ignore[arg-type]
                                      retry_after_s=_RETRY_S)
            if phase == "share":
                keys = rnd.server.neighbour_keys(car)
                answer = SecAggDownlink(round_id=round_id, phase="share", ready=True,
                                        keys={c: KeyAdvertisementBody.of(a) for c, a in keys.keys.items()})
                nbytes = keys.nbytes
            elif phase == "masked":
                shares = rnd.server.shares_for(car)
                answer = SecAggDownlink(round_id=round_id, phase="masked", ready=True,
                                        shares=[EncryptedShareBody.of(s) for s in shares.shares])
                nbytes = shares.nbytes
            else:
                request = rnd.server.unmask_request(car)
                answer = SecAggDownlink(round_id=round_id, phase="unmask", ready=True,
                                        dropped=sorted(request.dropped), survivors=sorted(request.survivors))
                nbytes = request.nbytes
        with self.service.lock:
            run.bytes_down += nbytes
        return answer
