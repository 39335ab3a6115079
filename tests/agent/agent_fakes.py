"""Fakes for the agent's tests: a slow numpy model the worker child can import, and an in-memory coordinator.

The model factory must be importable by the worker's spawned child, which gets this directory on its sys.path
from the parent, so everything here is module-level.
"""

from __future__ import annotations

import hashlib
import base64
import io
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from fleetgrid import errors
from fleetgrid.protocol import (
    ArtifactRef,
    CheckpointRef,
    CompleteRequest,
    EnrollRequest,
    EnrollResponse,
    FailRequest,
    HeartbeatResponse,
    LeaseAck,
    LeaseGrant,
    LeaseRequest,
    ModelRef,
    ProgressReport,
    StateReport,
)

ROW = 2  # output columns of the fake model


class SumMaxRunner:
    """Maps each item (a row of floats) to ``[sum, max]``, sleeping ``delay_s`` per batch so tests can preempt it."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.spec = SimpleNamespace(name="fake-summax", output_shape=(ROW,))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.delay_s)
        x = np.asarray(batch, dtype=np.float32)
        return np.stack([x.sum(axis=1), x.max(axis=1)], axis=1).astype(np.float32)  # (B, 2)


def summax_factory(
    name: str,
    model_file: Path | None = None,
    threads: int | None = None,
    delay_s: float = 0.0,
    log: Path | None = None,
):
    """A runner factory for :class:`WorkerProcess` (bind ``delay_s``/``log`` with functools.partial); each call
    appends ``name pid`` to ``log``, so tests can count model loads. A model file, if named, must exist."""
    if model_file is not None and not Path(model_file).is_file():
        raise errors.InvalidInput(f"model file {model_file} does not exist")
    if log is not None:
        with open(log, "a") as fh:
            fh.write(f"{name} {os.getpid()}\n")
    return SumMaxRunner(delay_s)


def slow_registry_factory(name: str, model_file: Path | None = None, threads: int | None = None, delay_s: float = 0.0):
    """The real registry's runner for ``name``, slowed by ``delay_s`` a batch so a test can preempt it mid-unit."""
    from fleetgrid.models.registry import load_runner

    runner = load_runner(name, model_file=model_file, threads=threads)

    def slow(batch):
        time.sleep(delay_s)
        return runner(batch)

    slow.spec = runner.spec
    return slow


