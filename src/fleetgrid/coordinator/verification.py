"""Results verified before a tenant sees them: the scheduler's side of :mod:`fleetgrid.coordinator.reputation`.

For a workload whose driver can compare two results (:attr:`UnitDriver.verifiable`) and a job that asked for no
replication of its own, every completed unit goes through :meth:`Verifier.release_now`: a result the policy does
not check is accepted at once; any other waits, unaccepted, while a replica of its unit is computed by another
car, and :meth:`Verifier.settle` accepts the first result two cars agree on, records a verdict for every car
involved, refuses payment to those outvoted, and suspends a car the policy calls caught, whose unconfirmed results
in running jobs are then recomputed. Results of suspended cars never count.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..core import UnitState
from .artifacts import ArtifactStore
from .drivers import UnitDriver
from .reputation import TrustPolicy, Verdict
from .store import JobRecord, Store, UnitRecord

__all__ = ["MAX_REPLICAS", "OUTCOMES", "PROBE", "WITHDRAWN", "Verifier"]

log = logging.getLogger("fleetgrid.coordinator.verification")

MAX_REPLICAS = 5
"""Copies of one unit computed before, with no two agreeing, its job fails (as a tenant's quorum does)."""
OUTCOMES = ("agreed", "disagreed", "known_answer_passed", "known_answer_failed")
"""What :attr:`Verifier.judged` is told: a car's result confirmed or outvoted by a replica, a known-answer unit
answered right or wrong."""
PROBE = "known_answer"
"""A known-answer unit's payload key: the digest of the confirmed result the car's must agree with."""
WITHDRAWN = "withdrawn"
"""A recomputing replica's payload key naming the replica whose accepted result it replaces (which no longer
counts)."""


@dataclass(slots=True)
class Settled:
    accepted: bool
    replicas_added: int = 0
    suspended: tuple[str, ...] = ()


class Verifier:
    def __init__(self, store: Store, artifacts: ArtifactStore, drivers: Mapping[str, UnitDriver],
                 policy: TrustPolicy, now: Callable[[], float], draw: Callable[[], float] | None = None) -> None:
        self.store, self.artifacts, self.drivers, self.policy, self.now = store, artifacts, drivers, policy, now
        self.draw = draw or random.SystemRandom().random
        """Uniform in [0, 1): which trusted results are spot-checked; a car cannot predict it."""
        self.vehicle_suspended: Callable[[str], None] = lambda vehicle_id: None
        """Told once a car was suspended (the scheduler releases its leases, the app forgets its credential)."""
        self.judged: Callable[[str], None] = lambda outcome: None
        """Told each verdict on a car's result as an outcome (:data:`OUTCOMES`): the metrics."""
        self.checks = 0
        """Copies this process added to check a car (verifying replicas, recomputations, known answers)."""
        self._probed: set[str] = set()
        """Cars this process offered a known-answer unit, or found already judged (no probe needed)."""

    def probe(self, vehicle_id: str, now: float, ttl_s: float) -> bool:
        """Offer a car that was never judged a known-answer unit as its first work: a copy of a unit whose result
        two cars confirmed, in a running job, that the car never leased (it looks like any unit). True when one is
        on offer to it now (the lease that follows must look at offers)."""
        if vehicle_id in self._probed:
            return False
        rep = self.store.get_reputation(vehicle_id)
        if rep.agreed or rep.faults or rep.implausible:
            self._probed.add(vehicle_id)
            return False
        known = self.store.known_answer(vehicle_id, self._kinds())
        if known is None or known.result_digest is None:
            return False  # nothing confirmed yet: its results are verified by replicas instead
        replicas = self.store.units_of(known.job_id, known.idx)
        self.store.offer_units([UnitRecord(
            unit_id=f"{known.job_id}:{known.idx}:{len(replicas)}", job_id=known.job_id, idx=known.idx,
            replica=len(replicas), start_item=known.start_item, end_item=known.end_item,
            input_digest=known.input_digest, input_format=known.input_format, replicas=2,
            target_vehicle=vehicle_id, offer_expires=now + ttl_s, payload={PROBE: known.result_digest})])
        self._probed.add(vehicle_id)
        self.checks += 1
        return True

    def applies(self, job: JobRecord) -> bool:
        driver = self.drivers.get(job.kind)
        quorum = (job.spec.get("redundancy") or {}).get("quorum", 1)
        return driver is not None and driver.verifiable and quorum <= 1

    def release_now(self, job: JobRecord, unit: UnitRecord, vehicle_id: str) -> bool:
        """Whether ``unit``'s result from ``vehicle_id`` may be accepted without a check: it is the unit's only
        result that counts and the policy does not draw it for a check."""
        if unit.replica > 0 and self._counted(self.store.units_of(job.job_id, unit.idx), exclude=unit.unit_id):
            return False  # it verifies (or is verified by) another result: settle decides
        return not self.policy.needs_check(self.store.get_reputation(vehicle_id), self.draw())

    def settle(self, job: JobRecord, completed: UnitRecord) -> Settled:
        """Judge a known-answer unit's result against the known one; else accept ``completed``'s unit once two
        counted results agree, or ask for one more replica."""
        if (completed.payload or {}).get(PROBE):
            return self._judge(job, completed)
        idx = completed.idx
        driver = self.drivers[job.kind]
        replicas = self.store.units_of(job.job_id, idx)
        counted = self._counted(replicas)
        results = [(u, self._read(u)) for u in counted]
        for unit, data in results:
            agreeing = [u for u, other in results if u is unit or driver.agree(job, data, other)]
            if len(agreeing) >= 2:
                withdrawn = _withdrawn(replicas)
                done = [u for u in replicas if u.state == UnitState.DONE and u.unit_id not in withdrawn]
                return self._accept(job, unit, agreeing, done, completed)
        if any(u.state in (UnitState.PENDING, UnitState.LEASED) for u in _copies(replicas)):
            return Settled(accepted=False)  # a replica is on its way
        if len(_copies(replicas)) >= MAX_REPLICAS:
            return Settled(accepted=False)  # the scheduler fails the job
        base = replicas[0]
        self.store.add_urgent_units([UnitRecord(
            unit_id=f"{job.job_id}:{idx}:{len(replicas)}", job_id=job.job_id, idx=idx, replica=len(replicas),
            start_item=base.start_item, end_item=base.end_item, input_digest=base.input_digest,
            input_format=base.input_format, replicas=2,  # 2: no car that computed this unit may take the copy
        )])
        self.checks += 1
        return Settled(accepted=False, replicas_added=1)

    def exhausted(self, job: JobRecord, idx: int) -> bool:
        replicas = _copies(self.store.units_of(job.job_id, idx))
        return len(replicas) >= MAX_REPLICAS and all(u.state in (UnitState.DONE, UnitState.CANCELLED)
                                                     for u in replicas)

    def _accept(self, job: JobRecord, unit: UnitRecord, agreeing: list[UnitRecord], done: list[UnitRecord],
                completed: UnitRecord) -> Settled:
        """Accept ``unit``'s result, which ``agreeing`` share; every other of the ``done`` replicas is outvoted.
        If the unit was accepted before (``completed`` came in late), only ``completed``'s car is judged: the
        others were, when it was accepted."""
        assert unit.result_digest is not None
        idx = unit.idx
        agreed = {u.unit_id for u in agreeing}
        outvoted = [u for u in done if u.unit_id not in agreed]
        accepted = self.store.accept_unit(job.job_id, idx, unit.result_digest)
        if not accepted:
            agreeing = [u for u in agreeing if u.unit_id == completed.unit_id]
            outvoted = [u for u in outvoted if u.unit_id == completed.unit_id]
        self.store.reject_usage([u.unit_id for u in outvoted],
                                f"unit {idx}: the result disagreed with two cars' agreeing results")
        now = self.now()
        verdicts = [(u.vehicle_id, Verdict.AGREED) for u in agreeing if u.vehicle_id]
        verdicts += [(u.vehicle_id, Verdict.FAULT) for u in outvoted
                     if u.vehicle_id and not self._suspended(u.vehicle_id)]
        self.store.record_verdicts(verdicts, now)
        for _, verdict in verdicts:
            self.judged("agreed" if verdict is Verdict.AGREED else "disagreed")
        faulted = sorted({v for v, verdict in verdicts if verdict is Verdict.FAULT})
        caught = tuple(v for v in faulted if self._caught(v))
        for vehicle_id in faulted:
            if vehicle_id in caught:
                self.suspend(vehicle_id, f"unit {idx} of job {job.job_id}: its result was outvoted")
            else:  # one fault of a car with a good record: not suspended, but nothing it released unchecked stands
                self.recompute(vehicle_id)
        return Settled(accepted=accepted, suspended=caught)

    def _judge(self, job: JobRecord, probe: UnitRecord) -> Settled:
        """A known-answer unit came back: the car agrees with the known result or is at fault. The unit's result
        was accepted before, so nothing is accepted here; a right answer is paid as the work it was."""
        known = self.artifacts.read_bytes((probe.payload or {})[PROBE])
        right = self.drivers[job.kind].agree(job, self._read(probe), known)
        vehicle_id = probe.vehicle_id
        if vehicle_id is None:
            return Settled(accepted=False)
        self.store.record_verdicts([(vehicle_id, Verdict.AGREED if right else Verdict.FAULT)], self.now())
        self.judged("known_answer_passed" if right else "known_answer_failed")
        if right:
            return Settled(accepted=False)
        self.store.reject_usage([probe.unit_id], f"unit {probe.idx}: a known-answer check, answered wrong")
        if self._caught(vehicle_id):
            self.suspend(vehicle_id, f"unit {probe.idx} of job {job.job_id}: a known answer, answered wrong")
            return Settled(accepted=False, suspended=(vehicle_id,))
        self.recompute(vehicle_id)
        return Settled(accepted=False)

    def suspend(self, vehicle_id: str, reason: str) -> int:
        """Suspend a caught car and recompute its unconfirmed results in running jobs; returns how many."""
        if not self.store.suspend_vehicle(vehicle_id, reason, "reputation"):
            return 0
        log.warning("vehicle %s suspended: %s", vehicle_id, reason)
        self.vehicle_suspended(vehicle_id)
        return self.recompute(vehicle_id)

    def recompute(self, vehicle_id: str) -> int:
        """Withdraw the car's accepted results that no other car confirmed, in running jobs, and have each unit
        computed again (the withdrawn result no longer counts, and is not paid); returns how many."""
        reopened = 0
        for unit in self.store.unverified_results(vehicle_id, self._kinds()):
            replicas = self.store.units_of(unit.job_id, unit.idx)
            replica = UnitRecord(
                unit_id=f"{unit.job_id}:{unit.idx}:{len(replicas)}", job_id=unit.job_id, idx=unit.idx,
                replica=len(replicas), start_item=unit.start_item, end_item=unit.end_item,
                input_digest=unit.input_digest, input_format=unit.input_format, replicas=2,
                payload={WITHDRAWN: unit.unit_id})
            if self.store.reopen_unit(unit.job_id, unit.idx, replica):
                self.store.reject_usage([unit.unit_id], f"unit {unit.idx}: recomputed, its car's result was "
                                        "caught wrong elsewhere")
                self.checks += 1
                reopened += 1
        return reopened

    def _kinds(self) -> list[str]:
        return [kind for kind, driver in self.drivers.items() if driver.verifiable]

    def _counted(self, replicas: list[UnitRecord], exclude: str | None = None) -> list[UnitRecord]:
        """The done replicas whose results count: not ``exclude``, not withdrawn, not a known-answer check, not
        from a suspended car."""
        withdrawn = _withdrawn(replicas) | {exclude}
        return [u for u in _copies(replicas) if u.state == UnitState.DONE and u.result_digest
                and u.unit_id not in withdrawn and not (u.vehicle_id and self._suspended(u.vehicle_id))]

    def _suspended(self, vehicle_id: str) -> bool:
        vehicle = self.store.get_vehicle(vehicle_id)
        return vehicle is None or vehicle.suspended

    def _caught(self, vehicle_id: str) -> bool:
        return self.policy.should_suspend(self.store.get_reputation(vehicle_id))

    def _read(self, unit: UnitRecord) -> bytes:
        assert unit.result_digest is not None
        return self.artifacts.read_bytes(unit.result_digest)


def _withdrawn(replicas: list[UnitRecord]) -> set[str | None]:
    """The replicas whose accepted results were withdrawn (each named by the replica recomputing it)."""
    return {(u.payload or {}).get(WITHDRAWN) for u in replicas}


def _copies(replicas: list[UnitRecord]) -> list[UnitRecord]:
    """The replicas that compute the unit for its job (not known-answer checks of a car)."""
    return [u for u in replicas if not (u.payload or {}).get(PROBE)]
