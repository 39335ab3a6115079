"""The payload of a work notification between replicas: bounded in size however many cars it names."""

from __future__ import annotations

from fleetgrid.coordinator.store.notify import MAX_PAYLOAD_BYTES, decode, encode


def test_a_notification_reads_back_as_sent():
    (payload,) = encode("r1", 3, ["v-a", "v-b"])
    assert decode(payload) == ("r1", 3, ("v-a", "v-b"))
    (payload,) = encode("r1", None)
    assert decode(payload) == ("r1", None, ())


def test_many_named_cars_are_split_over_payloads_postgresql_accepts():
    vehicles = [f"v-{i:012x}" for i in range(2000)]
    payloads = list(encode("r1", 7, vehicles))
    assert len(payloads) > 1
    assert all(len(p.encode()) < min(MAX_PAYLOAD_BYTES + 1, 8000) for p in payloads)
    decoded = [decode(p) for p in payloads]
    assert [v for _, _, named in decoded for v in named] == vehicles  # each car named once, none lost
    assert sum(units for _, units, _ in decoded if units is not None) == 7  # the units are counted once


def test_a_name_too_long_for_any_payload_makes_every_car_look():
    payloads = list(encode("r1", 2, ["v-short", "x" * 9000]))
    assert all(len(p.encode()) < 8000 for p in payloads)
    decoded = [decode(p) for p in payloads]
    assert None in [units for _, units, _ in decoded]
    assert [v for _, _, named in decoded for v in named] == ["v-short"]


def test_an_unreadable_payload_makes_every_car_look():
    for garbage in ("", "not json", '{"o": "r1"}', '{"o": "r1", "u": "many", "v": []}'):
        assert decode(garbage) == ("", None, ())
