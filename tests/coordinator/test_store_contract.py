"""One contract for every store backend: the same tests run on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from fleetgrid.coordinator.store import JobRecord, LedgerRecord, UnitRecord, VehicleRecord, open_store
from fleetgrid.coordinator.store.billing_base import RefusalRecord
from fleetgrid.errors import AuthError, Conflict, Forbidden, LeaseExpired, NotFound

D1, D2, D3 = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()


def _vehicle(store, vid="v-1"):
    store.add_vehicle(VehicleRecord(vehicle_id=vid, name=vid, hardware="ai4", credential_hash="h" + vid,
                                    enrolled_at=1.0))
    return vid


def _job(store, job_id="job-1", n_units=3, replicas=1, tenant="acme"):
    if store.tenant_by_token_hash("hash-" + tenant) is None:
        store.add_tenant(tenant, "hash-" + tenant, 0.0)
    job = JobRecord(job_id=job_id, tenant=tenant, name=job_id, kind="inference", model="mnist1d-cnn",
                    spec={"redundancy": {"replicas": replicas, "quorum": replicas}}, items=10 * n_units,
                    units_total=n_units, created_at=1.0)
    units = [UnitRecord(unit_id=f"{job_id}:{i}:{r}", job_id=job_id, idx=i, replica=r, start_item=10 * i,
                        end_item=10 * i + 10, input_digest=D1, input_format="npy", replicas=replicas)
             for i in range(n_units) for r in range(replicas)]
    store.create_job(job, units)
    return job


def _ledger(lease_id, vid="v-1", items=10):
    return LedgerRecord(lease_id=lease_id, vehicle_id=vid, job_id="job-1", items=items, compute_s=1.5,
                        cellular_bytes=100, wifi_bytes=1000, at=5.0)


def test_tenants_and_secrets(store):
    store.add_tenant("acme", "h1", 0.0)
    assert store.tenant_by_token_hash("h1") == "acme"
    assert store.tenant_by_token_hash("nope") is None
    with pytest.raises(Conflict, match="acme"):
        store.add_tenant("acme", "h2", 0.0)
    store.add_tenant("acme", "h3", 0.0, replace=True)
    assert store.tenant_by_token_hash("h3") == "acme"
    assert store.get_secret("enroll") is None
    store.set_secret("enroll", "x")
    store.set_secret("enroll", "y")
    assert store.get_secret("enroll") == "y"


def test_tenants_are_listed_and_revoked_keeping_their_rows(store):
    store.add_tenant("zeta", "hz", 2.0)
    store.add_tenant("acme", "ha", 1.0)
    assert [(t.name, t.created_at, t.revoked) for t in store.list_tenants()] == [("acme", 1.0, False),
                                                                                ("zeta", 2.0, False)]
    assert store.revoke_tenant("acme") == "ha"
    assert store.tenant_by_token_hash("ha") is None
    assert [t.revoked for t in store.list_tenants()] == [True, False]
    assert store.revoke_tenant("acme") is not None  # twice is harmless
    assert store.revoke_tenant("nobody") is None
    store.add_tenant("bravo", "hb", 3.0)
    assert store.revoke_tenant("bravo") and [t.revoked for t in store.list_tenants()] == [True, True, False]


def test_vehicle_state_and_revocation(store):
    vid = _vehicle(store)
    store.report_state(vid, {"drive": "parked", "soc": 0.5}, True, 7.0)
    v = store.get_vehicle(vid)
    assert (v.state["drive"], v.eligible, v.last_seen, v.revoked) == ("parked", True, 7.0, False)
    assert store.revoke_vehicle(vid) is True
    assert store.get_vehicle(vid).revoked is True
    assert store.revoke_vehicle("v-missing") is False


def test_units_are_leased_in_order_once(store):
    _vehicle(store)
    _job(store)
    got = [store.acquire("v-1", 10.0, 70.0, f"l{i}") for i in range(4)]
    assert [g[1].idx for g in got[:3]] == [0, 1, 2]
    assert got[3] is None
    lease, unit = got[0]
    assert (lease.vehicle_id, lease.deadline, unit.state, unit.attempts) == ("v-1", 70.0, "leased", 1)
    assert store.get_job("job-1").state == "queued"
    store.start_job("job-1")
    assert store.get_job("job-1").state == "running"
    assert store.counts()["leases_in_flight"] == 3
    assert (store.count_units("job-1", "leased"), store.count_units("job-1", "pending")) == (3, 0)


def test_one_car_never_gets_two_replicas_of_a_unit(store):
    _vehicle(store, "v-1")
    _vehicle(store, "v-2")
    _job(store, n_units=1, replicas=2)
    assert store.acquire("v-1", 1.0, 2.0, "l1")[1].replica == 0
    assert store.acquire("v-1", 1.0, 2.0, "l2") is None
    assert store.acquire("v-2", 1.0, 2.0, "l3")[1].replica == 1


def test_complete_writes_ledger_and_release_requeues_with_checkpoint(store):
    _vehicle(store)
    _job(store, n_units=2)
    l0 = store.acquire("v-1", 1.0, 2.0, "l0")[0]
    l1 = store.acquire("v-1", 1.0, 2.0, "l1")[0]
    l0, u0, _ = store.lease_context(l0.lease_id)
    job = store.complete(l0, u0, D2, _ledger("l0"), 3.0, accept=True, artifact=(10, "vehicle:v-1"))
    unit = store.get_unit(u0.unit_id)
    assert (unit.state, unit.result_digest, job.units_done) == ("done", D2, 1)
    assert store.owns("vehicle:v-1", D2)
    assert store.accepted_results("job-1") == [(0, D2)]
    lease, unit_ctx, job_ctx = store.lease_context("l0")
    assert (lease.state, unit_ctx.unit_id, job_ctx.job_id) == ("completed", l0.unit_id, "job-1")
    assert store.lease_context("missing") is None
    assert store.get_lease("l0").state == "completed"
    store.release(l1.lease_id, "handed_back", 4.0, preempted=True, checkpoint=(4, D3))
    unit1 = store.get_unit(l1.unit_id)
    assert (unit1.state, unit1.checkpoint_items, unit1.checkpoint_digest) == ("pending", 4, D3)
    job = store.get_job("job-1")
    assert (job.reissued_units, job.preemptions) == (1, 1)
    again = store.acquire("v-1", 5.0, 6.0, "l2")
    assert again[1].unit_id == l1.unit_id and again[1].attempts == 2
    assert (l1.resumed_items, again[0].resumed_items) == (0, 4)  # the lease remembers the checkpoint it resumes
    assert store.lease_context("l2")[0].resumed_items == 4 and store.get_lease("l2").resumed_items == 4
    totals = store.ledger_totals()
    assert totals == [{"vehicle_id": "v-1", "units": 1, "items": 10, "examples": 0, "steps": 0, "compute_s": 1.5,
                       "cellular_bytes": 100, "wifi_bytes": 1000}]


def test_expired_leases_and_progress(store):
    _vehicle(store)
    _job(store, n_units=1)
    lease = store.acquire("v-1", 1.0, 10.0, "l0")[0]
    assert store.expired_leases(9.0) == []
    store.renew(lease.lease_id, 20.0)
    assert store.expired_leases(15.0) == []
    assert [x.lease_id for x in store.expired_leases(21.0)] == ["l0"]
    store.record_progress("l0", 5, D3)
    store.record_progress("l0", 3, D2)  # an older checkpoint never replaces a newer one
    unit = store.get_unit(lease.unit_id)
    assert (unit.checkpoint_items, unit.checkpoint_digest) == (5, D3)


def test_accept_once_and_finish_cancels_the_rest(store):
    _vehicle(store)
    _job(store, n_units=2)
    store.acquire("v-1", 1.0, 2.0, "l0")
    assert store.accept_unit("job-1", 0, D2) is True
    assert store.accept_unit("job-1", 0, D3) is False
    assert store.get_job("job-1").units_done == 1
    assert store.accepted_results("job-1") == [(0, D2)]
    store.finish_job("job-1", "cancelled", 9.0, error="stop")
    assert store.get_lease("l0").state == "cancelled"
    assert {u.state for u in store.units_of("job-1")} == {"cancelled"}
    assert store.acquire("v-1", 10.0, 20.0, "l9") is None
    assert store.counts()["jobs"] == {"cancelled": 1}


def test_artifact_owners_and_vehicle_reads(store):
    _vehicle(store)
    _job(store, n_units=1)
    store.add_artifact(D1, 10, "tenant:acme", 1.0)
    store.add_artifact(D1, 10, "tenant:acme", 1.0)
    store.add_artifact(D1, 10, "vehicle:v-2", 1.0)
    assert sorted(store.get_artifact(D1).owners) == ["tenant:acme", "vehicle:v-2"]
    assert store.owns("tenant:acme", D1) and not store.owns("tenant:other", D1)
    assert store.get_artifact(D2) is None
    assert store.vehicle_may_read("v-1", D1) is False
    store.acquire("v-1", 1.0, 2.0, "l0")
    assert store.vehicle_may_read("v-1", D1) is True
    assert store.vehicle_may_read("v-1", D2) is False
    store.add_artifacts([(D2, 5), (D3, 6), (D2, 5)], "tenant:acme", 2.0)
    assert store.get_artifact(D3).size == 6 and store.owns("tenant:acme", D2)


def test_job_owned_artifacts_are_read_by_the_jobs_cars_and_released_by_owner(store):
    """A training job's global versions are owned by 'job:ID': a car may read them while it holds an active lease of
    that job, and no longer; releasing an owner's hold removes the records nobody else holds, and says which."""
    _vehicle(store)
    _vehicle(store, "v-2")
    _job(store, "job-1", n_units=1)
    _job(store, "job-2", n_units=1)
    D4 = "d" * 64
    store.add_artifacts([(D2, 5), (D3, 6)], "job:job-1", 1.0)
    store.add_artifact(D3, 6, "job:job-2", 1.0)  # the same bytes published by two jobs (an identical version 0)
    store.add_artifact(D4, 7, "vehicle:v-1", 1.0)
    assert store.vehicle_may_read("v-1", D2) is False
    store.acquire("v-1", 1.0, 2.0, "l0")  # a lease of job-1 (the older job's unit goes first)
    assert store.vehicle_may_read("v-1", D2) is True and store.vehicle_may_read("v-2", D2) is False
    store.acquire("v-2", 1.0, 2.0, "l1")  # a lease of job-2
    assert store.vehicle_may_read("v-2", D3) is True and store.vehicle_may_read("v-2", D2) is False

    assert store.release_artifacts("job:job-1", [D2, D3, D4]) == [D2]  # D3 is still job-2's; D4 never job-1's
    assert store.get_artifact(D2) is None and store.get_artifact(D3).owners == ["job:job-2"]
    assert store.vehicle_may_read("v-1", D2) is False and store.owns("vehicle:v-1", D4)
    assert store.release_artifacts("job:job-1", [D2]) == []  # twice is harmless
    assert store.release_artifacts("job:job-2") == [D3] and store.get_artifact(D3) is None
    assert store.release_artifacts("vehicle:v-1", [D4]) == [D4] and store.get_artifact(D4) is None


