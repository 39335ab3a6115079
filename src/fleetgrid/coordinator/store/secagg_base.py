"""The store's secure-aggregation rounds: each open round's phase, and the phase messages of its cars (uplink) and
what each car fetches next (downlink), so that any coordinator replica can take a car's message or answer its
fetch while one replica, the job's driver, runs the protocol. Kept apart from :mod:`.base` (one idea per module);
:class:`.base.Store` has it.

A round's rows live while the round is open; closing it keeps only the verdicts (for a car still waiting on one),
which go when the round after next of its job opens, or when any round opens after its job ended: the tables hold
at most two rounds per live job, and the last round's verdicts of jobs ended since a round last opened.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SECAGG_CLOSED", "SECAGG_TAKEN", "SecAggMessage", "SecAggState"]

SECAGG_CLOSED = "closed"
"""The phase of a round that ended: no message is taken any more."""
SECAGG_TAKEN = "taken"
"""The verdict on an uplink message the driver fed to the protocol; any other verdict is an error code."""


@dataclass(slots=True)
class SecAggMessage:
    round_id: str
    vehicle_id: str
    direction: str
    """``up``: the car's message of ``phase``; ``down``: what the car fetches before sending ``phase``."""
    phase: str
    body: str | None
    """The wire body, JSON; None on a downlink that is a refusal, and once the round closed."""
    lease_id: str = ""
    verdict: str | None = None
    """Uplink: None until the driver ruled, then :data:`SECAGG_TAKEN` or the error code it refused it with.
    Downlink: None, or the error code the car's fetch is answered with."""
    reason: str | None = None
    """The error's message, with an error code in ``verdict``."""
    seq: int = 0
    """The store's order of arrival (set on insert)."""


class SecAggState(ABC):
    @abstractmethod
    def open_secagg_round(self, job_id: str, round_id: str, phase: str, now: float) -> None:
        """Open ``round_id`` at ``phase``, and drop every row of the job's earlier rounds (closed, or left open by
        a driver that died: a car of those rounds is then told they closed) but the verdicts of its latest closed
        round (a car whose message closed it may still be waiting for its answer), and every row of ended jobs."""

    @abstractmethod
    def secagg_phase(self, round_id: str) -> str | None:
        """The phase of an open or closed round; None for a round the store does not hold (ended long ago)."""

    @abstractmethod
    def advance_secagg_round(self, round_id: str, phase: str) -> None:
        """Move the round to ``phase`` (or :data:`SECAGG_CLOSED`). Once this returns no message of the phase before
        can still arrive: :meth:`post_secagg_message` checks the phase in the same transaction, under a lock."""

    @abstractmethod
    def post_secagg_message(self, message: SecAggMessage, at_phase: str) -> SecAggMessage | None:
        """Store a car's uplink message if the round is at ``at_phase``; returns it with its ``seq``, or None when
        the car already sent its message of this phase (a second one is refused, never written over the first).
        :class:`Conflict` when the round is closed, unknown, or at another phase."""

    @abstractmethod
    def secagg_uplinks(self, round_id: str, after_seq: int) -> list[SecAggMessage]:
        """The round's uplink messages stored after ``after_seq``, in arrival order."""

    @abstractmethod
    def rule_secagg_messages(self, rulings: Sequence[tuple[int, str, str | None]]) -> None:
        """Record ``(seq, verdict, reason)`` on uplink messages (the driver's decision on each)."""

    @abstractmethod
    def put_secagg_downlinks(self, messages: Sequence[SecAggMessage]) -> None:
        """Store what each car fetches for a phase (written once per car and phase, by the driver)."""

    @abstractmethod
    def secagg_message(self, round_id: str, vehicle_id: str, direction: str, phase: str) -> SecAggMessage | None:
        """One car's message of a phase, either way; None if there is none (yet)."""

    @abstractmethod
    def close_secagg_round(self, round_id: str) -> None:
        """End the round: no message is taken any more, one not ruled on yet is refused (``conflict``), downlinks
        and message bodies are dropped; the verdicts stay a while (see the module's docstring)."""
