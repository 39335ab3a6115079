"""How far the coordinator trusts each car's results: a reputation per car and the adaptive spot-check policy
(BOINC's adaptive replication) that decides which results are verified before a tenant may see them.

The policy, as the scheduler applies it to every result of a verifiable workload (batch inference) whose tenant
asked for no replication of its own:

- A car is *untrusted* until ``trust_after`` of its results in a row were confirmed by another car. Every result
  of an untrusted car is verified before it is accepted: the unit gets a second replica, leased to another car,
  and the result is accepted only when two results agree within the workload's tolerance (a third replica breaks
  a tie). Nothing an untrusted car computed reaches a tenant unconfirmed.
- A trusted car's result is spot-checked with probability :meth:`TrustPolicy.check_rate`, which falls as its
  streak of confirmed results grows (``trust_after / streak``, never below ``floor_rate``); an unchecked result is
  accepted at once. A fault (a result that the other replicas outvoted) resets the streak: the car is untrusted
  again, so every following result is checked until it earns trust anew.
- A car is *caught* (:meth:`TrustPolicy.should_suspend`) at ``max_faults`` faults, or as soon as it has more
  faults than confirmed results (a new car whose first checked result is wrong). A caught car's credential is
  suspended, its results not yet confirmed by another car in jobs still running are recomputed (their units
  re-opened, the job's result not assembled before they are done), and its refuted work is not paid.
- Reports that fail the coordinator's cross-checks (:mod:`fleetgrid.coordinator.metering`: more compute or bytes
  than the coordinator saw) are clamped to what it saw and halve the car's streak, so an implausible car is
  checked more often.

Why no wrong item reaches a tenant: an untrusted car's results are all verified; a trusted car's unchecked result
is released at once, so a car that cheats only after earning trust can slip a result through; its next spot check
catches it, and every result of it still in a running job is recomputed then. Results of jobs that already
finished are the residual risk, bounded by ``floor_rate`` and ``trust_after``; tenants who want none replicate
explicitly (``redundancy``).

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
    trust_after: int = 5
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
        then falling as ``trust_after / streak`` to ``floor_rate``."""
        if not self.trusted(rep):
            return 1.0
        return max(self.floor_rate, min(1.0, self.trust_after / rep.streak))

    def needs_check(self, rep: Reputation, draw: float) -> bool:
        """Whether to verify this result; ``draw`` is uniform in [0, 1), drawn by the coordinator where no car
        can predict it."""
        return draw < self.check_rate(rep)

    def should_suspend(self, rep: Reputation) -> bool:
        """Whether the car is caught: ``max_faults`` faults, or more faults than confirmed results."""
        return rep.faults >= self.max_faults or rep.faults > rep.agreed
