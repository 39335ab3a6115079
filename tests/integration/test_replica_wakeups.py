"""Two coordinator replicas on one real PostgreSQL: a car long-polling replica B is woken by work made through
replica A (a job submitted there, a unit handed back there), also after B's listening connection was dropped.

The replicas' own re-check is far beyond the car's wait (60 s, the most a car may ask for): without a wake-up from
A, the car would look again only at the end of its wait. The test gives the wake-up 40 s, far more than it takes and
less than that. The car is known to wait before the work is made: B's fleet overview counts the cars that looked,
found nothing and sleep.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text

from fleetgrid.client import FleetgridClient
from fleetgrid.coordinator.store.sql import engine_url
from fleetgrid.localfleet import CoordinatorProcess
from harness import ENROLL, OPERATOR, TENANT

from .conftest import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(480)]

PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}
WAIT_S = 60.0
"""The car's long-poll: the longest the protocol allows (the replicas' re-check and limit are 600 s)."""
WOKEN_WITHIN_S = 40.0
"""A wake-up takes milliseconds; the car's own last look, at the end of its wait, would find the work without one."""
LISTENERS = ("SELECT pid FROM pg_stat_activity WHERE application_name = 'fleetgrid-listener' "
             "AND datname = current_database() AND query LIKE 'LISTEN%'")


class Car:
    """A car speaking the raw vehicle API, long-polling in a thread of its own."""

    def __init__(self, enroll_at: str, name: str) -> None:
        self.http = httpx.Client(timeout=WAIT_S + 60)
        r = self.http.post(f"{enroll_at}/v1/vehicles/enroll",
                           json={"enrollment_token": ENROLL, "name": name, "hardware": "ai4"})
        r.raise_for_status()
        self.auth = {"authorization": f"Bearer {r.json()['credential']}"}
        self._thread = ThreadPoolExecutor(max_workers=1)

    def long_poll(self, url: str) -> Future[httpx.Response]:
        return self._thread.submit(self.http.post, f"{url}/v1/leases", json={"state": PARKED, "wait_s": WAIT_S},
                                   headers=self.auth)

    def hand_back(self, url: str, lease_id: str) -> None:
        r = self.http.post(f"{url}/v1/leases/{lease_id}/fail", json={"reason": "driver left", "handback": True},
                           headers=self.auth)
        assert r.status_code == 200, r.text

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
        self.http.close()


def _granted(poll: Future[httpx.Response]) -> dict:
    try:
        answer = poll.result(timeout=WOKEN_WITHIN_S)
    except TimeoutError:
        raise AssertionError(f"the waiting car was not woken within {WOKEN_WITHIN_S} s") from None
    assert answer.status_code == 200, answer.text
    return answer.json()


def _submit(replica: CoordinatorProcess, seed: int) -> str:
    x = np.random.default_rng(seed).normal(size=(10, 40)).astype(np.float32)
    with FleetgridClient(replica.url, TENANT) as tenant:
        return tenant.submit("mnist1d-cnn", x, unit_items=10, batch_size=10).job_id  # one unit


def _sleeping_at(replica: CoordinatorProcess, cars: int) -> None:
    with FleetgridClient(replica.url, OPERATOR) as operator:
        wait_for(lambda: operator.fleet().long_polling == cars, 120, f"{cars} car(s) to wait at {replica.url}",
                 poll_s=0.2)


def test_work_made_through_one_replica_wakes_a_car_waiting_at_another(tmp_path, postgres_url):
    args = ["--enroll-token", ENROLL, "--operator-token", OPERATOR, "--tenant", f"default={TENANT}",
            "--long-poll-recheck", "600", "--max-long-poll", "600"]
    a, b = (CoordinatorProcess(tmp_path / "shared", db=postgres_url, extra_args=args, log_file=tmp_path / f"{n}.log")
            for n in "ab")
    engine = create_engine(engine_url(postgres_url))
    cars: list[Car] = []
    try:
        a.start()
        b.start()
        first, second = Car(a.url, "first"), Car(a.url, "second")
        cars += [first, second]

        # A job submitted through A wakes the car waiting at B.
        poll = first.long_poll(b.url)
        _sleeping_at(b, 1)
        job = _submit(a, seed=1)
        grant = _granted(poll)
        assert grant["job_id"] == job

        # Its unit, handed back through A, wakes a second car waiting at B.
        poll = second.long_poll(b.url)
        _sleeping_at(b, 1)
        first.hand_back(a.url, grant["lease_id"])
        again = _granted(poll)
        assert (again["job_id"], again["unit_index"]) == (job, grant["unit_index"])

        # B's listening connection dropped (A's too): B listens again and is woken as before.
        with engine.connect() as c:
            dropped = list(c.execute(text(LISTENERS)).scalars())
            assert len(dropped) == 2  # one per replica
            for pid in dropped:
                assert c.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()

        def listening_again() -> bool:
            with engine.connect() as c:
                return len(set(c.execute(text(LISTENERS)).scalars()) - set(dropped)) == 2

        wait_for(listening_again, 120, "both replicas to listen again")
        poll = first.long_poll(b.url)
        _sleeping_at(b, 1)
        later = _submit(a, seed=2)
        assert _granted(poll)["job_id"] == later

        assert "Traceback" not in a.log() + b.log()
        assert "lost their database connection" in b.log()
    finally:
        for car in cars:
            car.close()
        engine.dispose()
        a.stop()
        b.stop()