def test_state_survives_reopening(store_url):
    first = open_store(store_url)
    _vehicle(first)
    _job(first)
    first.acquire("v-1", 1.0, 2.0, "l0")
    first.start_job("job-1")
    first.close()
    second = open_store(store_url)
    assert second.get_lease("l0").state == "active"
    assert second.get_job("job-1").state == "running"
    second.close()


def test_training_checkpoints_and_ledger_rows_without_units(store):
    """A training job has no units: its progress is a checkpoint pointer, its metering rows name in-memory leases."""
    _vehicle(store)
    job = _job(store, "job-t", n_units=0)
    assert store.get_job("job-t").checkpoint_digest is None
    store.save_checkpoint(job.job_id, 3, D2)
    got = store.get_job("job-t")
    assert (got.units_done, got.checkpoint_digest, got.state) == (3, D2, "queued")
    store.save_checkpoint(job.job_id, 4, D3)
    assert (store.get_job("job-t").units_done, store.get_job("job-t").checkpoint_digest) == (4, D3)
    store.record_ledger(_ledger("tl-1", items=64))
    store.record_ledger(_ledger("tl-1", items=64))  # a retried report is metered once
    store.record_ledger(_ledger("tl-2", items=32))
    (row,) = store.ledger_totals()
    assert (row["vehicle_id"], row["units"], row["items"], row["wifi_bytes"]) == ("v-1", 2, 96, 2000)


