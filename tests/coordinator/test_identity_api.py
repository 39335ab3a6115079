"""Hostile cars against car identity, in process on a manual clock: wrong credentials and enrollments flooded
(429 with Retry-After), enrollment tokens spent, expired and revoked, unknown ids indistinguishable from wrong
secrets, signed requests replayed, tampered with or stale, and suspension holding at once. Each of these passed
unrefused on the code before car identity."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest

from fleetgrid.clock import ManualClock
from fleetgrid.coordinator.app import Coordinator, create_app
from fleetgrid.coordinator.config import CoordinatorConfig
from fleetgrid.coordinator.ratelimit import RateLimit
from fleetgrid.identity.signing import CarKey, body_hash
from harness import ENROLL, OPERATOR, TENANT, auth

PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}
T0 = 1_800_000_000.0


@pytest.fixture
def clock():
    return ManualClock(T0)


@pytest.fixture
def coord(tmp_path, clock):
    config = CoordinatorConfig(data_dir=tmp_path, enroll_token=ENROLL, operator_token=OPERATOR,
                               tenant_tokens={"acme": TENANT}, auth_failure_limit=RateLimit(burst=10, per_s=0.5),
                               enroll_limit=RateLimit(burst=5, per_s=0.1))
    coordinator = Coordinator(config, clock)
    yield coordinator
    coordinator.store.close()


def serve(coord: Coordinator, scenario: Callable[..., Awaitable[None]], addresses: int = 1) -> None:
    """Run ``scenario(client, ...)`` inside the app's lifespan: one client per client address (10.0.0.1, ...)."""
    app = create_app(coordinator=coord)

    async def main() -> None:
        async with app.app.router.lifespan_context(app.app):
            clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False,
                                                                       client=(f"10.0.0.{i + 1}", 40000)),
                                         base_url="http://coordinator/v1", timeout=30) for i in range(addresses)]
            try:
                await scenario(*clients)
            finally:
                for client in clients:
                    await client.aclose()

    asyncio.run(main())


async def issue(client: httpx.AsyncClient, **body) -> dict:
    r = await client.post("/enrollment-tokens", json=body, headers=auth(OPERATOR))
    assert r.status_code == 201, r.text
    return r.json()


async def enroll(client: httpx.AsyncClient, token: str, key: CarKey | None = None) -> httpx.Response:
    body = {"enrollment_token": token, "name": "car", "hardware": "ai4"}
    if key is not None:
        body["public_key"] = key.public_text
    return await client.post("/vehicles/enroll", json=body)


class Car:
    """A car that signs its requests by hand, so a test can replay or alter one."""

    def __init__(self, client: httpx.AsyncClient, clock: ManualClock, enrolled: dict, key: CarKey) -> None:
        self.client, self.clock, self.key = client, clock, key
        self.vehicle_id, self.credential = enrolled["vehicle_id"], enrolled["credential"]

    def headers(self, method: str, path: str, body: bytes = b"", *, at: float | None = None) -> dict[str, str]:
        signed = self.key.sign(self.vehicle_id, method, "/v1" + path, body_hash(body),
                               self.clock.now() if at is None else at)
        return {**auth(self.credential), **signed, "content-type": "application/json"}

    async def heartbeat(self, headers: dict[str, str] | None = None, body: bytes | None = None) -> httpx.Response:
        body = body if body is not None else httpx.Request("POST", "/", json=PARKED).content
        return await self.client.post("/vehicles/heartbeat", content=body,
                                      headers=headers or self.headers("POST", "/vehicles/heartbeat", body))


async def keyed_car(client: httpx.AsyncClient, clock: ManualClock) -> Car:
    key = CarKey.generate()
    r = await enroll(client, ENROLL, key)
    assert r.status_code == 201, r.text
    return Car(client, clock, r.json(), key)


def without_request_id(r: httpx.Response) -> tuple[int, str, str]:
    body = r.json()
    return r.status_code, body["error"], body["message"]


