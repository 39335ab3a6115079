"""A training job's bytes in the content-addressed artifact store, the one byte transport every workload shares.

Down: each global version a round trains from is published as artifacts owned by the job (``'job:ID'``), which the
cars holding a lease of that job may read: the version whole (a snapshot, and with ``snapshot_bits`` a compact,
quantized one) and the downlink delta that led to it. A share's grant names them; the car fetches them with
``GET /v1/artifacts/{digest}`` (resumable with ``Range``, charged to its data plan) and picks the deltas after the
version it holds, or the compact snapshot, or the snapshot. Up: a car uploads its encoded update with
``PUT /v1/artifacts/{digest}`` and reports its digest; the update is read back here only if that very car uploaded
it and its size is one an update of the model can have. The stored record of an accepted report (its facts and the
update's digest) is the unit's result, so it survives a restart.

What no live round needs any more is released: the versions older than any share may still train from, the updates
(and their records) once a checkpoint holds them, and everything the job owns when it ends.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from ..clock import Clock
from ..errors import FleetgridError, InvalidInput, NotFound
from ..protocol import UpdateReport
from ..workloads.training.compression import header_nbytes
from .artifacts import ArtifactStore, sha256_hex
from .rounds import Run
from .store import Store

__all__ = ["TrainingArtifacts", "job_owner", "max_update_nbytes", "read_record", "report_holds", "update_record"]

log = logging.getLogger("fleetgrid.coordinator.training")

_RECORD_FIELDS = {"update", "round", "base_version", "num_examples", "steps_done", "steps_planned", "examples_seen",
                  "train_loss", "preempted"}


def job_owner(job_id: str) -> str:
    """The owner of a job's artifacts: the cars holding an active lease of the job may read them."""
    return f"job:{job_id}"


def max_update_nbytes(numel: int) -> int:
    """The largest encoding of an update of ``numel`` values: top-k keeping every value, each with a 4-byte index
    and an uncompressed float32 (see ``compression.encoded_nbytes``)."""
    return header_nbytes(1) + 8 * numel


def update_record(vehicle_id: str, report: UpdateReport) -> bytes:
    """What the round loop needs of an accepted report, as canonical JSON: stored as the unit's result, it lets a
    coordinator that restarts (or another replica) read the update back. The same report hashes the same, so a
    retried report is recognised whatever its byte counters say."""
    fields = report.model_dump(mode="json", include=_RECORD_FIELDS) | {"vehicle": vehicle_id}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def report_holds(job_id: str, record: str, vehicle_id: str, update: str) -> tuple[tuple[str, str], ...]:
    """What to release once a report is folded into a checkpoint: its record (the job's) and its update (the car's
    upload)."""
    return (job_owner(job_id), record), (f"vehicle:{vehicle_id}", update)


def read_record(blob: bytes) -> tuple[str, UpdateReport]:
    """The vehicle and report of a stored :func:`update_record`; ValueError if it is not one."""
    fields = json.loads(blob)
    if not isinstance(fields, dict) or not isinstance(fields.get("vehicle"), str):
        raise ValueError("an update record is a JSON object naming its vehicle")
    vehicle = fields.pop("vehicle")
    return vehicle, UpdateReport.model_validate(fields)