def test_ledger_totals_never_overflow(store):
    """Sums of rows at the very edge of the columns (written before counters were bounded) still come back."""
    for i in range(3):
        store.record_ledger(LedgerRecord(lease_id=f"big-{i}", vehicle_id="v-1", job_id="job-1", items=2**30,
                                         compute_s=1e308, cellular_bytes=2**62, wifi_bytes=2**62, at=1.0))
    (row,) = store.ledger_totals()
    assert row["units"] == 3 and row["items"] == 3 * 2**30
    assert row["wifi_bytes"] >= 3 * 2**62 - 2**20 and row["cellular_bytes"] == row["wifi_bytes"]
    assert 1e308 <= row["compute_s"] < float("inf")


def test_ledger_totals_of_a_time_range_count_the_rows_closed_in_it(store):
    for i, (vid, at) in enumerate([("v-1", 10.0), ("v-1", 20.0), ("v-2", 20.0), ("v-1", 30.0)]):
        store.record_ledger(LedgerRecord(lease_id=f"r-{i}", vehicle_id=vid, job_id="job-1", items=i + 1,
                                         compute_s=1.0, cellular_bytes=0, wifi_bytes=0, at=at))
    assert [(r["vehicle_id"], r["units"], r["items"]) for r in store.ledger_totals(20.0, 30.0)] == [
        ("v-1", 1, 2), ("v-2", 1, 3)]  # [start, end): 30.0 is the next range's
    assert [(r["vehicle_id"], r["items"]) for r in store.ledger_totals()] == [("v-1", 7), ("v-2", 3)]
    assert store.ledger_totals(40.0, 50.0) == []