def test_a_flood_of_wrong_credentials_gets_429_with_retry_after_then_passes_once_refilled(coord, clock):
    async def scenario(client: httpx.AsyncClient) -> None:
        car = await keyed_car(client, clock)
        statuses = []
        for i in range(300):
            r = await client.post("/vehicles/heartbeat", json=PARKED, headers=auth(f"fgv.v-{i:012x}.wrong"))
            statuses.append(r.status_code)
        assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}
        assert int(r.headers["retry-after"]) >= 1 and r.json()["error"] == "rate_limited"
        # The address is refused whatever it sends now, a good credential too, until its bucket refills.
        assert (await car.heartbeat()).status_code == 429
        clock.advance(float(r.headers["retry-after"]))
        assert (await car.heartbeat()).status_code == 200
        tenant = await client.get("/jobs", headers=auth("fgt_wrong"))
        assert tenant.status_code == 401  # a tenant's failure spends from the same address's bucket

    serve(coord, scenario)


def test_failures_for_one_claimed_car_are_limited_whatever_the_address(coord, clock):
    async def scenario(*clients: httpx.AsyncClient) -> None:
        car = await keyed_car(clients[0], clock)
        wrong = auth(f"fgv.{car.vehicle_id}.not-its-secret")
        for client in clients[:10]:  # each address fails once: none of their buckets runs dry, the car's does
            assert (await client.post("/vehicles/heartbeat", json=PARKED, headers=wrong)).status_code == 401
        r = await clients[10].post("/vehicles/heartbeat", json=PARKED, headers=wrong)
        assert r.status_code == 429 and "vehicle id" in r.json()["message"], r.text
        assert int(r.headers["retry-after"]) >= 1
        other = await clients[10].post("/vehicles/heartbeat", json=PARKED, headers=auth("fgv.v-000000000000.x"))
        assert other.status_code == 401  # another id from that address is still checked

    serve(coord, scenario, addresses=11)


def test_an_unknown_car_and_a_wrong_secret_get_the_same_answer(coord, clock):
    async def scenario(client: httpx.AsyncClient) -> None:
        car = await keyed_car(client, clock)
        unknown = await client.post("/vehicles/heartbeat", json=PARKED, headers=auth("fgv.v-000000000000.x"))
        wrong = await client.post("/vehicles/heartbeat", json=PARKED, headers=auth(f"fgv.{car.vehicle_id}.x"))
        assert without_request_id(unknown) == without_request_id(wrong)
        assert unknown.status_code == 401 and car.vehicle_id not in wrong.text
        for path in (f"/artifacts/{'0' * 64}", "/vehicles/heartbeat"):  # a GET route and a POST one
            method = "GET" if path.startswith("/artifacts") else "POST"
            a = await client.request(method, path, headers=auth("fgv.v-000000000000.x"))
            b = await client.request(method, path, headers=auth(f"fgv.{car.vehicle_id}.x"))
            assert without_request_id(a) == without_request_id(b)

    serve(coord, scenario)


def test_a_single_use_token_enrolls_one_car(coord):
    async def scenario(client: httpx.AsyncClient) -> None:
        token = await issue(client, uses=1, label="garage 4")
        assert token["token"].startswith("fgen_") and token["uses_left"] == 1
        assert (await enroll(client, token["token"])).status_code == 201
        again = await enroll(client, token["token"])
        assert again.status_code == 401 and "used up (1 of 1" in again.json()["message"]
        listed = (await client.get("/enrollment-tokens", headers=auth(OPERATOR))).json()
        assert [(t["token_id"], t["used"], t["uses_left"], t["state"]) for t in listed] == \
            [(token["token_id"], 1, 0, "used_up")]
        assert all("token" not in t for t in listed)  # never the secret again

    serve(coord, scenario)