class TrainingArtifacts:
    """Publishes, reads back and releases training jobs' artifacts. Publishing and releasing in this process never
    interleave, so a release cannot remove the file of a snapshot another job is publishing under the same digest
    (two jobs with the same model and seed start from the same bytes)."""

    def __init__(self, store: Store, artifacts: ArtifactStore, clock: Clock) -> None:
        self.store, self.artifacts, self.clock = store, artifacts, clock
        self._lock = threading.Lock()

    # --- the global down ----------------------------------------------------------------------------------------
    def publish(self, run: Run) -> int:
        """The strategy's current version as artifacts the job's cars may read (idempotent; called on the round
        loop's thread); returns the version. A file missing since (lost to a release racing in another replica) is
        written again."""
        strategy = run.strategy
        with strategy.lock:
            version = strategy.version
            held = run.snapshots.get(version)
            compact_held = run.compacts.get(version)
            if (held is not None and self.artifacts.exists(held[0])
                    and (compact_held is None or self.artifacts.exists(compact_held[0]))):
                return version
            snapshot = strategy.snapshot()
            compact = strategy.compact_snapshot()
            delta = strategy.downlink_delta(version)
        blobs = [snapshot, *([] if delta is None else [delta]), *([] if compact is None else [compact[0]])]
        refs = [(sha256_hex(b), len(b)) for b in blobs]
        # The owner row goes in before the file is looked for: a release that runs after it keeps the file, and one
        # that slipped in between (another replica's) only costs a rewrite at the next offer (see above).
        with self._lock:
            self.store.add_artifacts(refs, job_owner(run.job.job_id), self.clock.now())
            self.artifacts.put_many(blobs)
        run.snapshots[version] = refs[0]
        if delta is not None:
            run.deltas[version] = refs[1]
        if compact is not None:
            run.compacts[version] = (*refs[-1], compact[1])
        return version

    @staticmethod
    def grant_files(run: Run, version: int, keep: int) -> dict[str, Any]:
        """What a share training from ``version`` fetches, for its unit's payload: the version's snapshot (and
        compact snapshot, if published), and the contiguous chain of at most ``keep`` deltas leading to it, oldest
        first."""
        digest, size = run.snapshots[version]
        chain: list[dict[str, Any]] = []
        v = version
        while v in run.deltas and len(chain) < keep:
            chain.append({"version": v, "digest": run.deltas[v][0], "size": run.deltas[v][1]})
            v -= 1
        files: dict[str, Any] = {"snapshot": {"digest": digest, "size": size}, "deltas": chain[::-1]}
        if version in run.compacts:
            c_digest, c_size, c_params = run.compacts[version]
            files["compact"] = {"digest": c_digest, "size": c_size, "params_digest": c_params}
        return files

    @staticmethod
    def prune(run: Run, version: int, staleness: int, keep: int) -> list[tuple[str, str]]:
        """Forget the versions no share can still ask for once the global is at ``version``, and return the
        (owner, digest) holds to release once the checkpoint saying so is saved: a round's shares train from at
        most ``staleness`` versions back (older reports are refused), and their grants list at most ``keep``
        deltas."""
        old_snapshots = [run.snapshots.pop(v) for v in [v for v in run.snapshots if v < version - staleness]]
        old_deltas = [run.deltas.pop(v) for v in [v for v in run.deltas if v <= version - staleness - keep]]
        old_compacts = [run.compacts.pop(v)[:2] for v in [v for v in run.compacts if v < version - staleness]]
        needed = ({d for d, _ in run.snapshots.values()} | {d for d, _ in run.deltas.values()}
                  | {c[0] for c in run.compacts.values()})
        stale = {d for d, _ in old_snapshots + old_deltas + old_compacts} - needed  # a version may repeat older bytes
        return [(job_owner(run.job.job_id), d) for d in sorted(stale)]

    @staticmethod
    def to_meta(run: Run) -> dict[str, Any]:
        """The published versions, for the checkpoint: a coordinator that resumes the job keeps offering deltas
        and releases what it published before."""
        return {"snapshots": {str(v): list(ref) for v, ref in run.snapshots.items()},
                "deltas": {str(v): list(ref) for v, ref in run.deltas.items()},
                **({"compacts": {str(v): list(ref) for v, ref in run.compacts.items()}} if run.compacts else {})}

    @staticmethod
    def from_meta(run: Run, meta: Mapping[str, Any]) -> None:
        files = meta.get("files") or {}
        run.snapshots = {int(v): (str(d), int(n)) for v, (d, n) in (files.get("snapshots") or {}).items()}
        run.deltas = {int(v): (str(d), int(n)) for v, (d, n) in (files.get("deltas") or {}).items()}
        run.compacts = {int(v): (str(d), int(n), str(p)) for v, (d, n, p) in (files.get("compacts") or {}).items()}

    # --- updates up ---------------------------------------------------------------------------------------------
    def read_update(self, vehicle_id: str, digest: str, numel: int, model: str) -> bytes:
        """The update artifact ``digest``, whole, if this vehicle uploaded it and it is no larger than an update of
        ``numel`` values can be; NotFound / InvalidInput (naming the problem) otherwise. Reads nothing else."""
        if not self.store.owns(f"vehicle:{vehicle_id}", digest):
            raise NotFound(f"update artifact {digest} was not uploaded by this vehicle; PUT the encoded update to "
                           f"/v1/artifacts/{digest} first, then report it")
        size = self.artifacts.size(digest)
        most = max_update_nbytes(numel)
        if size > most:
            raise InvalidInput(f"update artifact {digest} is {size} bytes; an update of model {model!r} ({numel} "
                               f"values) is at most {most} bytes (compression.encode of a ({numel},) float32 delta)")
        return self.artifacts.read_bytes(digest)

    # --- release ------------------------------------------------------------------------------------------------
    def release(self, holds: Iterable[tuple[str, str]]) -> None:
        """Drop each (owner, digest) hold and remove the files nobody holds any more. A failure is logged, not
        raised: what is left is released with the job."""
        by_owner: dict[str, list[str]] = {}
        for owner, digest in holds:
            by_owner.setdefault(owner, []).append(digest)
        for owner, digests in by_owner.items():
            self._release(owner, digests)

    def release_job(self, job_id: str, spent: Iterable[tuple[str, str]] = ()) -> None:
        """A job ended: release everything it owns (its versions, its reports' records), the ``spent`` holds not
        released yet, and the updates of the reports it never folded in (acknowledged too late to be used)."""
        holds = list(spent)
        try:
            unused = self.store.unconsumed_results(job_id)
        except Exception:  # noqa: BLE001 - a passing database error: those updates stay, the rest goes
            log.exception("job %s: the reports it never used could not be listed; their updates stay", job_id)
            unused = []
        for unit in unused:
            try:
                vehicle_id, report = read_record(self.artifacts.read_bytes(unit.result_digest or ""))
            except (FleetgridError, ValueError):
                continue
            holds.append((f"vehicle:{vehicle_id}", report.update))
        self.release(holds)
        self._release(job_owner(job_id), None)

    def _release(self, owner: str, digests: list[str] | None) -> None:
        try:
            with self._lock:
                gone = self.store.release_artifacts(owner, digests)
                self.artifacts.discard(gone)
        except Exception:  # noqa: BLE001 - a passing database error: the job's end releases the rest
            log.exception("releasing artifacts of %s failed", owner)