def test_a_job_is_stored_with_its_shards_or_not_at_all(store):
    store.add_tenant("acme", "hash-acme", 0.0)
    job = JobRecord(job_id="job-s", tenant="acme", name="s", kind="inference", model="mnist1d-cnn", spec={},
                    items=10, units_total=1, created_at=1.0)
    unit = UnitRecord(unit_id="job-s:0:0", job_id="job-s", idx=0, replica=0, start_item=0, end_item=10,
                      input_digest=D1, input_format="npy")
    store.create_job(job, [unit], artifacts=[(D1, 123)])
    assert store.owns("tenant:acme", D1) and store.get_artifact(D1).size == 123
    clash = UnitRecord(unit_id="job-s:0:0", job_id="job-t", idx=0, replica=0, start_item=0, end_item=10,
                       input_digest=D2, input_format="npy")
    with pytest.raises(IntegrityError):  # the unit id is taken: the whole transaction rolls back
        store.create_job(JobRecord(**{**{k: getattr(job, k) for k in JobRecord.__slots__}, "job_id": "job-t"}),
                         [clash], artifacts=[(D2, 5)])
    assert store.get_artifact(D2) is None and store.get_job("job-t") is None


def test_a_revoked_or_unknown_vehicle_is_refused_work(store):
    _vehicle(store)
    _job(store, n_units=2)
    assert store.acquire("v-1", 1.0, 2.0, "l0") is not None
    store.revoke_vehicle("v-1")
    with pytest.raises(AuthError, match="v-1's credential was revoked"):
        store.acquire("v-1", 1.0, 2.0, "l1")
    with pytest.raises(NotFound, match="'v-9' is not enrolled"):
        store.acquire("v-9", 1.0, 2.0, "l2")
    assert store.count_units("job-1", "pending") == 1  # the refusals took nothing


