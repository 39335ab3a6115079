"""Cars long-polling for work, woken as work appears: one car per new unit, or a car by name for work offered to it.

Waking every waiting car whenever anything changes (a thundering herd) makes 10,000 connected cars cost 10,000
store queries per new unit. Here a new unit wakes the car that has waited longest, a share offered to one car wakes
that car, and a waiter re-checks on its own only every ``long_poll_recheck_s``, a safety net (a woken car that could
not take the unit it was woken for). Work another replica on the same PostgreSQL database creates wakes cars here
the same way, through the store's :meth:`~fleetgrid.coordinator.store.Store.listen_for_work`.

A waiter is registered *before* its car looks for work, so a wake that lands between the look and the wait is not
lost: the wait then returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterable

__all__ = ["LongPolls", "Ticket"]


class Ticket:
    """One car's place in the queue of waiters."""

    __slots__ = ("asleep", "event", "key", "vehicle_id")

    def __init__(self, key: int, vehicle_id: str) -> None:
        self.key, self.vehicle_id, self.event = key, vehicle_id, asyncio.Event()
        self.asleep = False
        """Whether the car is in :meth:`wait` now: it looked for work and found none."""

    async def wait(self, timeout_s: float) -> bool:
        """True if woken, False if ``timeout_s`` passed first."""
        self.asleep = True
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), timeout_s)
        finally:
            self.asleep = False
        return self.event.is_set()


class LongPolls:
    """The waiting cars of one coordinator process. ``enter``/``leave``/``wait`` run on the event loop; ``wake``
    may be called from any thread."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[int, Ticket] = {}  # in arrival order: the longest waiting is woken first
        self._keys = itertools.count()

    def __len__(self) -> int:
        return len(self._waiting)

    def sleeping(self) -> int:
        """How many of the cars waiting here looked for work, found none, and wait to be woken. Safe from any
        thread: ``list()`` copies the waiters in one step, so the event loop cannot change them midway."""
        return sum(ticket.asleep for ticket in list(self._waiting.values()))

    def enter(self, vehicle_id: str) -> Ticket:
        ticket = Ticket(next(self._keys), vehicle_id)
        self._waiting[ticket.key] = ticket
        return ticket

    def leave(self, ticket: Ticket) -> None:
        self._waiting.pop(ticket.key, None)

    def wake(self, units: int | None = 1, vehicles: Iterable[str] = ()) -> None:
        """Work appeared: ``units`` new units anyone may take (None: an unknown amount, so every waiter looks) and
        work offered to ``vehicles`` by name."""
        loop, named = self.loop, tuple(vehicles)
        if loop is None or loop.is_closed():
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:  # no loop runs in this thread
            on_loop = False
        if on_loop:
            self._wake_now(units, named)
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting any more
                loop.call_soon_threadsafe(self._wake_now, units, named)

    def _wake_now(self, units: int | None, vehicles: tuple[str, ...]) -> None:
        if vehicles:
            wanted = set(vehicles)
            for ticket in [t for t in self._waiting.values() if t.vehicle_id in wanted]:
                self._set(ticket)
        chosen = list(self._waiting.values()) if units is None else list(itertools.islice(self._waiting.values(),
                                                                                           max(units, 0)))
        for ticket in chosen:
            self._set(ticket)

    def _set(self, ticket: Ticket) -> None:
        ticket.event.set()
        self._waiting.pop(ticket.key, None)
