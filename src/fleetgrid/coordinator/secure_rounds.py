"""Secure-aggregation rounds of training jobs on the coordinator: a round's cohort, the protocol's coordinator side
(:class:`~fleetgrid.workloads.training.secagg.SecAggCoordinator`) and the driver thread walking it through its
phases with a deadline each.

The round's protocol state lives in memory on the replica that drives the job, but its messages go through the
shared store (:mod:`.store.secagg_base`), so a car may talk to any replica: whichever receives a car's message
checks what it can (:mod:`.secure_relay`) and stores it; the driver reads the new messages, feeds them to the
protocol (every cryptographic check and the verdict on dishonest shares stay here), records its verdict on each,
and writes what each car fetches for the next phase, which any replica then serves. If the driver dies mid-round
the round is lost; the replica that takes the job over opens a fresh round, which drops the old one's rows.

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

import pydantic

from ..core import LeaseState
from ..errors import Conflict, DishonestShare, FleetgridError, InvalidInput, TooFewSurvivors
from ..protocol import UpdateReport
from ..secagg_wire import (
    EncryptedShareBody,
    KeyAdvertisementBody,
    MaskedBody,
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
from .secure_relay import AT_PHASE, SecAggRelay
from .store import LedgerRecord, UnitRecord
from .store.secagg_base import SECAGG_TAKEN, SecAggMessage
from .train_artifacts import job_owner, report_holds, update_record

if TYPE_CHECKING:
    from .training import TrainingService

__all__ = ["SecureRound", "SecureRounds", "check_secure_job"]

log = logging.getLogger("fleetgrid.coordinator.secure_rounds")

_POLL_S = 0.05
"""How often the driver looks for new messages in the store during a phase."""
_PHASES = ("advertise", "share", "masked", "unmask")
_BEFORE = {"share": "advertise", "masked": "share", "unmask": "masked"}
"""The phase whose message a car sent before it fetches its part of the phase of that name."""


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
    """One secure round of one job, as its driver holds it: the protocol's coordinator side and who answered."""

    job_id: str
    round: int
    base_version: int
    plan: RoundPlan
    server: SecAggCoordinator
    answered: dict[str, set[str]] = field(default_factory=lambda: {p: set() for p in _PHASES})
    reports: dict[str, tuple[str, UpdateReport, int]] = field(default_factory=dict)
    """Vehicle -> (lease, report, masked bytes) of each masked input taken: its lease is completed at the end."""
    liars: set[str] = field(default_factory=set)
    refused: dict[str, FleetgridError] = field(default_factory=dict)
    """Vehicle -> why its message was refused: every later fetch of that car is answered with it."""
    read_up_to: int = 0
    """The store's ``seq`` of the last message read."""
    early: list[SecAggMessage] = field(default_factory=list)
    """Messages of a phase the protocol has not reached yet (sent before the car could know it was time)."""
    closed: bool = False
    run: Run | None = field(default=None, repr=False)
    """The round loop that opened it (a replica may drive a job again after another one did)."""


