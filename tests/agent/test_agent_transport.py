"""The coordinator client against httpx.MockTransport: every error mapped, every byte of a download counted."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from fleetgrid import errors
from fleetgrid.agent.transport import CoordinatorClient
from fleetgrid.protocol import (
    ArtifactRef,
    EnrollRequest,
    EnrollResponse,
    LeaseGrant,
    LeaseRequest,
    ModelRef,
    StateReport,
)

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


@pytest.mark.parametrize("cls", _wire_error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_the_coordinator_sends_becomes_its_own_class(cls):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(cls.status, json={"error": cls.code, "message": f"{cls.code} happened"})

    with client_for(handler) as client, pytest.raises(cls) as caught:
        client.renew("lease-1")
    assert type(caught.value) is cls and caught.value.message == f"{cls.code} happened"


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


def test_calls_carry_the_credential_and_the_long_poll_gets_its_wait_on_top():
    seen: list[httpx.Request] = []
    grant = LeaseGrant(
        lease_id="l-1", job_id="j", unit_index=0, replica=0, model=ModelRef(name="m"),
        input=ArtifactRef(digest="a" * 64, size=3, format="npy"), items=3, batch_size=1, deadline=1.0,
        renew_every_s=1.0,
    )
    answers = iter([httpx.Response(204), httpx.Response(200, content=grant.model_dump_json())])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/vehicles/enroll":
            return httpx.Response(201, json={"vehicle_id": "v-9", "credential": "new"})
        return next(answers)

    with CoordinatorClient(BASE + "/", transport=httpx.MockTransport(handler), timeout_s=3.0) as client:
        with pytest.raises(errors.AuthError, match="enroll first"):
            client.renew("l-1")
        enrolled = client.enroll(EnrollRequest(enrollment_token="t", name="car", hardware="ai4"))
        assert enrolled == EnrollResponse(vehicle_id="v-9", credential="new")
        client.credential = enrolled.credential
        assert client.request_lease(LeaseRequest(state=STATE, wait_s=20)) is None
        assert client.request_lease(LeaseRequest(state=STATE)) == grant
    enroll, poll, _ = seen
    assert "authorization" not in enroll.headers
    assert poll.headers["authorization"] == "Bearer new" and poll.url.path == "/v1/leases"
    assert json.loads(poll.content)["wait_s"] == 20
    assert poll.extensions["timeout"]["read"] == pytest.approx(23.0)


def test_upload_puts_the_bytes_under_their_digest():
    stored: dict[str, bytes] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        digest = request.url.path.rsplit("/", 1)[1]
        if hashlib.sha256(request.content).hexdigest() != digest:
            return httpx.Response(400, json={"error": "hash_mismatch", "message": "bytes changed"})
        stored[digest] = request.content
        return httpx.Response(201, json={"digest": digest, "size": len(request.content)})

    with client_for(handler) as client:
        digest = client.upload(b"result bytes")
    assert stored == {digest: b"result bytes"} and digest == hashlib.sha256(b"result bytes").hexdigest()


# --- resumable downloads ---------------------------------------------------------------------------------------


class _Body(httpx.SyncByteStream):
    """A body that arrives in 8 KiB chunks, as off a socket; ``broken`` drops the connection after the last."""

    def __init__(self, data: bytes, broken: bool = False) -> None:
        self.data, self.broken = data, broken

    def __iter__(self):
        for i in range(0, len(self.data), 8192):
            yield self.data[i : i + 8192]
        if self.broken:
            raise httpx.ReadError("connection reset by peer")


class ArtifactServer:
    """Serves one artifact with Range support; the first ``breaks`` GETs drop the link after ``cut`` bytes."""

    def __init__(self, data: bytes, *, cut: int = 0, breaks: int = 0, honour_range: bool = True) -> None:
        self.data, self.cut, self.breaks, self.honour_range = data, cut, breaks, honour_range
        self.digest = hashlib.sha256(data).hexdigest()
        self.ranges: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/v1/artifacts/{self.digest}"
        if request.method == "HEAD":
            return httpx.Response(200, headers={"Content-Length": str(len(self.data))})
        header = request.headers.get("range")
        self.ranges.append(header)
        start = int(header.removeprefix("bytes=").rstrip("-")) if header and self.honour_range else 0
        if start >= len(self.data):
            return httpx.Response(416, json={"error": "range_not_satisfiable", "message": "past the end"})
        status = 206 if start else 200
        body = self.data[start:]
        if self.breaks:
            self.breaks -= 1
            return httpx.Response(status, stream=_Body(body[: self.cut], broken=True))
        return httpx.Response(status, stream=_Body(body))


def test_an_interrupted_download_resumes_with_range_and_counts_every_byte_once(tmp_path):
    data = bytes(range(256)) * 1200  # 307,200 bytes
    server = ArtifactServer(data, cut=100_000, breaks=1)
    counted: list[int] = []
    dest = tmp_path / "shard"
    with client_for(server) as client:
        assert client.artifact_size(server.digest) == len(data)
        with pytest.raises(errors.TransportError, match="broke after 100000 bytes"):
            client.download(server.digest, dest, on_bytes=counted.append)
        assert not dest.exists() and (tmp_path / "shard.part").stat().st_size == 100_000
        moved = client.download(server.digest, dest, on_bytes=counted.append)
        assert client.download(server.digest, dest) == 0, "a verified file is not fetched again"
    assert server.ranges == [None, "bytes=100000-"]
    assert moved == len(data) - 100_000 and sum(counted) == len(data)
    assert dest.read_bytes() == data and not (tmp_path / "shard.part").exists()


def test_a_server_that_ignores_range_restarts_the_file(tmp_path):
    data = b"x" * 50_000 + b"y" * 50_000
    server = ArtifactServer(data, honour_range=False)
    (tmp_path / "f.part").write_bytes(data[:30_000])
    with client_for(server) as client:
        assert client.download(server.digest, tmp_path / "f") == len(data)
    assert (tmp_path / "f").read_bytes() == data


def test_a_complete_partial_file_finishes_on_416_without_a_byte(tmp_path):
    data = b"abc" * 1000
    server = ArtifactServer(data)
    (tmp_path / "f.part").write_bytes(data)
    with client_for(server) as client:
        assert client.download(server.digest, tmp_path / "f") == 0
    assert (tmp_path / "f").read_bytes() == data and server.ranges == [f"bytes={len(data)}-"]


def test_bytes_that_do_not_hash_to_the_digest_are_discarded(tmp_path):
    server = ArtifactServer(b"real")
    server.data = b"fake"  # served under the digest of b"real"
    with client_for(server) as client, pytest.raises(errors.HashMismatch, match="discarded"):
        client.download(server.digest, tmp_path / "f")
    assert list(tmp_path.iterdir()) == []


def test_a_callback_may_abandon_a_download_and_keep_the_partial_file(tmp_path):
    data = bytes(200_000)
    server = ArtifactServer(data)

    class Enough(Exception):
        pass

    def stop_after_first_chunk(n: int) -> None:
        raise Enough

    with client_for(server) as client:
        with pytest.raises(Enough):
            client.download(server.digest, tmp_path / "f", on_bytes=stop_after_first_chunk)
        kept = (tmp_path / "f.part").stat().st_size
        assert 0 < kept < len(data)
        assert client.download(server.digest, tmp_path / "f") == len(data) - kept


def test_bad_arguments_are_refused_before_any_request():
    with pytest.raises(errors.InvalidInput, match="must start with http"):
        CoordinatorClient("coordinator:8000")
    with client_for(lambda r: httpx.Response(200)) as client, pytest.raises(errors.InvalidInput, match="sha256"):
        client.artifact_size("not-a-digest")
