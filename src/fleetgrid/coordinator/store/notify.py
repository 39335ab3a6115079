"""What a coordinator replica tells the others on one PostgreSQL database when it makes work leasable: the
payload of a NOTIFY on :data:`CHANNEL`, read by :class:`~fleetgrid.coordinator.store.listener.WorkListener`.

A notification says how many new units anyone may take and which cars were offered work by name, so each replica
wakes about that many of its own waiting cars, not all of them. It is sent inside the transaction that made the work,
so PostgreSQL delivers it only if that commits. Each store tags what it sends with its own ``origin`` and ignores
its own: the coordinator that made the work has already woken its waiters itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence

__all__ = ["CHANNEL", "MAX_PAYLOAD_BYTES", "decode", "encode"]

log = logging.getLogger("fleetgrid.coordinator.store.notify")

CHANNEL = "fleetgrid_work"
MAX_PAYLOAD_BYTES = 7900
"""PostgreSQL refuses a NOTIFY payload of 8000 bytes or more (its default build); a list of cars too long for one
payload is split over several notifications of the same transaction."""


def encode(origin: str, units: int | None, vehicles: Sequence[str] = ()) -> Iterator[str]:
    """The payloads announcing ``units`` and ``vehicles``, each under :data:`MAX_PAYLOAD_BYTES`. JSON is ASCII-only
    here, so its length in characters is its length in bytes."""
    def payload(n: int | None, named: list[str]) -> str:
        return json.dumps({"o": origin, "u": n, "v": named}, separators=(",", ":"))

    batch: list[str] = []
    size = len(payload(units, []))
    for vehicle in vehicles:
        added = len(json.dumps(vehicle)) + 1
        if size + added > MAX_PAYLOAD_BYTES and batch:
            yield payload(units, batch)
            units, batch, size = 0, [], len(payload(0, []))
        if size + added > MAX_PAYLOAD_BYTES:  # no id can be this long; should one be, every waiting car looks
            units = None
            continue
        batch.append(vehicle)
        size += added
    yield payload(units, batch)


def decode(payload: str) -> tuple[str, int | None, tuple[str, ...]]:
    """``(origin, units, vehicles)``; a payload this version cannot read asks every waiting car to look."""
    try:
        data = json.loads(payload)
        units = data["u"]
        if units is not None and not isinstance(units, int):
            raise TypeError(f"units is {type(units).__name__}")
        return str(data["o"]), units, tuple(str(v) for v in data["v"])
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("unreadable work notification %r (%s): every waiting car looks", payload[:200], exc)
        return "", None, ()