def test_each_transition_applies_once(store):
    """What a second coordinator (or a second sweep) would do again is refused, and says so."""
    _vehicle(store)
    _job(store, n_units=3)
    l0, l1, l2 = (store.acquire("v-1", 1.0, 2.0, f"l{i}")[0] for i in range(3))
    assert store.release(l0.lease_id, "expired", 3.0, preempted=False) is True
    assert store.release(l0.lease_id, "expired", 3.0, preempted=False) is False
    assert store.get_job("job-1").reissued_units == 1
    assert store.count_units("job-1", "pending") == 1
    lease, unit, _ = store.lease_context(l0.lease_id)
    with pytest.raises(LeaseExpired, match=f"lease {l0.lease_id} is expired"):
        store.complete(lease, unit, D2, _ledger(l0.lease_id), 4.0, accept=True)
    assert (store.get_unit(unit.unit_id).state, store.ledger_totals()) == ("pending", [])

    lease, unit, _ = store.lease_context(l1.lease_id)
    store.complete(lease, unit, D2, _ledger(l1.lease_id), 4.0, accept=True)
    lease, unit, _ = store.lease_context(l1.lease_id)  # a retry of the same result counts once
    assert store.complete(lease, unit, D2, _ledger(l1.lease_id), 5.0, accept=True).units_done == 1
    with pytest.raises(Conflict, match="is completed, not active"):
        store.complete(lease, unit, D3, _ledger(l1.lease_id), 5.0, accept=True)
    assert store.release(l1.lease_id, "expired", 6.0, preempted=False) is False
    assert store.get_unit(unit.unit_id).state == "done"
    assert store.ledger_totals()[0]["units"] == 1

    assert store.finish_job("job-1", "failed", 7.0, error="first") is True
    assert store.finish_job("job-1", "cancelled", 8.0, error="second") is False
    job = store.get_job("job-1")
    assert (job.state, job.error, job.finished_at) == ("failed", "first", 7.0)
    assert store.get_lease(l2.lease_id).state == "cancelled"


def test_progress_of_a_closed_lease_is_ignored(store):
    _vehicle(store)
    _job(store, n_units=1)
    lease = store.acquire("v-1", 1.0, 2.0, "l0")[0]
    store.release("l0", "expired", 3.0, preempted=False)
    store.acquire("v-1", 4.0, 5.0, "l1")
    store.record_progress("l0", 5, D3)  # the old holder's late report must not touch the unit's new lease
    assert store.get_unit(lease.unit_id).checkpoint_items == 0


# --- billing ------------------------------------------------------------------------------------------------------
def test_owners_attach_cars_once_and_one_owner_per_car(store):
    _vehicle(store, "v-1")
    _vehicle(store, "v-2")
    store.add_owner("alice", "ha", "0.1747", 1.0)
    store.add_owner("bob", "hb", "0.30", 2.0)
    with pytest.raises(Conflict, match="alice"):
        store.add_owner("alice", "hx", "0.1", 3.0)
    assert (store.owner_by_token_hash("ha"), store.owner_by_token_hash("nope")) == ("alice", None)
    store.attach_car("alice", "v-2")
    store.attach_car("alice", "v-1")
    store.attach_car("alice", "v-1")  # again: no change
    with pytest.raises(Conflict, match="alice"):
        store.attach_car("bob", "v-1")
    with pytest.raises(NotFound, match="v-9"):
        store.attach_car("bob", "v-9")
    with pytest.raises(NotFound, match="carol"):
        store.attach_car("carol", "v-1")
    assert store.get_owner("alice").cars == ["v-1", "v-2"] and store.get_owner("bob").cars == []
    assert store.get_owner("carol") is None
    assert store.set_owner_tariff("bob", "0.25") and not store.set_owner_tariff("carol", "0.25")
    assert [(o.name, o.tariff, o.cars) for o in store.list_owners()] == [("alice", "0.1747", ["v-1", "v-2"]),
                                                                        ("bob", "0.25", [])]