class SecureRounds:
    """Every secure round this replica drives, by job; the round loop runs them, :attr:`relay` serves the cars."""

    def __init__(self, service: TrainingService) -> None:
        self.service = service
        self.lock = threading.Lock()
        self.rounds: dict[str, SecureRound] = {}
        self.relay = SecAggRelay(service)

    def payload(self, plan: RoundPlan | None, vehicle_id: str) -> dict[str, Any]:
        """What an offered share's unit holds of its secure round: the plan, as the car's grant carries it."""
        return {"secagg": plan_to_wire(plan, vehicle_id).model_dump()} if plan is not None else {}

    def refuse_plain(self, lease_id: str, unit: UnitRecord) -> None:
        """A share of a secure round is never reported in clear (the coordinator would see that car's update)."""
        plan = (unit.payload or {}).get("secagg")
        if plan:
            raise Conflict(f"lease {lease_id} is a share of secure round {plan['round_id']!r}: "
                           "send its update masked through /v1/train/leases/{id}/secagg/{phase}, never in clear")

    # --- the round loop (driver thread) ---------------------------------------------------------------------
    def open(self, run: Run, strategy: Strategy, cohort: list[str]) -> RoundPlan | None:
        """The plan of the round these cars are offered now; None (offer nothing) while a round of this attempt is
        open already or the cohort is short of ``clients_per_round``: the loop asks again as cars turn up. The
        store then holds the round (at advertising), and no more of the job's earlier rounds."""
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
                         quantization=round_quantization(strategy.config, strategy.numel, strategy.noise_multiplier),
                         seed=secrets.token_bytes(32))
        self.service.store.open_secagg_round(run.job.job_id, round_id, Phase.ADVERTISING.value,
                                             self.service.clock.now())
        with self.lock:
            self.rounds[run.job.job_id] = SecureRound(job_id=run.job.job_id, round=strategy.round,
                                                      base_version=strategy.version, plan=plan,
                                                      server=SecAggCoordinator(plan), run=run)
        return plan

    def drive(self, run: Run, strategy: Strategy, deadline: float, redispatch: Callable[[], None],
              poll_s: float) -> SecureSum | None:
        """Walk the round through its phases; None if it was abandoned. Leases of cars whose masked input was
        taken are completed (their work is paid), the rest cancelled."""
        clock = self.service.clock
        with self.lock:
            last = self.rounds.get(run.job.job_id)
        if last is None or last.run is not run:  # no round of this loop yet: one in flight was an earlier driver's
            self._abandon_stale(run)
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
            self._collect(run, rnd, "advertise", cohort, deadline)
            server.close_advertising()
            self._send_down(run, rnd, "share")
            self._collect(run, rnd, "share", rnd.answered["advertise"], clock.now() + phase_s)
            server.close_sharing()
            self._send_down(run, rnd, "masked")
            self._collect(run, rnd, "masked", rnd.answered["share"], clock.now() + phase_s)
            server.close_masking()
            self._send_down(run, rnd, "unmask")
            self._collect(run, rnd, "unmask", rnd.answered["masked"], clock.now() + phase_s)
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

    def _abandon_stale(self, run: Run) -> None:
        """Cancel the shares of a round a previous driver left open (it died, or this process restarted): their
        cars are told at their next request (409) and are free for the fresh round. Its rows in the store go when
        that round opens."""
        stale = self.service.store.live_offers(run.job.job_id, self.service.clock.now())
        if stale:
            log.warning("job %s: the secure round in flight when its previous driver stopped is abandoned (%d cars "
                        "held shares of it); a fresh round starts", run.job.job_id, len(stale))
            self.service.close_round(run)

    def _current(self, run: Run, strategy: Strategy) -> SecureRound | None:
        with self.lock:
            rnd = self.rounds.get(run.job.job_id)
        return rnd if rnd is not None and rnd.round == strategy.round and not rnd.closed else None

    def _collect(self, run: Run, rnd: SecureRound, phase: str, expected: set[str], until: float) -> None:
        """Take the cars' messages of ``phase`` until every expected car sent one or ``until`` passed (then the
        missing ones have dropped); then close the phase in the store and take what arrived before it closed."""
        while True:
            self._take(run, rnd, phase)
            if expected <= rnd.answered[phase] | rnd.liars:
                break
            if run.stop.is_set():
                self._close(run, rnd)
                raise Stopped()
            if self.service.clock.now() >= until:
                missing = sorted(expected - rnd.answered[phase])
                log.info("job %s round %d: %d cars dropped before %s: %s", run.job.job_id, rnd.round,
                         len(missing), phase, missing[:8])
                break
            run.stop.wait(_POLL_S)
        following = _PHASES.index(phase) + 1
        after = AT_PHASE[_PHASES[following]] if following < len(_PHASES) else Phase.DONE
        self.service.store.advance_secagg_round(rnd.plan.round_id, after.value)
        self._take(run, rnd, phase)

    def _take(self, run: Run, rnd: SecureRound, phase: str) -> None:
        """Feed the protocol the cars' new messages of ``phase`` and record the verdict on each."""
        fresh = self.service.store.secagg_uplinks(rnd.plan.round_id, rnd.read_up_to)
        if fresh:
            rnd.read_up_to = fresh[-1].seq
        now = [m for m in rnd.early + fresh if m.phase == phase]
        rnd.early = [m for m in rnd.early + fresh
                     if m.phase != phase and _PHASES.index(m.phase) > _PHASES.index(phase)]
        rulings: list[tuple[int, str, str | None]] = []
        for message in now:
            car = message.vehicle_id
            try:
                nbytes = self._feed(run, rnd, message)
            except FleetgridError as exc:
                if isinstance(exc, DishonestShare):
                    self._name_liars(rnd, exc.car_ids or (car,))
                rnd.refused[car] = exc
                rulings.append((message.seq, exc.code, exc.message))
                continue
            rnd.answered[phase].add(car)
            rulings.append((message.seq, SECAGG_TAKEN, None))
            with self.service.lock:
                run.bytes_up += nbytes
        self.service.store.rule_secagg_messages(rulings)

    def _feed(self, run: Run, rnd: SecureRound, message: SecAggMessage) -> int:
        """Hand one stored message to the protocol; its size as the benchmark counts it."""
        car, server, text = message.vehicle_id, rnd.server, message.body or ""
        try:
            if message.phase == "advertise":
                adv = KeyAdvertisementBody.model_validate_json(text).to_message(car)
                server.receive_advertisement(adv)
                return adv.nbytes
            if message.phase == "share":
                bundle = ShareBundleBody.model_validate_json(text).to_message(car)
                server.receive_shares(bundle)
                return bundle.nbytes
            if message.phase == "masked":
                report = MaskedBody.model_validate_json(text).report
                payload = self.service.files.read_update(car, report.update, rnd.plan.vector_length,
                                                         run.job.model)
                server.receive_masked_input(MaskedInput(car_id=car, payload=payload))
                rnd.reports[car] = (message.lease_id, report, len(payload))
                return len(payload)
            response = UnmaskBody.model_validate_json(text).to_message(car)
            server.receive_unmasking(response)
            return response.nbytes
        except pydantic.ValidationError as exc:  # checked by the replica that took it: a bug, or another version
            raise InvalidInput(f"car {car!r}'s {message.phase} message does not parse: {exc.errors()[:1]}") from exc

    def _send_down(self, run: Run, rnd: SecureRound, phase: str) -> None:
        """Write what each car of the cohort fetches before sending ``phase``: its part, or why it has none."""
        rows, nbytes = [], 0
        for car in rnd.plan.cohort:
            part = SecAggMessage(round_id=rnd.plan.round_id, vehicle_id=car, direction="down", phase=phase,
                                 body=None)
            refused = rnd.refused.get(car)
            if refused is None:
                try:
                    answer, size = self._part(rnd, phase, car)
                except FleetgridError as exc:  # e.g. it did not deal shares: it has dropped
                    refused = exc
                else:
                    part.body = answer.model_dump_json()
                    if car in rnd.answered[_BEFORE[phase]]:  # a car that dropped will not fetch it
                        nbytes += size
            if refused is not None:
                part.verdict, part.reason = refused.code, refused.message
            rows.append(part)
        self.service.store.put_secagg_downlinks(rows)
        with self.service.lock:
            run.bytes_down += nbytes

    @staticmethod
    def _part(rnd: SecureRound, phase: str, car: str) -> tuple[SecAggDownlink, int]:
        server, round_id = rnd.server, rnd.plan.round_id
        if phase == "share":
            keys = server.neighbour_keys(car)
            return SecAggDownlink(round_id=round_id, phase="share", ready=True,
                                  keys={c: KeyAdvertisementBody.of(a) for c, a in keys.keys.items()}), keys.nbytes
        if phase == "masked":
            shares = server.shares_for(car)
            return SecAggDownlink(round_id=round_id, phase="masked", ready=True,
                                  shares=[EncryptedShareBody.of(s) for s in shares.shares]), shares.nbytes
        request = server.unmask_request(car)
        return SecAggDownlink(round_id=round_id, phase="unmask", ready=True, dropped=sorted(request.dropped),
                              survivors=sorted(request.survivors)), request.nbytes

    def _name_liars(self, rnd: SecureRound, cars: tuple[str, ...]) -> None:
        fresh = sorted(set(cars) - rnd.liars)
        rnd.liars |= set(fresh)
        if fresh:
            log.warning("job %s round %d: cars %s revealed shares their dealers did not commit to", rnd.job_id,
                        rnd.round, fresh)
            self.service.store.record_verdicts([(c, Verdict.IMPLAUSIBLE) for c in fresh], self.service.clock.now())

    def _close(self, run: Run, rnd: SecureRound) -> None:
        if rnd.closed:
            return
        rnd.closed = True
        self.service.store.close_secagg_round(rnd.plan.round_id)
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

