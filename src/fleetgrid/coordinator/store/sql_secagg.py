"""The SQL store's secure-aggregation rounds and their phase messages (mixed into
:class:`~fleetgrid.coordinator.store.sql.SQLStore`; the contract is :class:`.secagg_base.SecAggState`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ...errors import Conflict
from .schema import LIVE_JOB_STATES, jobs, secagg_messages, secagg_rounds
from .secagg_base import SECAGG_CLOSED, SecAggMessage

__all__ = ["SecAggRows"]



def _message(row: Any) -> SecAggMessage:
    return SecAggMessage(round_id=row.round_id, vehicle_id=row.vehicle_id, direction=row.direction,
                         phase=row.phase, body=row.body, lease_id=row.lease_id, verdict=row.verdict,
                         reason=row.reason, seq=row.seq)


def _row(m: SecAggMessage, job_id: str) -> dict[str, Any]:
    return {"round_id": m.round_id, "job_id": job_id, "vehicle_id": m.vehicle_id, "direction": m.direction,
            "phase": m.phase, "lease_id": m.lease_id, "body": m.body, "verdict": m.verdict, "reason": m.reason}


def _close(c: Connection, rounds: Any, messages: Any, reason: str) -> None:
    """Close the rounds ``rounds`` selects: downlinks and bodies of ``messages`` go, a message not ruled on is
    refused with ``reason``, verdicts stay."""
    t = secagg_messages
    c.execute(update(secagg_rounds).where(rounds).values(phase=SECAGG_CLOSED))
    c.execute(delete(t).where(messages, t.c.direction == "down"))
    c.execute(update(t).where(messages, t.c.verdict.is_(None)).values(verdict=Conflict.code, reason=reason))
    c.execute(update(t).where(messages).values(body=None))


class SecAggRows:
    _write: Callable[[], AbstractContextManager[Connection]]
    _read: Callable[[], AbstractContextManager[Connection]]

    def open_secagg_round(self, job_id: str, round_id: str, phase: str, now: float) -> None:
        r = secagg_rounds
        with self._write() as c:
            # The job's latest closed round keeps its verdicts: a car whose message closed that round may still
            # be waiting for its answer. Every other row of the job's rounds goes, and so do the rounds of jobs
            # that ended (their last round's verdicts were kept for the same reason).
            latest = c.execute(select(r.c.round_id).where(r.c.job_id == job_id, r.c.phase == SECAGG_CLOSED)
                               .order_by(r.c.opened_at.desc()).limit(1)).scalar_one_or_none()
            self._drop_secagg_rounds(c, job_id, keep=latest)
            ended = select(jobs.c.job_id).where(jobs.c.state.notin_(LIVE_JOB_STATES))
            c.execute(delete(secagg_messages).where(secagg_messages.c.job_id.in_(ended)))
            c.execute(delete(r).where(r.c.job_id.in_(ended)))
            c.execute(insert(r).values(round_id=round_id, job_id=job_id, phase=phase, opened_at=now))

    @staticmethod
    def _drop_secagg_rounds(c: Connection, job_id: str, keep: str | None = None) -> None:
        """Every row of the job's rounds but ``keep``'s (inside the caller's transaction)."""
        r, t = secagg_rounds, secagg_messages
        c.execute(delete(t).where(t.c.job_id == job_id, t.c.round_id != (keep or "")))
        c.execute(delete(r).where(r.c.job_id == job_id, r.c.round_id != (keep or "")))

    @staticmethod
    def _end_secagg_rounds(c: Connection, job_id: str) -> None:
        """The job ended: its rounds are closed as :meth:`close_secagg_round` closes one (verdicts kept for cars
        still waiting; swept when any job's next round opens)."""
        _close(c, secagg_rounds.c.job_id == job_id, secagg_messages.c.job_id == job_id,
               "the job ended before this message was taken")

    def secagg_phase(self, round_id: str) -> str | None:
        with self._read() as c:
            return c.execute(select(secagg_rounds.c.phase)
                             .where(secagg_rounds.c.round_id == round_id)).scalar_one_or_none()

    def advance_secagg_round(self, round_id: str, phase: str) -> None:
        with self._write() as c:  # waits for every post holding the round's row (FOR SHARE) to commit
            c.execute(update(secagg_rounds).where(secagg_rounds.c.round_id == round_id).values(phase=phase))

    def post_secagg_message(self, message: SecAggMessage, at_phase: str) -> SecAggMessage | None:
        r, t = secagg_rounds, secagg_messages
        try:
            with self._write() as c:
                found = c.execute(select(r.c.phase, r.c.job_id).where(r.c.round_id == message.round_id)
                                  .with_for_update(read=True)).one_or_none()
                if found is None or found.phase == SECAGG_CLOSED:
                    raise Conflict(f"secure round {message.round_id!r} is closed; lease new work")
                if found.phase != at_phase:
                    raise Conflict(f"round {message.round_id!r} is {found.phase}, not {at_phase}")
                if c.execute(select(t.c.seq).where(
                        t.c.round_id == message.round_id, t.c.vehicle_id == message.vehicle_id,
                        t.c.direction == "up", t.c.phase == message.phase)).first() is not None:
                    return None
                key = c.execute(insert(t).values(**_row(message, found.job_id))).inserted_primary_key
                assert key is not None
        except IntegrityError:  # the same car's racing twin got there first
            return None
        message.seq = int(key[0])
        return message

    def secagg_uplinks(self, round_id: str, after_seq: int) -> list[SecAggMessage]:
        t = secagg_messages
        with self._read() as c:
            rows = c.execute(select(t).where(t.c.round_id == round_id, t.c.direction == "up", t.c.seq > after_seq)
                             .order_by(t.c.seq))
            return [_message(row) for row in rows]

    def rule_secagg_messages(self, rulings: Sequence[tuple[int, str, str | None]]) -> None:
        if not rulings:
            return
        t = secagg_messages
        with self._write() as c:
            c.execute(update(t).where(t.c.seq == bindparam("s")).values(verdict=bindparam("v"),
                                                                         reason=bindparam("r")),
                      [{"s": s, "v": v, "r": r} for s, v, r in rulings])

    def put_secagg_downlinks(self, messages: Sequence[SecAggMessage]) -> None:
        if not messages:
            return
        with self._write() as c:
            job_id = c.execute(select(secagg_rounds.c.job_id)
                               .where(secagg_rounds.c.round_id == messages[0].round_id)).scalar_one_or_none()
            if job_id is None:
                raise Conflict(f"secure round {messages[0].round_id!r} is not open; nothing to send its cars")
            c.execute(insert(secagg_messages), [_row(m, job_id) for m in messages])

    def secagg_message(self, round_id: str, vehicle_id: str, direction: str, phase: str) -> SecAggMessage | None:
        t = secagg_messages
        with self._read() as c:
            row = c.execute(select(t).where(t.c.round_id == round_id, t.c.vehicle_id == vehicle_id,
                                            t.c.direction == direction, t.c.phase == phase)).first()
        return None if row is None else _message(row)

    def close_secagg_round(self, round_id: str) -> None:
        with self._write() as c:
            _close(c, secagg_rounds.c.round_id == round_id, secagg_messages.c.round_id == round_id,
                   f"secure round {round_id!r} closed before this message was taken; lease new work")