def test_price_lists_are_kept_in_order(store):
    assert store.price_lists() == []
    assert store.add_price_list("USD", "0.15", {"inference": {"per_item": "0.00001"}}, 10.0) == 1
    assert store.add_price_list("USD", "0.2", {"train": {"per_step": "0.001"}}, 20.0) == 2
    lists = store.price_lists()
    assert [(p.version, p.operator_fee, p.set_at) for p in lists] == [(1, "0.15", 10.0), (2, "0.2", 20.0)]
    assert lists[1].prices == {"train": {"per_step": "0.001"}}


def test_usage_lines_join_owner_hardware_tenant_and_hold_time(store):
    _vehicle(store, "v-1")
    _vehicle(store, "v-2")
    _job(store, n_units=3)
    store.add_owner("alice", "ha", "0.2", 0.0)
    store.attach_car("alice", "v-1")
    lease, unit = store.acquire("v-1", 100.0, 200.0, "l0")
    lease, unit, _ = store.lease_context("l0")
    entry = LedgerRecord(lease_id="l0", vehicle_id="v-1", job_id="job-1", items=10, compute_s=30.0,
                         cellular_bytes=0, wifi_bytes=5, at=160.0, workload="inference", tokens=7, plugged_in=True)
    store.complete(lease, unit, D2, entry, 160.0, accept=True)
    store.record_ledger(LedgerRecord(lease_id="t0", vehicle_id="v-2", job_id="job-1", items=0, compute_s=4.0,
                                     cellular_bytes=0, wifi_bytes=0, at=170.0, steps=3, accepted=False))
    store.record_ledger(LedgerRecord(lease_id="t1", vehicle_id="v-1", job_id="job-1", items=1, compute_s=1.0,
                                     cellular_bytes=0, wifi_bytes=0, at=300.0))
    lines = store.usage_lines(100.0, 300.0)
    assert [(ln.lease_id, ln.owner, ln.hardware, ln.tenant, ln.workload) for ln in lines] == [
        ("l0", "alice", "ai4", "acme", "inference"), ("t0", None, "ai4", "acme", "inference")]
    l0, t0 = lines
    assert (l0.held_s, l0.accelerator_s, l0.items, l0.tokens, l0.plugged_in, l0.job_name) == (
        60.0, 30.0, 10, 7, True, "job-1")
    assert (t0.held_s, t0.steps, t0.accepted, t0.plugged_in) == (0.0, 3, False, None)
    assert [ln.lease_id for ln in store.usage_lines(0.0, 1000.0, owner="alice")] == ["l0", "t1"]
    assert store.usage_lines(0.0, 1000.0, owner="bob") == []
    assert len(store.usage_lines(0.0, 1000.0, tenant="acme")) == 3
    assert store.usage_lines(0.0, 1000.0, tenant="other") == []


def test_rejected_usage_is_marked_once_on_completed_leases_only(store):
    _vehicle(store, "v-1")
    _vehicle(store, "v-2")
    _job(store, n_units=1, replicas=2)
    for vid, lid in (("v-1", "l1"), ("v-2", "l2")):
        store.acquire(vid, 1.0, 50.0, lid)
    lease, unit, _ = store.lease_context("l1")
    store.complete(lease, unit, D2, _ledger("l1"), 5.0)
    assert store.reject_usage([unit.unit_id], "no quorum") == 1
    assert store.reject_usage([unit.unit_id], "again") == 0  # the first reason stands
    other = store.lease_context("l2")[1]
    assert store.reject_usage([other.unit_id], "no quorum") == 0  # still leased: nothing was metered
    assert store.reject_usage([], "nothing") == 0
    assert [ln.rejected for ln in store.usage_lines(0.0, 10.0)] == ["no quorum"]


