"""The coordinator client: against the real coordinator app, every error it sends mapped and every byte of a download
counted (over a real socket where the link must break); against httpx.MockTransport, what only a proxy or a broken
network answers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fake_models import npy
from harness import ENROLL
from in_process import LiveCoordinator, in_process, on_socket
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetgrid import errors
from fleetgrid.agent.transport import CoordinatorClient
from fleetgrid.protocol import EnrollRequest, LeaseGrant, LeaseRequest, StateReport

BASE = "http://coordinator.test"
STATE = StateReport(drive="parked", soc=0.8, network="wifi", plugged_in=True, eligible=True)


def client_for(handler, credential: str | None = "cred-1") -> CoordinatorClient:
    return CoordinatorClient(BASE, credential, transport=httpx.MockTransport(handler))


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def _wire_error_classes() -> list[type[errors.FleetgridError]]:
    """Every error the coordinator can send: all errors.py classes but those raised on the agent side only."""
    agent_only = {errors.TransportError, errors.Preempted}
    return [cls for cls in _all_subclasses(errors.FleetgridError) if cls not in agent_only]


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[LiveCoordinator]:
    """One coordinator in this process for the module's calls that need no socket; each test has its own car.
    ``max_long_poll_s``: a poll that asks for 20 s is held only this long."""
    with in_process(tmp_path_factory.mktemp("coordinator"), max_long_poll_s=0.05) as live:
        yield live


@pytest.fixture(scope="module")
def credential(app) -> str:
    return app.enroll()


@pytest.mark.parametrize("cls", _wire_error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_the_coordinator_raises_reaches_the_car_as_its_own_class(cls, app, credential, monkeypatch):
    def refuse(vehicle, lease_id: str):
        raise cls(f"{cls.code} happened to {lease_id}")

    monkeypatch.setattr(app.coordinator.scheduler, "renew", refuse)  # the renew route answers whatever it raises
    with app.car(credential) as client, pytest.raises(cls) as caught:
        client.renew("lease-1")
    assert type(caught.value) is cls and caught.value.message == f"{cls.code} happened to lease-1"
    answered = app.tap.calls("POST /v1/leases/lease-1/renew")[-1]
    assert answered.status == cls.status and json.loads(answered.answer)["error"] == cls.code


def test_the_mapping_covers_every_wire_error():
    # Guards the list above: a new class in errors.py with an HTTP status must have a distinct code.
    classes = _wire_error_classes()
    assert len({cls.code for cls in classes}) == len(classes) >= 11
    assert all(cls.status != errors.FleetgridError.status for cls in classes)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (409, {"error": "lease_reissued", "message": "newer code"}, errors.Conflict),
        (400, {"error": "bad_thing", "message": "?"}, errors.InvalidInput),
        (404, "plain text from a proxy", errors.NotFound),
        (409, {"error": "not_found", "message": "code and status disagree"}, errors.Conflict),
        (500, {"error": "internal", "message": "boom"}, errors.TransportError),
        (502, "<html>bad gateway</html>", errors.TransportError),
        (418, {"error": "teapot", "message": "?"}, errors.TransportError),
    ],
)
def test_unknown_codes_fall_back_to_the_status_class(status, body, expected):
    # Answers no coordinator of this version gives: a newer one's codes, a proxy's pages.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body) if isinstance(body, dict) else httpx.Response(status, text=body)

    with client_for(handler) as client, pytest.raises(errors.FleetgridError) as caught:
        client.heartbeat(STATE)
    assert type(caught.value) is expected


def _network_errors() -> list[type[httpx.TransportError]]:
    return [cls for cls in [httpx.TransportError, *_all_subclasses(httpx.TransportError)] if not cls.__subclasses__()]


@pytest.mark.parametrize("exc_cls", _network_errors(), ids=lambda cls: cls.__name__)
def test_every_network_failure_becomes_a_transport_error(exc_cls):
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_cls("link down", request=request)

    with client_for(handler) as client:
        with pytest.raises(errors.TransportError, match="link down") as caught:
            client.heartbeat(STATE)
        assert isinstance(caught.value.__cause__, exc_cls)
        with pytest.raises(errors.TransportError):
            client.download("0" * 64, "/nonexistent-dir/never-written")


def test_a_success_with_a_body_that_is_not_the_model_is_a_transport_error():
    answer = httpx.Response(200, json={"nope": 1})
    with client_for(lambda request: answer) as client, pytest.raises(errors.TransportError, match="HeartbeatResp"):
        client.heartbeat(STATE)


class Recording(httpx.BaseTransport):
    """The requests a client hands its transport, as httpx built them (with their timeouts), passed on unchanged."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.inner.handle_request(request)


def test_calls_carry_the_credential_and_the_long_poll_gets_its_wait_on_top(app):
    seen = Recording(app.transport)
    with CoordinatorClient(app.url + "/", transport=seen, timeout_s=3.0) as client:
        with pytest.raises(errors.AuthError, match="enroll first"):
            client.renew("l-1")
        enrolled = client.enroll(EnrollRequest(enrollment_token=ENROLL, name="car", hardware="ai4"))
        assert enrolled.vehicle_id.startswith("v-") and enrolled.credential
        client.credential = enrolled.credential
        assert client.request_lease(LeaseRequest(state=STATE, wait_s=20)) is None
        with app.tenant() as tenant:
            job = tenant.submit("fake-summax", np.zeros((3, 3), np.float32), unit_items=3, batch_size=1)
        grant = client.request_lease(LeaseRequest(state=STATE))
    assert isinstance(grant, LeaseGrant) and grant.job_id == job.job_id and grant.items == 3
    bearer = f"Bearer {enrolled.credential}"
    assert [e.status for e in app.tap.calls("POST /v1/leases") if e.headers["authorization"] == bearer] == [204, 200]
    enroll, poll, _ = seen.requests
    assert "authorization" not in enroll.headers
    assert poll.headers["authorization"] == bearer and poll.url.path == "/v1/leases"
    assert json.loads(poll.content)["wait_s"] == 20
    assert poll.extensions["timeout"]["read"] == pytest.approx(23.0)


