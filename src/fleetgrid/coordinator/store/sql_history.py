"""The SQL store's fleet history: car counts per state over time (mixed into
:class:`~fleetgrid.coordinator.store.sql.SQLStore`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .schema import car_state_samples

__all__ = ["HistoryRows"]


class HistoryRows:
    _write: Callable[[], AbstractContextManager[Connection]]
    _read: Callable[[], AbstractContextManager[Connection]]

    def record_car_states(self, at: float, counts: Mapping[str, int], keep_since: float) -> None:
        t = car_state_samples
        try:
            with self._write() as c:
                c.execute(delete(t).where((t.c.at < keep_since) | (t.c.at == at)))
                if counts:
                    c.execute(insert(t), [{"at": at, "state": s, "cars": int(n)} for s, n in sorted(counts.items())])
        except IntegrityError:
            pass  # another replica on this database took the same sample meanwhile: one is enough

    def car_state_history(self, since: float) -> list[tuple[float, dict[str, int]]]:
        t = car_state_samples
        out: dict[float, dict[str, int]] = {}
        with self._read() as c:
            for at, state, cars in c.execute(select(t.c.at, t.c.state, t.c.cars).where(t.c.at >= since)
                                             .order_by(t.c.at, t.c.state)):
                out.setdefault(at, {})[state] = cars
        return list(out.items())