def test_refused_updates_are_rejected_lines_until_their_lease_is_metered(store):
    _vehicle(store, "v-1")
    _job(store, n_units=1)
    store.add_owner("alice", "ha", "0.2", 0.0)
    store.attach_car("alice", "v-1")
    store.record_refusal(RefusalRecord(lease_id="t9", vehicle_id="v-1", job_id="job-1", at=50.0, reason="stale",
                                       compute_s=12.0, steps=4, examples=64))
    store.record_refusal(RefusalRecord(lease_id="t9", vehicle_id="v-1", job_id="job-1", at=55.0, reason="shape",
                                       compute_s=13.0, steps=4, examples=64))  # the latest refusal stands
    (line,) = store.usage_lines(0.0, 100.0, owner="alice")
    assert (line.lease_id, line.rejected, line.accelerator_s, line.steps, line.examples, line.at) == (
        "t9", "training update refused: shape", 13.0, 4, 64, 55.0)
    assert store.usage_lines(0.0, 100.0, tenant="acme") == [line] and store.usage_lines(60.0, 100.0) == []
    store.record_ledger(LedgerRecord(lease_id="t9", vehicle_id="v-1", job_id="job-1", items=0, compute_s=20.0,
                                     cellular_bytes=0, wifi_bytes=0, at=70.0, steps=4, workload="train"))
    assert [(ln.lease_id, ln.rejected, ln.at) for ln in store.usage_lines(0.0, 100.0)] == [("t9", None, 70.0)]


def test_reputation_counters_change_by_verdict(store):
    from fleetgrid.coordinator.reputation import Reputation, Verdict

    _vehicle(store, "v-1")
    _vehicle(store, "v-2")
    assert store.get_reputation("v-1") == Reputation("v-1")  # never checked: all zero
    store.record_verdicts([("v-1", Verdict.AGREED)] * 5 + [("v-2", Verdict.AGREED)], 10.0)
    store.record_verdicts([("v-1", Verdict.IMPLAUSIBLE)], 11.0)
    assert store.get_reputation("v-1") == Reputation("v-1", agreed=5, streak=2, implausible=1, updated_at=11.0)
    store.record_verdicts([("v-1", Verdict.FAULT)], 12.0)
    rep = store.get_reputation("v-1")
    assert (rep.agreed, rep.streak, rep.faults) == (5, 0, 1)
    assert rep == Reputation("v-1", 5, 2, 0, 1, 11.0).after(Verdict.FAULT, 12.0)  # the store applies the same rule
    assert [r.vehicle_id for r in store.list_reputations()] == ["v-1", "v-2"]
    store.record_verdicts([], 13.0)  # nothing to do


def test_a_suspended_vehicle_keeps_its_first_reason_and_is_refused_leases(store):
    _vehicle(store, "v-1")
    _job(store, n_units=2)
    assert store.suspend_vehicle("v-1", "caught", "reputation")
    assert not store.suspend_vehicle("v-1", "again", "operator")  # suspended already: the first reason stands
    with pytest.raises(NotFound):
        store.suspend_vehicle("v-nobody", "caught", "reputation")
    vehicle = store.get_vehicle("v-1")
    assert vehicle.suspended and vehicle.suspended_reason == "caught"
    assert [(a.actor, a.action, a.target) for a in store.audit_log()][:1] == [("reputation", "vehicle.suspend", "v-1")]
    with pytest.raises(Forbidden, match="suspended"):
        store.acquire("v-1", 1.0, 50.0, "l1")