def test_upload_puts_the_bytes_under_their_digest(app, credential):
    with app.car(credential) as client:
        digest = client.upload(b"result bytes")
    assert digest == hashlib.sha256(b"result bytes").hexdigest()
    assert app.coordinator.artifacts.read_bytes(digest) == b"result bytes"


# --- resumable downloads, over a real socket --------------------------------------------------------------------


class ArtifactLink:
    """A thin middleware between the car and the real app's artifact downloads: records each GET's ``Range``
    header, may drop it (as some proxies do), and for the next ``breaks`` GETs passes ``cut`` bytes of the body
    and then closes the connection."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.ranges: list[str | None] = []
        self.cut = 0
        self.breaks = 0
        self.honour_range = True

    def __call__(self, app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith("/v1/artifacts/"):
                await app(scope, receive, send)
                return
            header = dict(scope["headers"]).get(b"range")
            self.ranges.append(header.decode() if header is not None else None)
            if not self.honour_range:
                scope = scope | {"headers": [(k, v) for k, v in scope["headers"] if k != b"range"]}
            if not self.breaks:
                await app(scope, receive, send)
                return
            self.breaks -= 1
            left = self.cut

            async def cutting(message: Message) -> None:
                nonlocal left
                if message["type"] != "http.response.body":
                    await send(message)
                    return
                chunk = message.get("body", b"")[:left]
                left -= len(chunk)
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                # The rest is dropped and the response never ends: uvicorn closes the connection.

            await app(scope, receive, cutting)

        return middleware


_LINK = ArtifactLink()


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[LiveCoordinator]:
    """One coordinator on a socket for the module's downloads; each test uploads its own artifact."""
    with on_socket(tmp_path_factory.mktemp("coordinator"), wrap=_LINK) as live:
        yield live


@pytest.fixture(scope="module")
def car(served) -> Iterator[CoordinatorClient]:
    with served.car(served.enroll()) as client:
        yield client


@pytest.fixture
def link(served) -> ArtifactLink:
    _LINK.reset()
    return _LINK


def test_an_interrupted_download_resumes_with_range_and_counts_every_byte_once(tmp_path, link, car):
    data = bytes(range(256)) * 1200  # 307,200 bytes
    digest = car.upload(data)
    link.cut, link.breaks = 100_000, 1
    counted: list[int] = []
    dest = tmp_path / "shard"
    assert car.artifact_size(digest) == len(data)
    with pytest.raises(errors.TransportError, match="broke after 100000 bytes"):
        car.download(digest, dest, on_bytes=counted.append)
    assert not dest.exists() and (tmp_path / "shard.part").stat().st_size == 100_000
    moved = car.download(digest, dest, on_bytes=counted.append)
    assert car.download(digest, dest) == 0, "a verified file is not fetched again"
    assert link.ranges == [None, "bytes=100000-"]
    assert moved == len(data) - 100_000 and sum(counted) == len(data)
    assert dest.read_bytes() == data and not (tmp_path / "shard.part").exists()


def test_a_server_that_ignores_range_restarts_the_file(tmp_path, link, car):
    data = b"x" * 50_000 + b"y" * 50_000
    digest = car.upload(data)
    link.honour_range = False
    (tmp_path / "f.part").write_bytes(data[:30_000])
    assert car.download(digest, tmp_path / "f") == len(data)
    assert (tmp_path / "f").read_bytes() == data and link.ranges == ["bytes=30000-"]


def test_a_complete_partial_file_finishes_on_416_without_a_byte(tmp_path, link, served, car):
    data = b"abc" * 1000
    digest = car.upload(data)
    (tmp_path / "f.part").write_bytes(data)
    assert car.download(digest, tmp_path / "f") == 0
    assert (tmp_path / "f").read_bytes() == data and link.ranges == [f"bytes={len(data)}-"]
    assert [e.status for e in served.tap.calls(f"GET /v1/artifacts/{digest}")] == [416]


def test_bytes_that_do_not_hash_to_the_digest_are_discarded(tmp_path, link, served, car):
    digest = car.upload(b"real")
    stored = served.coordinator.artifacts.path(digest)
    stored.chmod(0o644)
    stored.write_bytes(b"fake")  # the coordinator's disk now serves other bytes under the digest of b"real"
    with pytest.raises(errors.HashMismatch, match="discarded"):
        car.download(digest, tmp_path / "f")
    assert list(tmp_path.iterdir()) == []


def test_a_callback_may_abandon_a_download_and_keep_the_partial_file(tmp_path, link, car):
    data = npy(np.arange(50_000, dtype=np.float32))  # about 200 kB: more than one read off the socket

    class Enough(Exception):
        pass

    def stop_after_first_chunk(n: int) -> None:
        raise Enough

    digest = car.upload(data)
    with pytest.raises(Enough):
        car.download(digest, tmp_path / "f", on_bytes=stop_after_first_chunk)
    kept = (tmp_path / "f.part").stat().st_size
    assert 0 < kept < len(data)
    assert car.download(digest, tmp_path / "f") == len(data) - kept
    assert (tmp_path / "f").read_bytes() == data


def test_bad_arguments_are_refused_before_any_request():
    with pytest.raises(errors.InvalidInput, match="must start with http"):
        CoordinatorClient("coordinator:8000")
    with client_for(lambda r: httpx.Response(200)) as client, pytest.raises(errors.InvalidInput, match="sha256"):
        client.artifact_size("not-a-digest")
