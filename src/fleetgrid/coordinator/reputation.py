"""How far the coordinator trusts each car's results: a reputation per car and the adaptive spot-check policy
(BOINC's adaptive replication) that decides which results are verified before a tenant may see them.

The policy, as the scheduler applies it (:mod:`fleetgrid.coordinator.verification`) to every result of a
verifiable workload (batch inference) whose tenant asked for no replication of its own:

- A car is *untrusted* until ``trust_after`` of its results in a row were confirmed by another car. Every result
  of an untrusted car is verified before it is accepted: the unit gets a second replica, leased to another car
  before any other work, and the result is accepted only when two results agree within the workload's tolerance
  (a third replica breaks a tie). Nothing an untrusted car computed reaches a tenant unconfirmed.
- A trusted car's result is spot-checked with probability :meth:`TrustPolicy.check_rate`, which falls as its
  streak of confirmed results grows (``(trust_after / streak)**2``, never below ``floor_rate``); an unchecked
  result is accepted at once. The extra compute is thus about ``2.2 * trust_after`` replicas per car once (its
  warm-up), then ``floor_rate`` of its results.
- A fault (a result outvoted by two agreeing ones) resets the car's streak, so every following result of it is
  checked until it earns trust anew, and withdraws its accepted results that no other car confirmed in jobs still
  running: their units are computed again before those jobs' results are assembled, and are not paid.
- A car is *caught* (:meth:`TrustPolicy.should_suspend`) at ``max_faults`` faults, or as soon as it has more
  faults than confirmed results (a new car whose first checked result is wrong): its credential is suspended
  (leases refused, its work in flight re-issued) and its results no longer count in any comparison.
- Reports that fail the coordinator's cross-checks (:func:`fleetgrid.coordinator.metering.cross_check`: more
  compute or bytes than the coordinator saw, or work done faster than the car's hardware can) are clamped to what
  it saw and halve the car's streak, so an implausible car is checked more often.

What this guarantees: no result of an untrusted car reaches a tenant unconfirmed, and a trusted car that starts
cheating loses every unconfirmed result in running jobs at its first caught fault. What it does not: a trusted
car's unchecked wrong result in a job that finished before the car was caught was delivered; the chance of that
is bounded by the check rate (``floor_rate`` at least). Tenants who can accept none replicate explicitly
(``redundancy``). Colluding cars that return the same wrong result agree with each other; known-answer units
and placing replicas on cars of different owners are the remedies (not done yet).

Pure: the store keeps the counters (:class:`Reputation`), this module only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ..errors import InvalidInput

__all__ = ["Reputation", "TrustPolicy", "Verdict"]


class Verdict(StrEnum):
    """What one check said about one of a car's results or reports."""

    AGREED = "agreed"
    """Another car's result (or the known answer) agreed with it."""
    FAULT = "fault"
    """It was outvoted: the accepted result disagreed with it."""
    IMPLAUSIBLE = "implausible"
    """A report claimed more (compute, bytes) than the coordinator saw."""


@dataclass(frozen=True, slots=True)
class Reputation:
    """The counters the store keeps per car."""

    vehicle_id: str
    agreed: int = 0
    """Results of the car that a check confirmed."""
    streak: int = 0
    """Confirmed results since its last fault (halved by an implausible report)."""
    faults: int = 0
    """Results of the car that a check refuted."""
    implausible: int = 0
    """Reports of the car that claimed more than the coordinator saw."""
    updated_at: float | None = None

    def after(self, verdict: Verdict, now: float) -> Reputation:
        """The counters after one verdict (what the store applies, as increments, in one statement)."""
        if verdict is Verdict.AGREED:
            return Reputation(self.vehicle_id, self.agreed + 1, self.streak + 1, self.faults, self.implausible, now)
        if verdict is Verdict.FAULT:
            return Reputation(self.vehicle_id, self.agreed, 0, self.faults + 1, self.implausible, now)
        return Reputation(self.vehicle_id, self.agreed, self.streak // 2, self.faults, self.implausible + 1, now)


@dataclass(frozen=True, kw_only=True, slots=True)
class TrustPolicy:
    trust_after: int = 3
    """Confirmed results in a row before a car's results are released without a check."""
    floor_rate: float = 0.05
    """The lowest spot-check rate, however long a car's streak."""
    max_faults: int = 2
    """Faults at which a car is suspended whatever its record."""

    def __post_init__(self) -> None:
        if self.trust_after < 1:
            raise InvalidInput(f"trust_after must be >= 1, got {self.trust_after}")
        if not 0.0 < self.floor_rate <= 1.0:
            raise InvalidInput(f"floor_rate must be in (0, 1], got {self.floor_rate}")
        if self.max_faults < 1:
            raise InvalidInput(f"max_faults must be >= 1, got {self.max_faults}")

    def trusted(self, rep: Reputation) -> bool:
        return rep.streak >= self.trust_after

    def check_rate(self, rep: Reputation) -> float:
        """The probability that a result of this car is verified before it is accepted: 1 until it is trusted,
        then falling as ``(trust_after / streak)**2`` to ``floor_rate`` (quadratic: the sum of the checks over a
        long streak stays bounded, ~1.2 * trust_after, where ``1 / streak`` would grow with its logarithm)."""
        if not self.trusted(rep):
            return 1.0
        return max(self.floor_rate, min(1.0, (self.trust_after / rep.streak) ** 2))

    def needs_check(self, rep: Reputation, draw: float) -> bool:
        """Whether to verify this result; ``draw`` is uniform in [0, 1), drawn by the coordinator where no car
        can predict it."""
        return draw < self.check_rate(rep)

    def should_suspend(self, rep: Reputation) -> bool:
        """Whether the car is caught: ``max_faults`` faults, or more faults than confirmed results."""
        return rep.faults >= self.max_faults or rep.faults > rep.agreed