def test_a_reopened_unit_is_withdrawn_and_computed_again(store):
    _vehicle(store, "v-1")
    _vehicle(store, "v-2")
    _job(store, n_units=2)
    store.start_job("job-1")
    for vid, lid in (("v-1", "l1"), ("v-2", "l2")):
        store.acquire(vid, 1.0, 50.0, lid)
    for lid, digest in (("l1", D2), ("l2", D3)):
        lease, unit, _ = store.lease_context(lid)
        store.complete(lease, unit, digest, _ledger(lid, lease.vehicle_id), 5.0, accept=True)
    assert store.get_job("job-1").units_done == 2
    mine = store.unverified_results("v-1", ["inference"])
    assert [(u.idx, u.result_digest) for u in mine] == [(0, D2)]
    assert store.unverified_results("v-1", ["train"]) == []
    again = UnitRecord(unit_id="job-1:0:1", job_id="job-1", idx=0, replica=1, start_item=0, end_item=10,
                       input_digest=D1, input_format="npy", replicas=2, payload={"withdrawn": "job-1:0:0"})
    assert store.reopen_unit("job-1", 0, again)
    assert not store.reopen_unit("job-1", 0, again)  # withdrawn already: nothing changes
    assert store.get_job("job-1").units_done == 1
    assert store.accepted_results("job-1") == [(1, D3)]
    assert store.unverified_results("v-1", ["inference"]) == []
    assert store.acquire("v-1", 6.0, 50.0, "l3") is None  # v-1 computed unit 0: the copy is for another car
    lease, unit = store.acquire("v-2", 6.0, 50.0, "l4")
    assert unit.unit_id == "job-1:0:1" and unit.payload == {"withdrawn": "job-1:0:0"}
    # A unit with two done results is confirmed: not the car's unverified work any more.
    store.complete(lease, unit, D2, _ledger("l4", "v-2"), 7.0, accept=True)
    assert store.unverified_results("v-1", ["inference"]) == []
    store.finish_job("job-1", "done", 8.0)
    assert not store.reopen_unit("job-1", 1, again)  # a finished job's results stay as they are


def test_urgent_units_are_leased_before_every_other(store):
    _vehicle(store, "v-1")
    _job(store, n_units=3)
    urgent = [UnitRecord(unit_id=f"job-1:{i}:1", job_id="job-1", idx=i, replica=1, start_item=10 * i,
                         end_item=10 * i + 10, input_digest=D1, input_format="npy", replicas=2) for i in (2, 1)]
    store.add_urgent_units(urgent[:1])
    store.add_urgent_units(urgent[1:])
    taken = [store.acquire("v-1", 1.0, 50.0, f"l{i}")[1].unit_id for i in range(3)]
    # The latest urgent unit first, then the one before, then the queue in its order. (Replicas of one unit go to
    # different cars only when a car computed one already: this car took none of units 1 and 2 yet.)
    assert taken == ["job-1:1:1", "job-1:2:1", "job-1:0:0"]


def test_car_state_samples_are_kept_in_order_replaced_and_pruned(store):
    store.record_car_states(100.0, {"eligible": 2, "driving": 1}, keep_since=0.0)
    store.record_car_states(400.0, {"eligible": 1, "working": 2}, keep_since=0.0)
    store.record_car_states(400.0, {"eligible": 3}, keep_since=0.0)  # the same sample again: replaced
    assert store.car_state_history(0.0) == [(100.0, {"driving": 1, "eligible": 2}), (400.0, {"eligible": 3})]
    assert store.car_state_history(101.0) == [(400.0, {"eligible": 3})]
    store.record_car_states(700.0, {"offline": 4}, keep_since=300.0)  # retention: older samples are dropped
    assert store.car_state_history(0.0) == [(400.0, {"eligible": 3}), (700.0, {"offline": 4})]


def test_an_owners_policy_reaches_their_cars_only(store):
    for vid in ("v-a", "v-b", "v-none"):
        _vehicle(store, vid)
    store.add_owner("alice", "ha", "0.20", 0.0)
    store.add_owner("bob", "hb", "0.20", 0.0)
    store.attach_car("alice", "v-a")
    store.attach_car("bob", "v-b")
    assert store.owner_policy("alice") is None and store.vehicle_policy("v-a") is None
    policy = {"opt_in": True, "min_soc": 0.3, "allowed_hours": [22, 7]}
    assert store.set_owner_policy("alice", policy)
    assert store.owner_policy("alice") == policy == store.vehicle_policy("v-a")
    assert store.vehicle_policy("v-b") is None and store.vehicle_policy("v-none") is None
    assert not store.set_owner_policy("carol", policy)
    assert store.vehicle_policy("v-missing") is None
