"""RESIDENT placement through the real app: a lease with no natural end, renewed by its car's heartbeats while the
car is eligible, failing over to another car when it ends early, ended by its job, metered for the time held."""

from __future__ import annotations

import asyncio

import pytest

from fleetgrid.clock import ManualClock
from fleetgrid.coordinator.drivers import UnitDriver
from fleetgrid.core import Placement
from harness import OPERATOR, TENANT

from .placement_kit import (
    DRIVING,
    PARKED,
    ServeDriver,
    auth,
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


def test_a_resident_lease_is_renewed_while_eligible_fails_over_and_ends_with_its_job(tmp_path, store_url):
    clock = ManualClock(1_000.0)
    coord = coordinator(tmp_path, store_url, clock)

    async def scenario(client) -> None:
        a, b = await enroll(client, "a"), await enroll(client, "b")
        job = await submit(client, {"kind": "test-serve"})
        first = (await lease(client, a)).json()
        assert first["kind"] == "test-serve" and first["deadline"] == 1_060.0
        assert (await lease(client, b)).status_code == 204  # the one unit is taken

        # Heartbeats alone keep it for five lease times, well past the deadline it was granted with.
        for _ in range(5):
            clock.advance(50.0)
            beat = await client.post("/vehicles/heartbeat", json=PARKED, headers=auth(a))
            assert beat.json()["active_leases"] == [first["lease_id"]]
            await asyncio.to_thread(coord.sweep)
        assert coord.store.get_lease(first["lease_id"]).deadline == clock.now() + 60.0
        renewed = await client.post(f"/leases/{first['lease_id']}/renew", headers=auth(a))
        assert renewed.status_code == 200 and renewed.json()["deadline"] == clock.now() + 60.0

        done = await client.post(f"/leases/{first['lease_id']}/complete", headers=auth(a),
                                 json={"result": "0" * 64})
        assert done.status_code == 409, done.text
        assert "resident" in done.json()["message"] and "hands it back" in done.json()["message"]
        assert coord.store.get_lease(first["lease_id"]).state == "active"

        # Car a drives off: its heartbeat hands the lease back, and b takes the unit over at once.
        clock.advance(10.0)
        beat = await client.post("/vehicles/heartbeat", json=DRIVING, headers=auth(a))
        assert beat.json()["active_leases"] == []
        second = (await lease(client, b)).json()
        assert second["unit_index"] == first["unit_index"] and second["lease_id"] != first["lease_id"]

        # Car b says it is no longer eligible, then tries to renew: refused, and the lease goes back to a.
        clock.advance(30.0)
        assert (await client.post("/leases", json={"state": DRIVING}, headers=auth(b))).status_code == 409
        refused = await client.post(f"/leases/{second['lease_id']}/renew", headers=auth(b))
        assert refused.status_code == 409 and "ineligible" in refused.json()["message"], refused.text
        third = (await lease(client, a)).json()
        assert third["unit_index"] == first["unit_index"]

        # Car a hands it back itself (the agent's preemption); b, eligible again, takes it.
        clock.advance(20.0)
        back = await client.post(f"/leases/{third['lease_id']}/fail", headers=auth(a),
                                 json={"reason": "driver is back", "handback": True, "wifi_bytes": 500})
        assert back.status_code == 200 and back.json()["state"] == "handed_back"
        fourth = (await lease(client, b)).json()

        status = await job_status(client, job["job_id"])
        assert (status["state"], status["preemptions"], status["units_in_flight"]) == ("running", 3, 1)

        # The job ends it.
        clock.advance(40.0)
        cancelled = await client.post(f"/jobs/{job['job_id']}/cancel", headers=auth(TENANT))
        assert cancelled.json()["state"] == "cancelled"
        after = await client.post(f"/leases/{fourth['lease_id']}/renew", headers=auth(b))
        assert after.status_code == 409 and "cancelled" in after.json()["message"]
        beat = await client.post("/vehicles/heartbeat", json=PARKED, headers=auth(b))
        assert beat.json()["active_leases"] == []

        # One usage row per lease, each the seconds it was held, whoever ended it.
        rows = usage_rows(coord)
        held = {lease_id: rows[lease_id].compute_s for lease_id in rows}
        assert held == {first["lease_id"]: 260.0, second["lease_id"]: 30.0, third["lease_id"]: 20.0,
                        fourth["lease_id"]: 40.0}
        assert rows[third["lease_id"]].wifi_bytes == 500
        assert all(r.accepted and r.workload == "test-serve" for r in rows.values())
        totals = (await client.get("/ledger", headers=auth(OPERATOR))).json()
        assert sorted((row["units"], row["compute_s"]) for row in totals) == [(2, 70.0), (2, 280.0)]

    serve([coord], scenario)


def test_a_resident_lease_its_car_stops_renewing_fails_over_metered_to_its_last_renewal(tmp_path):
    clock = ManualClock(1_000.0)
    coord = coordinator(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", clock)

    async def scenario(client) -> None:
        a, b = await enroll(client, "a"), await enroll(client, "b")
        job = await submit(client, {"kind": "test-serve"})
        first = (await lease(client, a)).json()
        clock.advance(45.0)
        await client.post("/vehicles/heartbeat", json=PARKED, headers=auth(a))  # its last sign of life
        clock.advance(200.0)  # far past its deadline, whatever grace the sweeper gives for its own delay
        await asyncio.to_thread(coord.sweep)
        assert coord.store.get_lease(first["lease_id"]).state == "expired"
        second = (await lease(client, b)).json()
        assert second["unit_index"] == first["unit_index"]
        status = await job_status(client, job["job_id"])
        assert (status["preemptions"], status["reissued_units"]) == (1, 1)
        assert usage_rows(coord)[first["lease_id"]].compute_s == 45.0

    serve([coord], scenario)


def test_a_placed_workload_must_put_early_ended_units_back_in_the_queue():
    with pytest.raises(TypeError, match="requeue"):
        type("Broken", (ServeDriver,), {"requeue": False})
    assert UnitDriver.placement is Placement.SINGLE