def expected(items: np.ndarray) -> np.ndarray:
    return SumMaxRunner(0.0)(items)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class FakeCoordinator:
    """The coordinator's vehicle API in memory, shaped like :class:`CoordinatorClient` (the agent's only view).

    ``units`` are handed out in order, one lease at a time; a handback puts the unit back at the front with its
    checkpoint, as the real coordinator reissues it; a plain failure drops the unit.
    """

    artifacts: dict[str, bytes] = field(default_factory=dict)
    units: list[dict] = field(default_factory=list)
    credential: str | None = None
    calls: list[tuple[str, object]] = field(default_factory=list)
    lease_requests: list[LeaseRequest] = field(default_factory=list)
    downloads: dict[str, int] = field(default_factory=dict)
    results: dict[int, np.ndarray] = field(default_factory=dict)
    leases: dict[str, dict] = field(default_factory=dict)
    renew_every_s: float = 5.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, data: bytes) -> str:
        digest = sha(data)
        self.artifacts[digest] = data
        return digest

    def add_unit(self, items: np.ndarray, *, batch_size: int = 4, model_file: bytes | None = None) -> None:
        file_ref = None
        if model_file is not None:
            file_ref = ArtifactRef(digest=self.put(model_file), size=len(model_file))
        data = npy(items)
        self.units.append({
            "index": len(self.units) + len(self.results),
            "model": ModelRef(name="fake-summax", file=file_ref),
            "input": ArtifactRef(digest=self.put(data), size=len(data), format="npy"),
            "items": len(items),
            "batch_size": batch_size,
            "checkpoint": None,
        })

    def calls_named(self, name: str) -> list[object]:
        return [body for called, body in self.calls if called == name]

    # --- the CoordinatorClient surface -------------------------------------------------------------------------

    def enroll(self, request: EnrollRequest) -> EnrollResponse:
        self.calls.append(("enroll", request))
        if request.enrollment_token != "good-token":
            raise errors.AuthError("enrollment token refused")
        return EnrollResponse(vehicle_id="v-1", credential="cred-1")

    def active_lease_ids(self) -> list[str]:
        """What the coordinator holds open for this car: a lease missing here is gone, and the agent stops it."""
        return list(self.leases)

    def heartbeat(self, report: StateReport) -> HeartbeatResponse:
        self._auth()
        self.calls.append(("heartbeat", report))
        return HeartbeatResponse(server_time=time.time(), active_leases=self.active_lease_ids())

    def request_lease(self, request: LeaseRequest) -> LeaseGrant | None:
        self._auth()
        with self._lock:
            self.lease_requests.append(request)
            if not self.units or self.leases:
                return None
            unit = self.units.pop(0)
            lease_id = f"lease-{len(self.calls_named('grant'))}"
            self.leases[lease_id] = unit
            grant = LeaseGrant(
                lease_id=lease_id, job_id="job-1", unit_index=unit["index"], replica=0, model=unit["model"],
                input=unit["input"], items=unit["items"], batch_size=unit["batch_size"],
                checkpoint=unit["checkpoint"], deadline=time.time() + 60, renew_every_s=self.renew_every_s,
            )
            self.calls.append(("grant", grant))
            return grant

    def renew(self, lease_id: str) -> LeaseAck:
        self.calls.append(("renew", lease_id))
        return self._ack(lease_id)

    def progress(self, lease_id: str, report: ProgressReport) -> LeaseAck:
        self.calls.append(("progress", report))
        return self._ack(lease_id)

    def complete(self, lease_id: str, request: CompleteRequest) -> LeaseAck:
        self.calls.append(("complete", request))
        if request.inline is not None:
            assert self.put(base64.b64decode(request.inline)) == request.result
        with self._lock:
            unit = self.leases.pop(lease_id)
            self.results[unit["index"]] = np.load(io.BytesIO(self.artifacts[request.result]))
        follow_on = self.request_lease(request.next) if request.next is not None else None
        return LeaseAck(lease_id=lease_id, state="done", next_lease=follow_on)

    def fail(self, lease_id: str, request: FailRequest) -> LeaseAck:
        self.calls.append(("fail", request))
        with self._lock:
            unit = self.leases.pop(lease_id)
            if request.handback:
                if request.checkpoint is not None:
                    unit["checkpoint"] = CheckpointRef(done_items=request.done_items, digest=request.checkpoint)
                self.units.insert(0, unit)
        return LeaseAck(lease_id=lease_id, state="handed_back" if request.handback else "failed")

    def upload(self, data: bytes) -> str:
        self._auth()
        return self.put(data)

    def artifact_size(self, digest: str) -> int:
        return len(self.artifacts[digest])

    def download(self, digest: str, dest: Path, *, on_bytes=None) -> int:
        self._auth()
        dest = Path(dest)
        if dest.exists():
            return 0
        data = self.artifacts[digest]
        self.downloads[digest] = self.downloads.get(digest, 0) + 1
        for i in range(0, len(data), 4096):
            if on_bytes is not None:
                on_bytes(len(data[i : i + 4096]))
        dest.write_bytes(data)
        return len(data)

    def close(self) -> None:
        pass

    def _auth(self) -> None:
        if self.credential != "cred-1":
            raise errors.AuthError(f"credential {self.credential!r} refused")

    def _ack(self, lease_id: str) -> LeaseAck:
        if lease_id not in self.leases:
            raise errors.NotFound(f"lease {lease_id} is not open")
        return LeaseAck(lease_id=lease_id, state="active", deadline=time.time() + 60)
