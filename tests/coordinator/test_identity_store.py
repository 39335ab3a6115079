"""The store's identity contract on SQLite and a real PostgreSQL server: enrollment tokens spent atomically (two
racing enrollments for a single use: exactly one car), suspensions that stop leasing at once, the audit log."""

from __future__ import annotations

import threading

import pytest

from fleetgrid.coordinator.store import JobRecord, UnitRecord, VehicleRecord, open_store
from fleetgrid.coordinator.store.identity_base import EnrollmentTokenRecord
from fleetgrid.errors import AuthError, Forbidden, NotFound


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()


def car(vid: str, key: str | None = None) -> VehicleRecord:
    return VehicleRecord(vehicle_id=vid, name=vid, hardware="ai4", credential_hash="h" + vid, enrolled_at=1.0,
                         public_key=key)


def token(token_id: str, uses: int | None = 1, expires_at: float | None = None) -> EnrollmentTokenRecord:
    return EnrollmentTokenRecord(token_id=token_id, label="test", created_at=10.0, created_by="operator", uses=uses,
                                 expires_at=expires_at)


def test_a_token_allows_its_uses_until_it_expires_or_is_revoked(store):
    store.add_enrollment_token(token("et-a", uses=2, expires_at=100.0), "hash-a")
    assert store.enroll_with_token("hash-a", car("v-1", key="k" * 43), 20.0) == "et-a"
    assert store.get_vehicle("v-1").public_key == "k" * 43
    with pytest.raises(AuthError, match="expired"):
        store.enroll_with_token("hash-a", car("v-2"), 100.0)
    assert store.enroll_with_token("hash-a", car("v-2"), 99.0) == "et-a"
    with pytest.raises(AuthError, match=r"used up \(2 of 2"):
        store.enroll_with_token("hash-a", car("v-3"), 30.0)
    assert store.get_vehicle("v-3") is None  # a refused enrollment adds no car
    store.add_enrollment_token(token("et-b", uses=None), "hash-b")
    revoked = store.revoke_enrollment_token("et-b", "operator", 40.0)
    assert revoked is not None and revoked.revoked_at == 40.0
    assert store.revoke_enrollment_token("et-b", "operator", 41.0).revoked_at == 40.0  # twice: no change
    assert store.revoke_enrollment_token("et-nope", "operator", 41.0) is None
    with pytest.raises(AuthError, match="revoked"):
        store.enroll_with_token("hash-b", car("v-4"), 50.0)
    with pytest.raises(AuthError, match="wrong fleet enrollment token"):
        store.enroll_with_token("hash-nope", car("v-5"), 50.0)
    listed = {t.token_id: (t.used, t.uses_left) for t in store.list_enrollment_tokens()}
    assert listed == {"et-a": (2, 0), "et-b": (0, None)}
    actions = [(e.action, e.target) for e in store.audit_log()]
    assert actions == [("enrollment_token.revoke", "et-b"), ("enrollment_token.issue", "et-b"),
                       ("enrollment_token.issue", "et-a")]


def test_two_racing_enrollments_spend_a_single_use_token_once(store, store_url):
    """Two stores on one database on PostgreSQL (two coordinators); on SQLite one store (one process holds the
    file), called from two threads. Many rounds, so an interleaving that lets both through would show."""
    other = open_store(store_url) if store_url.startswith("postgresql") else store
    try:
        for round_ in range(20):
            store.add_enrollment_token(token(f"et-{round_}"), f"hash-{round_}")
            barrier = threading.Barrier(2)
            outcomes: list[str] = []

            def enroll(s, vid: str, hashed: str = f"hash-{round_}", barrier: threading.Barrier = barrier,
                       outcomes: list[str] = outcomes) -> None:
                barrier.wait()
                try:
                    s.enroll_with_token(hashed, car(vid), 20.0)
                    outcomes.append("enrolled")
                except AuthError:
                    outcomes.append("refused")

            threads = [threading.Thread(target=enroll, args=(s, f"v-{round_}-{i}"))
                       for i, s in enumerate((store, other))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(outcomes) == ["enrolled", "refused"], round_
        assert len(store.list_vehicles()) == 20
    finally:
        if other is not store:
            other.close()


def test_a_suspended_car_is_refused_leases_and_suspending_is_audited(store):
    store.add_vehicle(car("v-1"))
    store.add_tenant("acme", "hash-acme", 0.0)
    job = JobRecord(job_id="job-1", tenant="acme", name="j", kind="inference", model="mnist1d-cnn", spec={},
                    items=10, units_total=1, created_at=1.0)
    store.create_job(job, [UnitRecord(unit_id="job-1:0:0", job_id="job-1", idx=0, replica=0, start_item=0,
                                      end_item=10, input_digest="a" * 64, input_format="npy")])
    told: list[str] = []
    store.watch_vehicles(told.append)
    assert store.suspend_vehicle("v-1", "bad results", "reputation") is True
    assert store.suspend_vehicle("v-1", "again", "reputation") is False
    assert told == ["v-1"]
    suspended = store.get_vehicle("v-1")
    assert suspended.suspended_reason == "bad results" and suspended.suspended_at is not None
    with pytest.raises(Forbidden, match="suspended"):
        store.acquire("v-1", 2.0, 60.0, "l-1")
    assert store.unsuspend_vehicle("v-1", "operator", now=3.0) is True
    assert store.unsuspend_vehicle("v-1", "operator", now=3.0) is False
    assert store.acquire("v-1", 4.0, 60.0, "l-1") is not None
    with pytest.raises(NotFound):
        store.suspend_vehicle("v-nope", "x", "operator")
    store.append_audit("operator", "prices.set", "price list 1", {"currency": "USD"}, 5.0)
    log = store.audit_log()
    assert [(e.actor, e.action) for e in log] == [("operator", "prices.set"), ("operator", "vehicle.unsuspend"),
                                                  ("reputation", "vehicle.suspend")]
    assert log[0].details == {"currency": "USD"} and log[1].at == 3.0
    assert [e.seq for e in store.audit_log(limit=1, before=log[0].seq)] == [log[1].seq]