def test_an_expired_or_revoked_token_is_refused(coord, clock):
    async def scenario(client: httpx.AsyncClient) -> None:
        expiring = await issue(client, uses=None, expires_in_s=600)
        revoked = await issue(client, uses=None)
        assert (await enroll(client, expiring["token"])).status_code == 201
        clock.advance(601)
        r = await enroll(client, expiring["token"])
        assert r.status_code == 401 and "expired" in r.json()["message"]
        r = await client.delete(f"/enrollment-tokens/{revoked['token_id']}", headers=auth(OPERATOR))
        assert r.status_code == 200 and r.json()["state"] == "revoked"
        r = await enroll(client, revoked["token"])
        assert r.status_code == 401 and "revoked" in r.json()["message"]
        r = await client.delete("/enrollment-tokens/et-nope", headers=auth(OPERATOR))
        assert r.status_code == 404
        bad = await client.post("/enrollment-tokens", json={"uses": 0}, headers=auth(OPERATOR))
        assert bad.status_code == 422 and "uses" in bad.json()["message"]
        past = await client.post("/enrollment-tokens", json={"expires_at": T0 - 1}, headers=auth(OPERATOR))
        assert past.status_code == 400 and "not in the future" in past.json()["message"]
        assert (await client.post("/enrollment-tokens", json={}, headers=auth(TENANT))).status_code == 401

    serve(coord, scenario)


def test_enrollments_with_one_issued_token_are_rate_limited(coord, clock):
    async def scenario(client: httpx.AsyncClient) -> None:
        token = await issue(client, uses=None, expires_in_s=3600)
        statuses = [(await enroll(client, token["token"])).status_code for _ in range(300)]
        assert statuses[:5] == [201] * 5 and set(statuses[5:]) == {429}
        clock.advance(10.0)  # one more enrollment's worth (0.1 per second)
        assert (await enroll(client, token["token"])).status_code == 201
        # The operator's bootstrap token is not limited (benchmarks enroll thousands of cars from one host).
        assert {(await enroll(client, ENROLL)).status_code for _ in range(20)} == {201}

    serve(coord, scenario)


def test_signed_requests_refuse_replays_tampering_staleness_and_missing_signatures(coord, clock):
    async def scenario(client: httpx.AsyncClient, thief_address: httpx.AsyncClient) -> None:
        car = await keyed_car(client, clock)
        body = httpx.Request("POST", "/", json=PARKED).content
        headers = car.headers("POST", "/vehicles/heartbeat", body)
        assert (await car.heartbeat(headers, body)).status_code == 200
        replay = await car.heartbeat(headers, body)
        assert replay.status_code == 401 and "replay" in replay.json()["message"]
        tampered = body.replace(b"0.8", b"0.9")
        r = await car.heartbeat(car.headers("POST", "/vehicles/heartbeat", body), tampered)
        assert r.status_code == 401
        stale = car.headers("POST", "/vehicles/heartbeat", body, at=clock.now() - 300)
        r = await car.heartbeat(stale, body)
        assert r.status_code == 401 and "more than 60 s apart" in r.json()["message"]
        other_route = car.headers("POST", "/leases", body)  # signed for another path
        assert (await car.heartbeat(other_route, body)).status_code == 401
        replays = [(await thief_address.post("/vehicles/heartbeat", content=body, headers=headers)).status_code
                   for _ in range(40)]
        assert replays[0] == 401 and replays[-1] == 429  # the replayer's address is limited, not the car's id
        unsigned = await client.post("/vehicles/heartbeat", json=PARKED, headers=auth(car.credential))
        assert unsigned.status_code == 401 and "must be signed" in unsigned.json()["message"]
        thief = CarKey.generate()  # the stolen bearer secret with another key
        forged = Car(client, clock, {"vehicle_id": car.vehicle_id, "credential": car.credential}, thief)
        assert (await forged.heartbeat()).status_code == 401
        assert (await car.heartbeat()).status_code == 200

    serve(coord, scenario, addresses=2)


