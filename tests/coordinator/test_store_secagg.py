"""The store's secure-aggregation contract on SQLite and a real PostgreSQL server: one message per car and phase
(a second is refused, never written over the first), only in the round's phase, read back in arrival order with
the driver's verdicts, and a job's rounds gone as its later rounds open, or once it ended, but for the verdicts of
its last closed round (a car may still wait on one)."""

from __future__ import annotations

import threading

import pytest

from fleetgrid.coordinator.store import JobRecord, open_store
from fleetgrid.coordinator.store.secagg_base import SECAGG_CLOSED, SECAGG_TAKEN, SecAggMessage
from fleetgrid.errors import Conflict


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()


def up(car: str, phase: str = "advertise", body: str = '{"k": 1}', round_id: str = "job-1:r0:aa") -> SecAggMessage:
    return SecAggMessage(round_id=round_id, vehicle_id=car, direction="up", phase=phase, body=body,
                         lease_id=f"lease-{car}")


def _job(store, job_id: str = "job-1") -> None:
    if store.tenant_by_token_hash("hash-acme") is None:
        store.add_tenant("acme", "hash-acme", 0.0)
    store.create_job(JobRecord(job_id=job_id, tenant="acme", name=job_id, kind="train", model="mnist1d-cnn",
                               spec={}, items=0, units_total=0, created_at=1.0), [])


def test_a_car_sends_one_message_per_phase_and_only_in_that_phase(store):
    store.open_secagg_round("job-1", "job-1:r0:aa", "advertising", 1.0)
    assert store.secagg_phase("job-1:r0:aa") == "advertising"
    first = store.post_secagg_message(up("car-a"), "advertising")
    assert first is not None and first.seq > 0
    assert store.post_secagg_message(up("car-a", body='{"k": 2}'), "advertising") is None  # refused, not replaced
    assert store.secagg_message("job-1:r0:aa", "car-a", "up", "advertise").body == '{"k": 1}'
    with pytest.raises(Conflict, match="is advertising, not sharing"):
        store.post_secagg_message(up("car-b", "share"), "sharing")
    with pytest.raises(Conflict, match="closed"):
        store.post_secagg_message(up("car-b", round_id="job-1:r0:zz"), "advertising")
    store.advance_secagg_round("job-1:r0:aa", "sharing")
    with pytest.raises(Conflict, match="is sharing, not advertising"):
        store.post_secagg_message(up("car-b"), "advertising")
    assert store.post_secagg_message(up("car-b", "share"), "sharing") is not None


def test_uplinks_come_in_arrival_order_with_the_drivers_verdicts(store):
    store.open_secagg_round("job-1", "job-1:r0:aa", "advertising", 1.0)
    seqs = [store.post_secagg_message(up(c), "advertising").seq for c in ("car-c", "car-a", "car-b")]
    got = store.secagg_uplinks("job-1:r0:aa", 0)
    assert [m.vehicle_id for m in got] == ["car-c", "car-a", "car-b"] and [m.seq for m in got] == seqs
    assert [m.vehicle_id for m in store.secagg_uplinks("job-1:r0:aa", seqs[0])] == ["car-a", "car-b"]
    assert all(m.verdict is None for m in got)
    store.rule_secagg_messages([(seqs[0], SECAGG_TAKEN, None), (seqs[1], "invalid_input", "bad shares")])
    a, c = (store.secagg_message("job-1:r0:aa", v, "up", "advertise") for v in ("car-a", "car-c"))
    assert (c.verdict, a.verdict, a.reason) == (SECAGG_TAKEN, "invalid_input", "bad shares")


def test_downlinks_are_per_car_and_a_closed_round_keeps_only_its_verdicts(store):
    store.open_secagg_round("job-1", "job-1:r0:aa", "advertising", 1.0)
    seq = store.post_secagg_message(up("car-a"), "advertising").seq
    store.rule_secagg_messages([(seq, SECAGG_TAKEN, None)])
    store.post_secagg_message(up("car-c"), "advertising")  # never ruled on: refused when the round closes
    store.put_secagg_downlinks([
        SecAggMessage(round_id="job-1:r0:aa", vehicle_id="car-a", direction="down", phase="share", body="{}"),
        SecAggMessage(round_id="job-1:r0:aa", vehicle_id="car-b", direction="down", phase="share", body=None,
                      verdict="conflict", reason="car-b has dropped")])
    assert store.secagg_message("job-1:r0:aa", "car-a", "down", "share").body == "{}"
    assert store.secagg_message("job-1:r0:aa", "car-b", "down", "share").verdict == "conflict"
    assert store.secagg_message("job-1:r0:aa", "car-c", "down", "share") is None
    store.close_secagg_round("job-1:r0:aa")
    assert store.secagg_phase("job-1:r0:aa") == SECAGG_CLOSED
    assert store.secagg_message("job-1:r0:aa", "car-a", "down", "share") is None
    kept = store.secagg_message("job-1:r0:aa", "car-a", "up", "advertise")
    assert (kept.verdict, kept.body) == (SECAGG_TAKEN, None)
    late = store.secagg_message("job-1:r0:aa", "car-c", "up", "advertise")
    assert late.verdict == "conflict" and "closed before" in late.reason
    with pytest.raises(Conflict, match="closed"):
        store.post_secagg_message(up("car-b"), "advertising")
    with pytest.raises(Conflict, match="not open"):
        store.put_secagg_downlinks([SecAggMessage(round_id="job-9:r0:aa", vehicle_id="car-a", direction="down",
                                                  phase="share", body="{}")])


