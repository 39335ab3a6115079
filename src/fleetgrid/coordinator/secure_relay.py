"""The cars' side of secure-aggregation rounds, on whichever coordinator replica a car's request reaches: a phase
message is checked here as far as it can be without the round's secrets and written to the shared store, where
the replica driving the job (:mod:`.secure_rounds`) takes it; a fetch is answered from what the driver wrote there.

A message is answered with the driver's verdict when it comes within :data:`VERDICT_WAIT_S` (200, or the 4xx the
driver refused it with, e.g. ``400 dishonest_share``); otherwise ``202`` with ``pending: true``, and a refusal
then reaches the car at its next fetch (the driver answers every later fetch of a refused car with its refusal).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core import LeaseState
from ..errors import Conflict, DishonestShare, FleetgridError, InvalidInput, NotFound, TooFewSurvivors
from ..protocol import SecAggPlan
from ..secagg_wire import (
    KeyAdvertisementBody,
    MaskedBody,
    SecAggAck,
    SecAggDownlink,
    ShareBundleBody,
    UnmaskBody,
    plan_from_wire,
)
from ..workloads.training.secagg import MaskedInput, Phase
from .rounds import check_plan
from .store.secagg_base import SECAGG_CLOSED, SECAGG_TAKEN, SecAggMessage

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .store import JobRecord, UnitRecord, VehicleRecord
    from .training import TrainingService

__all__ = ["AT_PHASE", "VERDICT_POLL_S", "VERDICT_WAIT_S", "SecAggRelay", "refusal"]

AT_PHASE = {"advertise": Phase.ADVERTISING, "share": Phase.SHARING, "masked": Phase.MASKING,
            "unmask": Phase.UNMASKING}
"""The round's phase in which a car's message of each name is taken."""
VERDICT_WAIT_S = 5.0
"""How long a car's request waits for the driver's verdict on its message before it is answered 202."""
VERDICT_POLL_S = 0.05
_RETRY_S = 0.25
"""How soon a car asks again for a phase's part that is not ready."""
_SENT = {"advertise": "advertised its keys", "share": "dealt its shares", "masked": "sent its masked input",
         "unmask": "answered unmasking"}
_REFUSALS: dict[str, type[FleetgridError]] = {cls.code: cls for cls in (InvalidInput, DishonestShare, Conflict,
                                                                         TooFewSurvivors, NotFound)}


def refusal(code: str, reason: str | None, car: str) -> FleetgridError:
    """The error the driver recorded (by code) on a car's message, to raise to that car."""
    cls = _REFUSALS.get(code, Conflict)
    message = reason or f"secure-aggregation message of car {car!r} refused ({code})"
    return DishonestShare(message, car_ids=(car,)) if cls is DishonestShare else cls(message)


