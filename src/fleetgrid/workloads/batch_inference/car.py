"""The car side of one inference unit: fetch its files, run it in the worker, deliver the result or hand it back.

Transfers go through the lease's :class:`~fleetgrid.agent.link.CarLink`, so every byte is charged to the data plan
and waits for a link the owner allows.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fleetgrid import errors
from fleetgrid.protocol import (
    MAX_INLINE_RESULT_BYTES,
    CompleteRequest,
    FailRequest,
    LeaseAck,
    LeaseGrant,
    ProgressReport,
)
from fleetgrid.workloads.base import CarHandler
from fleetgrid.workloads.batch_inference.task import UnitTask

if TYPE_CHECKING:
    from fleetgrid.agent.link import CarLink

__all__ = ["InferenceHandler"]

log = logging.getLogger(__name__)


class InferenceHandler(CarHandler):
    """One inference unit on this car: :meth:`run` it, or :meth:`hand_back` it with its checkpoint."""

    grant: LeaseGrant

    def __init__(self, grant: LeaseGrant, car: CarLink, unit: Path) -> None:
        super().__init__(grant, car, unit)
        model_file = grant.model.file
        self.task = UnitTask(
            model_name=grant.model.name,
            model_file=car.state_dir.model_path(model_file.digest) if model_file else None,
            model_digest=model_file.digest if model_file else None,
            items_path=unit / "input",
            items_format=grant.input.format or "npy",
            items=grant.items,
            batch_size=grant.batch_size,
            checkpoint_path=unit / "checkpoint.npy",
            result_path=unit / "result.npy",
            start=grant.checkpoint.done_items if grant.checkpoint else 0,
            resume_path=unit / "resume.npy" if grant.checkpoint else None,
        )

    def run(self) -> None:
        grant = self.grant
        log.info("lease %s: job %s unit %d, %d items", grant.lease_id, grant.job_id, grant.unit_index, grant.items)
        self._prepare()
        started = time.perf_counter()
        self.car.compute(self.task, self._progress_reporter())
        self._deliver(time.perf_counter() - started)

    def _prepare(self) -> None:
        """Fetch the model (unless cached by digest), the input shard and the checkpoint to resume from."""
        car, grant, task = self.car, self.grant, self.task
        car.check_preempted()  # the car may have turned ineligible during the long-poll
        if grant.model.file is not None and task.model_file is not None:
            if task.model_file.exists():
                car.stats.model_cache_hits += 1
            else:
                car.fetch(grant.model.file.digest, grant.model.file.size, task.model_file)
                car.stats.model_downloads += 1
        car.fetch(grant.input.digest, grant.input.size, task.items_path)
        if grant.checkpoint is not None and task.resume_path is not None:
            checkpoint = grant.checkpoint
            size = car.retrying(lambda: car.client.artifact_size(checkpoint.digest))
            car.fetch(checkpoint.digest, size, task.resume_path)

    def _progress_reporter(self) -> Callable[[int], None]:
        """An ``on_progress`` that reports the unit's checkpoint every ``progress_interval_s``."""
        interval = self.car.config.progress_interval_s
        next_report = time.monotonic() + interval

        def on_progress(done: int) -> None:
            nonlocal next_report
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + interval
                self._report_progress()

        return on_progress

    def _report_progress(self) -> None:
        done, digest = self._upload_checkpoint()
        try:
            self.car.client.progress(self.grant.lease_id, ProgressReport(done_items=done, checkpoint=digest))
        except errors.TransportError as exc:
            self.car.stats.transport_errors += 1
            log.info("progress report for lease %s lost (%s); the next one will carry it", self.grant.lease_id, exc)

    def _deliver(self, compute_s: float) -> None:
        car, grant, traffic = self.car, self.grant, self.car.traffic
        data = self.task.result_path.read_bytes()
        car.wait_for_link(len(data), preemptible=False)  # the unit is done: a trip does not stop an upload
        # A small result rides inside the completion and the next unit is asked for in the same call: one round
        # trip per unit. A computed result is worth waiting for: retry through outages until the lease is gone.
        inline = base64.b64encode(data).decode() if len(data) <= MAX_INLINE_RESULT_BYTES else None
        digest = hashlib.sha256(data).hexdigest() if inline else car.upload(data, until_stopped=True)
        follow_on = car.follow_on_request()

        def once() -> LeaseAck:
            if inline is not None:
                car.charge(len(inline))
            request = CompleteRequest(result=digest, inline=inline, next=follow_on, compute_s=compute_s,
                                      cellular_bytes=traffic.cellular, wifi_bytes=traffic.wifi)
            return car.client.complete(grant.lease_id, request)

        car.grant_next(car.retrying(once, until_stopped=True).next_lease)  # idempotent
        car.stats.units_done += 1
        car.stats.items_done += grant.items
        car.stats.items_resumed += grant.checkpoint.done_items if grant.checkpoint else 0
        car.stats.compute_s += compute_s
        log.info("lease %s complete: %d items in %.2f s", grant.lease_id, grant.items, compute_s)

    def hand_back(self, why: str) -> None:
        car, grant = self.car, self.grant
        reason = car.handback_reason(why)
        done, digest = self._upload_checkpoint()
        log.info("lease %s handed back at %d of %d items: %s", grant.lease_id, done, grant.items, reason)
        car.report_failure(FailRequest(
            reason=reason[:1000], handback=True, done_items=done, checkpoint=digest,
            cellular_bytes=car.traffic.cellular, wifi_bytes=car.traffic.wifi))

    def _upload_checkpoint(self) -> tuple[int, str | None]:
        """Upload the worker's checkpoint if the link allows it now; else fall back to the one the lease came with.

        Returns ``(done_items, digest)`` of whichever checkpoint the coordinator can have: the rows in the file
        uploaded, not the last progress message, since the worker may have written more batches since.
        """
        car, grant = self.car, self.grant
        fallback = (grant.checkpoint.done_items, grant.checkpoint.digest) if grant.checkpoint else (0, None)
        try:
            data = self.task.checkpoint_path.read_bytes()
        except FileNotFoundError:
            return fallback
        rows = int(np.load(io.BytesIO(data), allow_pickle=False).shape[0])
        if rows <= fallback[0] or not car.allows_now(len(data)):
            return fallback
        try:
            return rows, car.upload(data, attempts=1)
        except errors.TransportError:
            return fallback
