"""The serving routes through the real app, with cars that speak the exchange protocol themselves: some of them
hostile. Every car's report is checked before it touches a request, and never lands on a lease not its own."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest

from fleetgrid.clock import ManualClock
from fleetgrid.workloads.serving.autoscale import desired_replicas
from harness import TENANT

from .placement_kit import auth, coordinator, enroll, lease, serve, submit, usage_rows

DIM = 384


def sqlite(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


def vectors(rows: int, value: float = 0.5) -> str:
    return base64.b64encode(np.full((rows, DIM), value, dtype="<f4").tobytes()).decode()


async def poll(client, car: str, lease_id: str, answers=(), wait_s: float = 0.0, **extra):
    return await client.post(f"/serve/leases/{lease_id}/exchange", headers=auth(car),
                             json={"answers": list(answers), "wait_s": wait_s, **extra})


def test_a_garbage_answer_is_refused_and_the_request_answered_by_another_car(tmp_path, store_url):
    coord = coordinator(tmp_path, store_url, ManualClock(1_000.0))

    async def scenario(client) -> None:
        a, b, c = await enroll(client, "a"), await enroll(client, "b"), await enroll(client, "c")
        await submit(client, {"kind": "serve", "model": "minilm-l6-v2", "replicas": 2, "name": "emb"})
        ga, gb = (await lease(client, a)).json(), (await lease(client, b)).json()
        assert ga["kind"] == gb["kind"] == "serve" and ga["spec"]["deployment"] == "emb"

        # Not its lease, or no lease at all: the same 404, and nothing attached.
        assert (await poll(client, b, ga["lease_id"])).status_code == 404
        assert (await poll(client, c, ga["lease_id"])).status_code == 404
        assert (await poll(client, a, "l-nope")).status_code == 404
        assert (await client.get("/deployments", headers=auth(TENANT))).json()[0]["connected"] == 0

        assert (await poll(client, a, ga["lease_id"])).json() == {"requests": [], "cancelled": [], "closed": False}
        call = asyncio.create_task(client.post("/embeddings", headers=auth(TENANT),
                                               json={"model": "emb", "input": ["one", "two"]}))
        work = (await poll(client, a, ga["lease_id"], wait_s=10)).json()
        [request] = work["requests"]
        assert request["texts"] == ["one", "two"]
        rid = request["request_id"]

        # Car b answers a request it was never sent: ignored. Car a answers garbage of every kind, one at a time
        # with the real answer withheld; only the first counts (the request then went elsewhere).
        assert (await poll(client, b, gb["lease_id"], [{"request_id": rid, "vectors": vectors(2), "rows": 2,
                                                        "dim": DIM}])).status_code == 200
        assert not call.done()
        nan = base64.b64encode(np.full((2, DIM), np.nan, dtype="<f4").tobytes()).decode()
        await poll(client, a, ga["lease_id"], [{"request_id": rid, "vectors": nan, "rows": 2, "dim": DIM}])
        # The request went to car b, which answers it properly.
        work_b = (await poll(client, b, gb["lease_id"], wait_s=10)).json()
        assert [r["request_id"] for r in work_b["requests"]] == [rid]
        await poll(client, b, gb["lease_id"], [{"request_id": rid, "vectors": vectors(2), "rows": 2, "dim": DIM}])
        answer = await call
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert len(body["data"]) == 2 and body["data"][0]["embedding"] == [0.5] * DIM
        status = (await client.get("/deployments", headers=auth(TENANT))).json()[0]
        assert (status["connected"], status["served"]) == (2, 1)

    serve([coord], scenario)


@pytest.mark.parametrize("garbage", [
    {"vectors": "not base64!!", "rows": 2, "dim": DIM},
    {"vectors": vectors(3), "rows": 3, "dim": DIM},
    {"vectors": vectors(2)[:-8], "rows": 2, "dim": DIM},
    {"rows": 2, "dim": DIM},
    {"vectors": vectors(2), "rows": 2, "dim": 12},
    {"error": "the model crashed"},
])
def test_every_kind_of_bad_answer_sends_the_request_elsewhere(tmp_path, garbage):
    coord = coordinator(tmp_path, sqlite(tmp_path), ManualClock(1_000.0))  # the checks do not touch the store

    async def scenario(client) -> None:
        a, b = await enroll(client, "a"), await enroll(client, "b")
        await submit(client, {"kind": "serve", "model": "minilm-l6-v2", "replicas": 2, "name": "emb"})
        ga, gb = (await lease(client, a)).json(), (await lease(client, b)).json()
        await poll(client, a, ga["lease_id"])
        call = asyncio.create_task(client.post("/embeddings", headers=auth(TENANT),
                                               json={"model": "emb", "input": ["one", "two"]}))
        [request] = (await poll(client, a, ga["lease_id"], wait_s=10)).json()["requests"]
        bad = await poll(client, a, ga["lease_id"], [{"request_id": request["request_id"], **garbage}])
        assert bad.status_code in (200, 422), bad.text  # a malformed report is refused whole, a wrong one ignored
        if bad.status_code == 422:
            assert not call.done()
            await poll(client, a, ga["lease_id"], [{"request_id": request["request_id"], "error": "gave up"}])
        [again] = (await poll(client, b, gb["lease_id"], wait_s=10)).json()["requests"]
        await poll(client, b, gb["lease_id"], [{"request_id": again["request_id"], "vectors": vectors(2),
                                                "rows": 2, "dim": DIM}])
        assert (await call).status_code == 200

    serve([coord], scenario)


def test_a_replica_handed_back_is_closed_and_a_leaving_car_hands_its_requests_on(tmp_path, store_url):
    coord = coordinator(tmp_path, store_url, ManualClock(1_000.0))

    async def scenario(client) -> None:
        a, b = await enroll(client, "a"), await enroll(client, "b")
        await submit(client, {"kind": "serve", "model": "minilm-l6-v2", "replicas": 1, "name": "emb"})
        ga = (await lease(client, a)).json()
        await poll(client, a, ga["lease_id"])
        call = asyncio.create_task(client.post("/embeddings", headers=auth(TENANT),
                                               json={"model": "emb", "input": "one"}))
        [request] = (await poll(client, a, ga["lease_id"], wait_s=10)).json()["requests"]
        # The driver comes back: the car says it is leaving, then hands the lease back.
        bye = await poll(client, a, ga["lease_id"], leaving=True)
        assert bye.json()["closed"] is True
        back = await client.post(f"/leases/{ga['lease_id']}/fail", headers=auth(a),
                                 json={"reason": "preempted: driving", "handback": True})
        assert back.status_code == 200, back.text
        refused = await poll(client, a, ga["lease_id"])
        assert refused.status_code == 409 and "handed_back" in refused.json()["message"]
        # The replica goes back to the queue; car b takes it and gets the request car a held.
        gb = (await lease(client, b)).json()
        assert gb["unit_index"] == ga["unit_index"]
        [again] = (await poll(client, b, gb["lease_id"], wait_s=10)).json()["requests"]
        assert again == request
        await poll(client, b, gb["lease_id"], [{"request_id": again["request_id"], "vectors": vectors(1),
                                                "rows": 1, "dim": DIM}])
        assert (await call).status_code == 200
        assert (await client.post(f"/leases/{gb['lease_id']}/fail", headers=auth(b),
                                  json={"reason": "preempted: driving", "handback": True})).status_code == 200

        # Each replica's usage row: car b answered the request (one word: 3 word pieces), car a nothing.
        rows = usage_rows(coord)
        assert (rows[gb["lease_id"]].items, rows[gb["lease_id"]].tokens) == (1, 3)
        assert (rows[ga["lease_id"]].items, rows[ga["lease_id"]].tokens) == (0, 0)
        assert rows[gb["lease_id"]].workload == "serve" and rows[gb["lease_id"]].accepted

    serve([coord], scenario)


def test_an_oversized_exchange_is_refused_before_it_is_read(tmp_path):
    coord = coordinator(tmp_path, sqlite(tmp_path), ManualClock(1_000.0))

    async def scenario(client) -> None:
        a = await enroll(client, "a")
        await submit(client, {"kind": "serve", "model": "minilm-l6-v2", "replicas": 1})
        ga = (await lease(client, a)).json()
        huge = [{"request_id": f"r{i}", "vectors": vectors(64), "rows": 64, "dim": DIM} for i in range(20)]
        response = await poll(client, a, ga["lease_id"], huge)
        assert response.status_code == 413

    serve([coord], scenario)


def test_a_tenant_over_its_rate_limit_gets_429_with_retry_after(tmp_path):
    coord = coordinator(tmp_path, sqlite(tmp_path), ManualClock(1_000.0), serve_rate_limit_rps=0.5)

    async def scenario(client) -> None:
        await submit(client, {"kind": "serve", "model": "minilm-l6-v2", "replicas": 1, "name": "emb"})
        answers = [await client.post("/embeddings", headers=auth(TENANT), json={"model": "emb", "input": "x"})
                   for _ in range(3)]
        # A burst of two seconds' worth (at least one) passes the limit (and finds no car yet); the rest is refused.
        assert [a.status_code for a in answers] == [429, 429, 429]
        assert "no replica is connected" in answers[0].json()["error"]["message"]
        limited = answers[-1]
        assert "rate limit of 0.5 requests/s" in limited.json()["error"]["message"], limited.text
        assert limited.json()["error"]["type"] == "rate_limit_exceeded"
        assert int(limited.headers["retry-after"]) >= 1

    serve([coord], scenario)


@pytest.mark.parametrize(("demand", "spares", "wanted"), [
    (0.0, 0, 1), (3.9, 0, 1), (4.0, 0, 1), (4.1, 0, 2), (9.0, 1, 4), (100.0, 1, 5), (0.0, 2, 3),
])
def test_desired_replicas_follow_demand_between_floor_and_ceiling(demand, spares, wanted):
    assert desired_replicas(floor=1, ceiling=5, spares=spares, demand=demand, target=4.0) == wanted
    assert desired_replicas(floor=3, ceiling=5, spares=0, demand=demand, target=4.0) >= 3


def test_a_deployment_scales_up_with_requests_in_flight_and_down_after_a_quiet_spell(tmp_path, store_url):
    clock = ManualClock(1_000.0)
    coord = coordinator(tmp_path, store_url, clock)

    def live_units(job_id: str) -> list:
        return [u for u in coord.store.units_of(job_id) if u.state in ("pending", "leased")]

    async def scenario(client) -> None:
        cars = [await enroll(client, name) for name in "abc"]
        job = await submit(client, {"kind": "serve", "model": "minilm-l6-v2", "name": "emb", "replicas": 1,
                                    "max_replicas": 3, "spares": 1})
        assert len(live_units(job["job_id"])) == 2  # the floor and its warm spare
        grants = [(await lease(client, car)).json() for car in cars[:2]]
        for car, grant in zip(cars, grants, strict=False):
            await poll(client, car, grant["lease_id"])
        service = coord.services["serve"]

        # Six requests in flight on two cars (which sit on them): short of cars, one more replica is added.
        calls = [asyncio.create_task(client.post("/embeddings", headers=auth(TENANT),
                                                 json={"model": "emb", "input": "x"})) for _ in range(6)]
        taken = {}
        for car, grant in zip(cars, grants, strict=False):
            taken[grant["lease_id"]] = (car, (await poll(client, car, grant["lease_id"], wait_s=5)).json())
        while sum(len(w["requests"]) for _, w in taken.values()) < 6:
            for lease_id, (car, work) in taken.items():
                more = (await poll(client, car, lease_id, wait_s=1)).json()
                work["requests"] += more["requests"]
        for _ in range(4):  # the smoothed demand climbs past one replica's worth of four requests
            await asyncio.to_thread(service.autoscaler.look)
        assert len(live_units(job["job_id"])) == 3
        third = (await lease(client, cars[2])).json()
        assert third["kind"] == "serve" and third["spec"]["deployment"] == "emb"
        assert (await lease(client, cars[2])).status_code == 204  # the ceiling: no fourth

        for lease_id, (car, work) in taken.items():
            await poll(client, car, lease_id, [{"request_id": r["request_id"], "vectors": vectors(1), "rows": 1,
                                                "dim": DIM} for r in work["requests"]])
        assert [(await c).status_code for c in calls] == [200] * 6

        # Quiet: one replica (plus its spare) is enough; after 30 s of that, the idlest replica is retired.
        for _ in range(10):
            await asyncio.to_thread(service.autoscaler.look)
        assert len(live_units(job["job_id"])) == 3
        clock.advance(31.0)
        await asyncio.to_thread(service.autoscaler.look)
        left = live_units(job["job_id"])
        assert len(left) == 2
        retired = next(u for u in coord.store.units_of(job["job_id"]) if u.state == "cancelled")
        holder = retired.vehicle_id
        closed = [g for g in [*grants, third] if coord.store.get_lease(g["lease_id"]).vehicle_id == holder]
        assert coord.store.get_lease(closed[0]["lease_id"]).state == "cancelled"
        assert closed[0]["lease_id"] in usage_rows(coord)  # metered for the time it was held

    serve([coord], scenario)