class SecAggRelay:
    """Takes cars' phase messages into the store and answers their fetches from it, on any replica."""

    def __init__(self, service: TrainingService) -> None:
        self.service = service

    def _lease(self, vehicle: VehicleRecord, lease_id: str) -> tuple[UnitRecord, JobRecord, SecAggPlan]:
        """The lease's unit, job and round plan; 403 for another car's lease, 409 unless it is an active share of
        a secure round."""
        service = self.service
        lease, unit, job = service._owned(vehicle, lease_id)
        plan = (unit.payload or {}).get("secagg")
        if not plan:
            raise Conflict(f"lease {lease_id} is a share of a plain round of job {job.job_id}: report its update "
                           "with POST /v1/train/leases/{id}/update, not through secure aggregation")
        if lease.state != LeaseState.ACTIVE:
            raise Conflict(f"lease {lease_id} is {lease.state}, not active: its secure round is over for this car")
        service._require_active(lease, unit)
        return unit, job, SecAggPlan.model_validate(plan)

    def receive(self, vehicle: VehicleRecord, lease_id: str, phase: str, body: BaseModel) -> str:
        """Check and store a car's message of ``phase`` and return its round's id; 400 if malformed, 409 if out
        of phase or already sent. :meth:`verdict` then tells whether the driving replica took it."""
        if phase not in AT_PHASE:
            raise InvalidInput(f"unknown secure-aggregation phase {phase!r}; accepted: advertise, share, masked, "
                               "unmask")
        unit, job, plan = self._lease(vehicle, lease_id)
        car = vehicle.vehicle_id
        self._check(vehicle, unit, job, plan, phase, body)
        stored = self.service.store.post_secagg_message(
            SecAggMessage(round_id=plan.round_id, vehicle_id=car, direction="up", phase=phase,
                          body=body.model_dump_json(), lease_id=lease_id), AT_PHASE[phase].value)
        if stored is None:
            raise Conflict(f"car {car!r} already {_SENT[phase]} for round {plan.round_id!r}; one message per car "
                           "and phase, a second one is refused")
        return plan.round_id

    def verdict(self, round_id: str, car: str, phase: str) -> SecAggAck | None:
        """The driver's verdict on a stored message: an ack if taken, its refusal raised, None while pending."""
        found = self.service.store.secagg_message(round_id, car, "up", phase)
        if found is None:
            raise Conflict(f"secure round {round_id!r} ended before car {car!r}'s {phase} was taken; lease new "
                           "work")
        if found.verdict == SECAGG_TAKEN:
            return SecAggAck(round_id=round_id, phase=phase)
        if found.verdict is not None:
            raise refusal(found.verdict, found.reason, car)
        return None

    def _check(self, vehicle: VehicleRecord, unit: UnitRecord, job: JobRecord, plan: SecAggPlan, phase: str,
               body: BaseModel) -> None:
        """What can be checked without the round's state: the body parses, names only cars of the cohort and at
        most one entry for each, and a masked input is this lease's, of the round's exact size."""
        car, cohort = vehicle.vehicle_id, set(plan.cohort)
        if phase == "advertise":
            assert isinstance(body, KeyAdvertisementBody)
            body.to_message(car)
        elif phase == "share":
            assert isinstance(body, ShareBundleBody)
            recipients = [s.recipient for s in body.to_message(car).shares]
            if len(set(recipients)) != len(recipients) or not set(recipients) <= cohort - {car}:
                raise InvalidInput(f"car {car!r} must deal at most one share to each other car of round "
                                   f"{plan.round_id!r}; got shares for {sorted(recipients)[:16]}")
        elif phase == "unmask":
            assert isinstance(body, UnmaskBody)
            answer = body.to_message(car)
            named = set(answer.mask_key_shares) | set(answer.seed_shares)
            if not named <= cohort - {car}:
                raise InvalidInput(f"car {car!r} may reveal shares only of other cars of round {plan.round_id!r}; "
                                   f"got {sorted(named - cohort)[:16]}")
        else:
            assert isinstance(body, MaskedBody)
            report = body.report
            check_plan(report, unit.payload or {}, f"masked input of car {car!r}")
            payload = self.service.files.read_update(car, report.update, plan.vector_length, job.model)
            MaskedInput(car_id=car, payload=payload).check(plan_from_wire(plan))

    def download(self, vehicle: VehicleRecord, lease_id: str, phase: str) -> SecAggDownlink:
        """The car's part of ``phase`` once the driver wrote it; ``ready=False`` until then."""
        if phase not in ("share", "masked", "unmask"):
            raise InvalidInput(f"unknown secure-aggregation phase {phase!r} to fetch; accepted: share, masked, "
                               "unmask")
        _, job, plan = self._lease(vehicle, lease_id)
        store, car = self.service.store, vehicle.vehicle_id
        found = store.secagg_message(plan.round_id, car, "down", phase)
        if found is None:
            if store.secagg_phase(plan.round_id) in (None, SECAGG_CLOSED):
                raise Conflict(f"secure round {plan.round_id!r} of job {job.job_id} is closed; lease new work")
            return SecAggDownlink(round_id=plan.round_id, phase=phase, ready=False,  # type: ignore[arg-type]
                                  retry_after_s=_RETRY_S)
        if found.verdict is not None or found.body is None:
            raise refusal(found.verdict or Conflict.code, found.reason, car)
        return SecAggDownlink.model_validate_json(found.body)