def test_a_car_without_a_key_keeps_working_unless_keys_are_required(coord, clock, tmp_path):
    async def scenario(client: httpx.AsyncClient) -> None:
        r = await enroll(client, ENROLL)
        cred = r.json()["credential"]
        assert (await client.post("/vehicles/heartbeat", json=PARKED, headers=auth(cred))).status_code == 200
        coord.auth.require_keys = True
        coord.auth.forget_vehicle(r.json()["vehicle_id"])
        r = await client.post("/vehicles/heartbeat", json=PARKED, headers=auth(cred))
        assert r.status_code == 401 and "enroll the car again" in r.json()["message"]
        bad_key = await client.post("/vehicles/enroll", json={"enrollment_token": ENROLL, "name": "c",
                                                              "hardware": "ai4", "public_key": "abc"})
        assert bad_key.status_code == 400 and "32 bytes" in bad_key.json()["message"]
        coord.config.require_car_keys = True
        keyless = await enroll(client, ENROLL)
        assert keyless.status_code == 400 and "requires car keys" in keyless.json()["message"]

    serve(coord, scenario)


def test_a_suspended_car_is_refused_at_once_and_the_audit_log_says_who(coord, clock):
    async def scenario(client: httpx.AsyncClient) -> None:
        car = await keyed_car(client, clock)
        assert (await car.heartbeat()).status_code == 200  # its record is now in the auth cache
        r = await client.post(f"/vehicles/{car.vehicle_id}/suspend", json={"reason": "bad results"},
                              headers=auth(OPERATOR))
        assert r.status_code == 200 and r.json()["changed"] is True
        refused = await car.heartbeat()
        assert refused.status_code == 403 and "suspended (bad results)" in refused.json()["message"]
        # The store method the reputation check calls holds at once too (the cache is told).
        assert (await client.post(f"/vehicles/{car.vehicle_id}/unsuspend", headers=auth(OPERATOR))).status_code == 200
        assert (await car.heartbeat()).status_code == 200
        assert coord.store.suspend_vehicle(car.vehicle_id, "too many refused updates", "reputation") is True
        assert coord.store.suspend_vehicle(car.vehicle_id, "again", "reputation") is False
        assert (await car.heartbeat()).status_code == 403
        missing = await client.post("/vehicles/v-nope/suspend", json={"reason": "x"}, headers=auth(OPERATOR))
        assert missing.status_code == 404
        token = await issue(client, uses=2)
        await client.delete(f"/enrollment-tokens/{token['token_id']}", headers=auth(OPERATOR))
        log = (await client.get("/audit", headers=auth(OPERATOR))).json()
        assert [(e["actor"], e["action"], e["target"]) for e in log] == [
            ("operator", "enrollment_token.revoke", token["token_id"]),
            ("operator", "enrollment_token.issue", token["token_id"]),
            ("reputation", "vehicle.suspend", car.vehicle_id),
            ("operator", "vehicle.unsuspend", car.vehicle_id),
            ("operator", "vehicle.suspend", car.vehicle_id),
        ]
        assert log[2]["details"] == {"reason": "too many refused updates"}
        older = (await client.get("/audit", params={"before": log[1]["seq"], "limit": 1},
                                  headers=auth(OPERATOR))).json()
        assert [e["seq"] for e in older] == [log[2]["seq"]]
        assert (await client.get("/audit", headers=auth(TENANT))).status_code == 401

    serve(coord, scenario)


def test_a_path_and_query_are_verified_as_sent(coord, clock):
    """The car signs the path as it goes on the wire (percent-encoded) with its query; the coordinator checks that
    text, not the path decoded for routing."""

    async def scenario(client: httpx.AsyncClient) -> None:
        car = await keyed_car(client, clock)
        request = client.build_request("GET", f"/artifacts/{'0' * 64}", params={"x": "a b/c"})
        sent = request.url.raw_path.decode()
        assert sent.startswith("/v1/artifacts/") and "?x=a" in sent and " " not in sent
        request.headers.update(car.key.sign(car.vehicle_id, "GET", sent, body_hash(b""), clock.now()))
        request.headers.update(auth(car.credential))
        r = await client.send(request)
        assert r.status_code == 404, r.text  # authenticated: no such artifact
        decoded = car.key.sign(car.vehicle_id, "GET", f"/v1/artifacts/{'0' * 64}?x=a b/c", body_hash(b""),
                               clock.now())
        request.headers.update(decoded)
        assert (await client.send(request)).status_code == 401

    serve(coord, scenario)
