"""GANG placement through the real app: k units leased to k different cars all at once or not at all, restarted
together when one car leaves, each close metered once; atomic across two replicas on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from sqlalchemy import func, select

from fleetgrid.clock import ManualClock
from fleetgrid.coordinator.drivers import form_gangs
from fleetgrid.coordinator.store.schema import leases, units
from fleetgrid.errors import InvalidInput
from harness import TENANT

from .placement_kit import (
    DRIVING,
    SplitDriver,
    auth,
    complete,
    coordinator,
    enroll,
    job_status,
    lease,
    serve,
    submit,
    usage_rows,
    workloads,  # noqa: F401 - the fixture
)

pytestmark = pytest.mark.usefixtures("workloads")


def _active_per_gang(coord) -> dict[str, int]:
    query = (select(units.c.gang, func.count()).select_from(leases.join(units, units.c.unit_id == leases.c.unit_id))
             .where(leases.c.state == "active").group_by(units.c.gang))
    with coord.store.engine.connect() as c:
        return {gang: n for gang, n in c.execute(query)}


def test_a_gang_starts_only_when_all_its_cars_are_there_and_restarts_together(tmp_path, store_url):
    clock = ManualClock(1_000.0)
    coord = coordinator(tmp_path, store_url, clock)

    async def scenario(client) -> None:
        a, b, c = [await enroll(client, name) for name in "abc"]
        job = await submit(client, {"kind": "test-split", "cars": 3})

        # Two cars for a gang of three: each is held a seat, and nobody starts.
        assert (await lease(client, a)).status_code == 204
        assert (await lease(client, b)).status_code == 204
        status = await job_status(client, job["job_id"])
        assert (status["state"], status["units_in_flight"]) == ("queued", 0)
        assert coord.store.counts()["leases_in_flight"] == 0

        # a and b wait in long-polls; the third car fills the gang and all three are granted together.
        waiting = [asyncio.create_task(lease(client, car, wait_s=30.0)) for car in (a, b)]
        third = await lease(client, c)
        assert third.status_code == 200, third.text
        answers = await asyncio.gather(*waiting)
        assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
        grants = dict(zip((a, b, c), [r.json() for r in answers] + [third.json()], strict=True))
        assert sorted(g["unit_index"] for g in grants.values()) == [0, 1, 2]
        assert len({g["lease_id"] for g in grants.values()}) == 3
        status = await job_status(client, job["job_id"])
        assert (status["state"], status["units_in_flight"]) == ("running", 3)
        assert (await lease(client, a)).status_code == 204  # its lease was handed over once, not twice

        # b leaves: a's and c's leases are cancelled and all three units wait for cars again, together.
        clock.advance(20.0)
        back = await client.post(f"/leases/{grants[b]['lease_id']}/fail", headers=auth(b),
                                 json={"reason": "driver is back", "handback": True, "compute_s": 15.0})
        assert back.status_code == 200 and back.json()["state"] == "handed_back"
        for car in (a, c):
            r = await client.post(f"/leases/{grants[car]['lease_id']}/renew", headers=auth(car))
            assert r.status_code == 409 and "cancelled" in r.json()["message"], r.text
        assert {u.state for u in coord.store.units_of(job["job_id"])} == {"pending"}
        status = await job_status(client, job["job_id"])
        assert (status["units_in_flight"], status["preemptions"], status["reissued_units"]) == (0, 1, 3)

        # Each close metered once: the car that left by what it reported, the two cut short by their time held.
        rows = usage_rows(coord)
        assert sorted(rows) == sorted(g["lease_id"] for g in grants.values())
        assert {car: (rows[g["lease_id"]].compute_s, rows[g["lease_id"]].accepted) for car, g in grants.items()} \
            == {a: (20.0, False), b: (15.0, False), c: (20.0, False)}

        # The gang forms again; the job is done when every unit is.
        assert (await lease(client, c)).status_code == 204
        assert (await lease(client, a)).status_code == 204
        again = {b: (await lease(client, b)).json()}
        again |= {car: (await lease(client, car)).json() for car in (a, c)}
        assert sorted(g["unit_index"] for g in again.values()) == [0, 1, 2]
        for car, grant in again.items():
            r = await complete(client, car, grant)
            assert r.status_code == 200, r.text
        status = await job_status(client, job["job_id"])
        assert (status["state"], status["units_done"]) == ("done", 3)
        assert len(usage_rows(coord)) == 6

    serve([coord], scenario)


def _held(coord) -> set[str]:
    """Names of the cars holding a seat in a forming gang."""
    names = {v.vehicle_id: v.name for v in coord.store.list_vehicles()}
    query = select(units.c.vehicle_id).where(units.c.state == "pending", units.c.held_until >= coord.clock.now())
    with coord.store.engine.connect() as c:
        return {names[v] for v in c.execute(query).scalars()}


def test_a_seat_goes_to_another_car_when_its_car_stops_asking_takes_other_work_or_drives_off(tmp_path):
    clock = ManualClock(1_000.0)
    coord = coordinator(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", clock, gang_hold_s=30.0)

    async def scenario(client) -> None:
        a, b, c, d = [await enroll(client, name) for name in "abcd"]
        job = await submit(client, {"kind": "test-split", "cars": 2})
        assert (await lease(client, a)).status_code == 204  # a is held a seat, then goes quiet
        assert _held(coord) == {"a"}
        clock.advance(31.0)
        assert _held(coord) == set()
        assert (await lease(client, b)).status_code == 204  # a's lapsed seat is free again: b takes one
        other = await submit(client, {"kind": "test-serve"})
        served = (await lease(client, b)).json()  # work of its own: b gives its seat up
        assert served["job_id"] == other["job_id"] and _held(coord) == set()
        assert (await lease(client, c)).status_code == 204
        await client.post("/vehicles/heartbeat", json=DRIVING, headers=auth(c))  # c drives off: seat given up
        assert _held(coord) == set()
        assert (await lease(client, c)).status_code == 204  # parked again
        assert _held(coord) == {"c"}
        filled = await lease(client, d)
        assert filled.status_code == 200, filled.text
        assert (await lease(client, c)).status_code == 200
        assert (await lease(client, a)).status_code == 204  # its seat went to another car
        held = {u.vehicle_id for u in coord.store.units_of(job["job_id"])}
        vehicle = {v.name: v.vehicle_id for v in coord.store.list_vehicles()}
        assert held == {vehicle["c"], vehicle["d"]}
        await client.post(f"/jobs/{other['job_id']}/cancel", headers=auth(TENANT))

    serve([coord], scenario)


@pytest.mark.postgres
def test_two_replicas_never_lease_a_gang_member_twice_nor_half_a_gang(tmp_path, postgres_url):
    """Twelve cars, spread over two coordinators on one PostgreSQL, all asking at once for four gangs of three."""
    clock = ManualClock(1_000.0)
    first, second = coordinator(tmp_path, postgres_url, clock), coordinator(tmp_path, postgres_url, clock)

    async def scenario(one, two) -> None:
        cars = [await enroll(one, f"car{i}") for i in range(12)]
        job = await submit(one, {"kind": "test-split", "cars": 3, "copies": 4})
        via = {car: (one, two)[i % 2] for i, car in enumerate(cars)}
        grants: dict[str, dict] = {}
        for _ in range(30):
            asking = [car for car in cars if car not in grants]
            if not asking:
                break
            answers = await asyncio.gather(*(lease(via[car], car) for car in asking))
            for car, r in zip(asking, answers, strict=True):
                assert r.status_code in (200, 204), r.text
                if r.status_code == 200:
                    grants[car] = r.json()
            assert set(_active_per_gang(first).values()) <= {3}  # a gang is all leased, or not at all
        assert len(grants) == 12
        with first.store.engine.connect() as c:
            issued = c.execute(select(leases.c.unit_id, leases.c.vehicle_id, leases.c.state)).all()
        assert len(issued) == 12 and {state for _, _, state in issued} == {"active"}
        assert Counter(unit for unit, _, _ in issued) == Counter(u.unit_id for u in first.store.units_of(job["job_id"]))
        assert len({vehicle for _, vehicle, _ in issued}) == 12
        assert sorted((g["job_id"], g["unit_index"]) for g in grants.values()) == [(job["job_id"], i)
                                                                                   for i in range(12)]

    serve([first, second], scenario)


def test_a_gang_plan_that_leaves_a_unit_out_of_its_gang_is_refused_and_stores_nothing(tmp_path, monkeypatch):
    clock = ManualClock(1_000.0)
    coord = coordinator(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", clock)
    plan = SplitDriver.plan

    def loose(self, tenant, request, job_id):
        planned = plan(self, tenant, request, job_id)
        planned.units[-1].gang = None
        return planned

    monkeypatch.setattr(SplitDriver, "plan", loose)

    async def scenario(client) -> None:
        r = await client.post("/jobs", json={"kind": "test-split", "cars": 2}, headers=auth(TENANT))
        assert r.status_code == 400 and "in none" in r.json()["message"], r.text
        assert coord.store.list_jobs() == []

    serve([coord], scenario)
    with pytest.raises(InvalidInput, match="gangs of 3"):
        form_gangs(SplitDriver._units("job-x", 4), 3)