def test_a_jobs_next_round_drops_an_open_round_and_keeps_the_last_closed_ones_verdicts(store):
    _job(store)
    _job(store, "job-2")
    store.open_secagg_round("job-1", "job-1:r0:aa", "advertising", 1.0)
    store.open_secagg_round("job-2", "job-2:r0:aa", "advertising", 1.0)
    store.post_secagg_message(up("car-a"), "advertising")
    store.post_secagg_message(up("car-a", round_id="job-2:r0:aa"), "advertising")
    store.open_secagg_round("job-1", "job-1:r0:bb", "advertising", 2.0)  # a new driver starts afresh
    assert store.secagg_phase("job-1:r0:aa") is None  # left open by a dead driver: every row gone
    assert store.secagg_message("job-1:r0:aa", "car-a", "up", "advertise") is None
    assert store.secagg_message("job-2:r0:aa", "car-a", "up", "advertise") is not None  # other jobs keep theirs
    taken = store.post_secagg_message(up("car-a", round_id="job-1:r0:bb"), "advertising")
    store.rule_secagg_messages([(taken.seq, SECAGG_TAKEN, None)])
    store.close_secagg_round("job-1:r0:bb")
    store.open_secagg_round("job-1", "job-1:r1:cc", "advertising", 3.0)
    # A car whose message closed the round may still be waiting for its verdict as the next round opens.
    assert store.secagg_message("job-1:r0:bb", "car-a", "up", "advertise").verdict == SECAGG_TAKEN
    store.close_secagg_round("job-1:r1:cc")
    store.open_secagg_round("job-1", "job-1:r2:dd", "advertising", 4.0)  # the round after next: bb goes
    assert store.secagg_phase("job-1:r0:bb") is None
    assert store.secagg_message("job-1:r0:bb", "car-a", "up", "advertise") is None


def test_a_jobs_end_closes_its_round_and_the_next_round_anywhere_sweeps_it(store):
    _job(store)
    _job(store, "job-2")
    store.open_secagg_round("job-1", "job-1:r0:bb", "advertising", 1.0)
    taken = store.post_secagg_message(up("car-a", round_id="job-1:r0:bb"), "advertising")
    store.rule_secagg_messages([(taken.seq, SECAGG_TAKEN, None)])
    store.post_secagg_message(up("car-b", round_id="job-1:r0:bb"), "advertising")
    assert store.finish_job("job-1", "cancelled", 3.0)
    assert store.secagg_phase("job-1:r0:bb") == SECAGG_CLOSED
    assert store.secagg_message("job-1:r0:bb", "car-a", "up", "advertise").verdict == SECAGG_TAKEN
    late = store.secagg_message("job-1:r0:bb", "car-b", "up", "advertise")
    assert late.verdict == Conflict.code and late.body is None  # never ruled on: refused, its body dropped
    with pytest.raises(Conflict):
        store.post_secagg_message(up("car-c", round_id="job-1:r0:bb"), "advertising")
    store.open_secagg_round("job-2", "job-2:r0:aa", "advertising", 4.0)
    assert store.secagg_phase("job-1:r0:bb") is None
    assert store.secagg_uplinks("job-1:r0:bb", 0) == []


def test_racing_twins_of_one_message_store_exactly_one(store):
    store.open_secagg_round("job-1", "job-1:r0:aa", "advertising", 1.0)
    results: list[object] = []
    barrier = threading.Barrier(4)

    def send(i: int) -> None:
        barrier.wait()
        results.append(store.post_secagg_message(up("car-a", body=f'{{"k": {i}}}'), "advertising"))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1
    assert len(store.secagg_uplinks("job-1:r0:aa", 0)) == 1


def test_advancing_waits_for_a_post_in_flight(store):
    """Once the phase moved on, no message of the one before can still land: the driver reads them all."""
    store.open_secagg_round("job-1", "job-1:r0:aa", "advertising", 1.0)
    stop = threading.Event()
    posted: list[SecAggMessage] = []

    def send() -> None:
        i = 0
        while not stop.is_set():
            try:
                m = store.post_secagg_message(up(f"car-{i:04d}"), "advertising")
            except Conflict:
                return
            if m is not None:
                posted.append(m)
            i += 1

    sender = threading.Thread(target=send)
    sender.start()
    while not posted:
        stop.wait(0.01)
    store.advance_secagg_round("job-1:r0:aa", "sharing")
    seen = {m.seq for m in store.secagg_uplinks("job-1:r0:aa", 0)}
    stop.set()
    sender.join()
    assert {m.seq for m in posted} == seen
