"""The vehicle's side of the coordinator's HTTP API: one method per endpoint, errors translated at this boundary.

Every non-2xx answer becomes the :mod:`fleetgrid.errors` class its ``ErrorBody.error`` code (or, failing that, its
status) names; every network failure and every body that does not parse becomes :class:`TransportError`. No httpx
or pydantic exception leaves this module. Artifact downloads resume from a partial file with ``Range`` and report
every byte that crossed the link, so the caller can charge the data plan for it; every workload's bulk bytes (a
training job's global versions and updates included) travel that way.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Self, TypeVar

import httpx
import pydantic

from fleetgrid import errors
from fleetgrid.identity.signing import UNSIGNED_PAYLOAD, CarKey, body_hash
from fleetgrid.protocol import (
    API_PREFIX,
    ArtifactInfo,
    CompleteRequest,
    EnrollRequest,
    EnrollResponse,
    FailRequest,
    Grant,
    HeartbeatResponse,
    LeaseAck,
    LeaseRequest,
    ProgressReport,
    StateReport,
    UpdateReport,
    is_digest,
)
from fleetgrid.wire_errors import error_from_response

if TYPE_CHECKING:
    from fleetgrid.secagg_wire import SecAggDownlink

__all__ = ["CoordinatorClient", "error_from_response"]

_Model = TypeVar("_Model", bound=pydantic.BaseModel)
_T = TypeVar("_T")
_GRANT: pydantic.TypeAdapter[Grant] = pydantic.TypeAdapter(Grant)

class CoordinatorClient:
    """A synchronous client for the vehicle API (``/v1/vehicles``, ``/v1/leases``, ``/v1/artifacts``, ``/v1/train``).

    ``verify`` is True (system CAs), False (no TLS check: tests only) or the path of a CA bundle. ``timeout_s`` bounds
    each request; a lease long-poll is given ``wait_s`` on top. ``transport`` replaces the network (tests pass an
    ``httpx.MockTransport``). The client is safe to share between the agent's threads, like the httpx client it wraps.
    With ``key`` and ``vehicle_id`` set, every authenticated request carries a signature by the car's key
    (:mod:`fleetgrid.identity.signing`) over its method, path, body and the time ``now()`` reads.
    """

    def __init__(
        self,
        base_url: str,
        credential: str | None = None,
        *,
        verify: bool | str = True,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise errors.InvalidInput(f"coordinator URL {base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.credential = credential
        self.key: CarKey | None = None
        """Set (with ``vehicle_id``) once enrolled with a key: every request is then signed with it."""
        self.vehicle_id: str | None = None
        self._now = now
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._http = httpx.Client(
            base_url=self.base_url + API_PREFIX, verify=verify, timeout=self._timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- vehicles ----------------------------------------------------------------------------------------------

    def enroll(self, request: EnrollRequest) -> EnrollResponse:
        """Trade an enrollment token for a vehicle id and credential. Does not set ``self.credential``."""
        response = self._send("POST", "/vehicles/enroll", json=request, auth=False)
        return self._parse(response, EnrollResponse)

    def heartbeat(self, report: StateReport) -> HeartbeatResponse:
        return self._parse(self._send("POST", "/vehicles/heartbeat", json=report), HeartbeatResponse)

    # --- leases ------------------------------------------------------------------------------------------------

    def request_lease(self, request: LeaseRequest) -> Grant | None:
        """Ask for work: an inference unit or a share of a training round; None when the coordinator had none
        within ``request.wait_s`` (204)."""
        read = self._timeout.read
        timeout = httpx.Timeout(None if read is None else read + request.wait_s, connect=self._timeout.connect)
        response = self._send("POST", "/leases", json=request, timeout=timeout)
        if response.status_code == 204:
            return None
        return self._validate(response, _GRANT.validate_json, "Grant")

    def renew(self, lease_id: str) -> LeaseAck:
        return self._parse(self._send("POST", f"/leases/{lease_id}/renew"), LeaseAck)

    def progress(self, lease_id: str, report: ProgressReport) -> LeaseAck:
        return self._parse(self._send("POST", f"/leases/{lease_id}/progress", json=report), LeaseAck)

    def complete(self, lease_id: str, request: CompleteRequest) -> LeaseAck:
        """Report the unit done. Idempotent on the coordinator, so a retry after a lost answer is safe."""
        return self._parse(self._send("POST", f"/leases/{lease_id}/complete", json=request), LeaseAck)

    def fail(self, lease_id: str, request: FailRequest) -> LeaseAck:
        return self._parse(self._send("POST", f"/leases/{lease_id}/fail", json=request), LeaseAck)

    # --- training ----------------------------------------------------------------------------------------------

    def train_update(self, lease_id: str, report: UpdateReport) -> LeaseAck:
        """Report a training lease's update, uploaded first with :meth:`upload` and named by ``report.update``.

        A :class:`Conflict` means the round closed before the report arrived: it was refused, through no fault of
        the car. Idempotent on the coordinator, so a retry after a lost answer is safe.
        """
        return self._parse(self._send("POST", f"/train/leases/{lease_id}/update", json=report), LeaseAck)

    def secagg_send(self, lease_id: str, phase: str, body: pydantic.BaseModel) -> int:
        """POST a training lease's secure-aggregation message of ``phase``; returns the bytes sent and received.
        :class:`Conflict` when the round moved on without this car (it dropped) or closed."""
        sent = body.model_dump_json().encode()
        response = self._send("POST", f"/train/leases/{lease_id}/secagg/{phase}", content=sent,
                              headers={"Content-Type": "application/json"})
        return len(sent) + len(response.content)

    def secagg_fetch(self, lease_id: str, phase: str) -> tuple[SecAggDownlink, int]:
        """GET this car's part of ``phase`` (``ready: false`` until the coordinator reached it), and its size."""
        from fleetgrid.secagg_wire import SecAggDownlink  # torch comes with it: only a training car needs it

        response = self._send("GET", f"/train/leases/{lease_id}/secagg/{phase}")
        return self._parse(response, SecAggDownlink), len(response.content)

    # --- a workload's own routes ------------------------------------------------------------------------------

    def exchange(self, path: str, body: bytes, model: type[_Model], *, wait_s: float = 0.0) -> tuple[_Model, int]:
        """POST ``body`` (JSON) to a workload's own route under the API prefix, which may hold the answer up to
        ``wait_s`` (a long-poll); returns the parsed answer and its size in bytes, for the data plan."""
        read = self._timeout.read
        timeout = httpx.Timeout(None if read is None else read + wait_s, connect=self._timeout.connect)
        response = self._send("POST", path, content=body, headers={"Content-Type": "application/json"},
                              timeout=timeout)
        return self._parse(response, model), len(response.content)

    # --- artifacts ---------------------------------------------------------------------------------------------

    def upload(self, data: bytes) -> str:
        """Store ``data`` as an artifact and return its sha256 digest; ``len(data)`` bytes go over the link."""
        digest = hashlib.sha256(data).hexdigest()
        response = self._send(
            "PUT", f"/artifacts/{digest}", content=data, headers={"Content-Type": "application/octet-stream"}
        )
        info = self._parse(response, ArtifactInfo)
        if info.digest != digest:
            raise errors.TransportError(f"uploaded artifact {digest} but the coordinator stored {info.digest}")
        return digest

    def artifact_size(self, digest: str) -> int:
        """The artifact's size in bytes, from a HEAD request (no body crosses the link)."""
        response = self._send("HEAD", f"/artifacts/{_checked(digest)}")
        try:
            return int(response.headers["content-length"])
        except (KeyError, ValueError) as exc:
            raise errors.TransportError(f"HEAD /artifacts/{digest} gave no usable Content-Length") from exc

    def download(
        self, digest: str, dest: str | Path, *, on_bytes: Callable[[int], None] | None = None
    ) -> int:
        """Fetch artifact ``digest`` to ``dest`` and return how many body bytes crossed the link.

        Bytes land in ``dest + '.part'`` first; a later call resumes from that file's length with ``Range``, so an
        interrupted transfer never pays twice for the same bytes. ``on_bytes(n)`` is called for every chunk as it
        arrives and may raise to abandon the transfer (the partial file is kept). The file is renamed to ``dest``
        only once its sha256 is ``digest``; a mismatch deletes it and raises :class:`HashMismatch`. A ``dest``
        already present is trusted (it was verified when it was written) and costs 0 bytes.
        """
        dest = Path(dest)
        if dest.exists():
            return 0
        part = dest.with_name(dest.name + ".part")
        offset = part.stat().st_size if part.exists() else 0
        moved = self._stream_into(_checked(digest), part, offset, on_bytes)
        actual = _sha256_file(part)
        if actual != digest:
            part.unlink()
            raise errors.HashMismatch(
                f"artifact {digest} downloaded as bytes hashing to {actual}; the partial file was discarded"
            )
        os.replace(part, dest)
        return moved

    def _stream_into(
        self, digest: str, part: Path, offset: int, on_bytes: Callable[[int], None] | None
    ) -> int:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        moved = 0
        request = self._signed(self._http.build_request("GET", f"/artifacts/{digest}",
                                                        headers=headers | self._auth_headers()))
        try:
            with contextlib.closing(self._http.send(request, stream=True)) as response:
                if response.status_code == 416 and offset:
                    return 0  # the partial file already holds every byte; the hash check decides
                if response.status_code not in (200, 206):
                    response.read()
                    raise error_from_response(response)
                mode = "ab" if response.status_code == 206 else "wb"  # a 200 ignored the range: start over
                with open(part, mode) as fh:
                    # No re-chunking: a buffered partial chunk would be lost, uncounted, if the link dropped.
                    for chunk in response.iter_bytes():
                        fh.write(chunk)
                        moved += len(chunk)
                        if on_bytes is not None:
                            on_bytes(len(chunk))
        except httpx.HTTPError as exc:
            raise errors.TransportError(
                f"download of artifact {digest} broke after {moved} bytes ({type(exc).__name__}: {exc}); "
                "calling download() again resumes it"
            ) from exc
        return moved

    # --- plumbing ----------------------------------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        if not self.credential:
            raise errors.AuthError("this call needs the vehicle credential; enroll first")
        return {"Authorization": f"Bearer {self.credential}"}

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: pydantic.BaseModel | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
        auth: bool = True,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if auth:
            all_headers.update(self._auth_headers())
        if json is not None:
            content = json.model_dump_json().encode()
            all_headers["Content-Type"] = "application/json"
        try:
            request = self._http.build_request(
                method, path, content=content, headers=all_headers,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            )
            response = self._http.send(self._signed(request) if auth else request)
        except httpx.HTTPError as exc:
            raise errors.TransportError(
                f"{method} {self.base_url}{API_PREFIX}{path} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not response.is_success:
            raise error_from_response(response)
        return response

    def _signed(self, request: httpx.Request) -> httpx.Request:
        """``request`` with the car's signature header, once it has a key. An artifact upload is signed without
        its body (:data:`UNSIGNED_PAYLOAD`: its path names the sha256 of its bytes)."""
        if self.key is None or self.vehicle_id is None:
            return request
        upload = request.method == "PUT" and request.url.path.startswith(f"{API_PREFIX}/artifacts/")
        digest = UNSIGNED_PAYLOAD if upload else body_hash(request.content)
        target = request.url.raw_path.decode("ascii")
        request.headers.update(self.key.sign(self.vehicle_id, request.method, target, digest, self._now()))
        return request

    @staticmethod
    def _parse(response: httpx.Response, model: type[_Model]) -> _Model:
        return CoordinatorClient._validate(response, model.model_validate_json, model.__name__)

    @staticmethod
    def _validate(response: httpx.Response, validate: Callable[[bytes], _T], name: str) -> _T:
        """``validate(body)``, its pydantic error turned into a TransportError naming the model ``name``."""
        try:
            return validate(response.content)
        except pydantic.ValidationError as exc:
            raise errors.TransportError(
                f"{response.request.method} {response.request.url.path} answered {response.status_code} with a "
                f"body that is not a {name}: {exc.errors()[0]['msg']}"
            ) from exc

def _checked(digest: str) -> str:
    if not is_digest(digest):
        raise errors.InvalidInput(f"artifact digest {digest!r} is not 64 lowercase hex digits (a sha256)")
    return digest


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
