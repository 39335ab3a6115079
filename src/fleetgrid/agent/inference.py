"""The car side of one inference unit: fetch its files, run it in the worker, deliver the result or hand it back.

:meth:`Agent._work` drives a :class:`UnitLease` exactly as it drives a training share
(:class:`fleetgrid.agent.training.TrainLease`): it holds the lease (renewals), maps the coordinator's refusals,
and calls :meth:`UnitLease.hand_back` when the car is preempted or the agent stops. Transfers go through the
agent's helpers, so every byte is charged to the data plan and waits for a link the owner allows.
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
from fleetgrid.agent.worker import UnitTask
from fleetgrid.protocol import (
    MAX_INLINE_RESULT_BYTES,
    CompleteRequest,
    FailRequest,
    LeaseAck,
    LeaseGrant,
    ProgressReport,
)
from fleetgrid.vehicle.state import Network

if TYPE_CHECKING:
    from fleetgrid.agent.runtime import Agent, _Traffic

__all__ = ["UnitLease"]

log = logging.getLogger(__name__)


class UnitLease:
    """One inference unit on this car: :meth:`run` it, or :meth:`hand_back` it with its checkpoint."""

    def __init__(self, agent: Agent, grant: LeaseGrant, unit: Path, traffic: _Traffic) -> None:
        self.agent, self.grant, self.traffic = agent, grant, traffic
        model_file = grant.model.file
        self.task = UnitTask(
            model_name=grant.model.name,
            model_file=agent.dir.model_path(model_file.digest) if model_file else None,
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
        self.agent._compute(self.task, self._progress_reporter())
        self._deliver(time.perf_counter() - started)

    def _prepare(self) -> None:
        """Fetch the model (unless cached by digest), the input shard and the checkpoint to resume from."""
        agent, grant, task, traffic = self.agent, self.grant, self.task, self.traffic
        agent._check_preempted()  # the car may have turned ineligible during the long-poll
        if grant.model.file is not None and task.model_file is not None:
            if task.model_file.exists():
                agent.stats.model_cache_hits += 1
            else:
                agent._fetch(grant.model.file.digest, grant.model.file.size, task.model_file, traffic)
                agent.stats.model_downloads += 1
        agent._fetch(grant.input.digest, grant.input.size, task.items_path, traffic)
        if grant.checkpoint is not None and task.resume_path is not None:
            size = agent._retrying(lambda: agent.client.artifact_size(grant.checkpoint.digest))
            agent._fetch(grant.checkpoint.digest, size, task.resume_path, traffic)

    def _progress_reporter(self) -> Callable[[int], None]:
        """An ``on_progress`` that reports the unit's checkpoint every ``progress_interval_s``."""
        interval = self.agent.config.progress_interval_s
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
            self.agent.client.progress(self.grant.lease_id, ProgressReport(done_items=done, checkpoint=digest))
        except errors.TransportError as exc:
            self.agent.stats.transport_errors += 1
            log.info("progress report for lease %s lost (%s); the next one will carry it", self.grant.lease_id, exc)

    def _deliver(self, compute_s: float) -> None:
        agent, grant, traffic = self.agent, self.grant, self.traffic
        data = self.task.result_path.read_bytes()
        agent._wait_for_link(len(data), preemptible=False)  # the unit is done: a trip does not stop an upload
        # A small result rides inside the completion and the next unit is asked for in the same call: one round
        # trip per unit. A computed result is worth waiting for: retry through outages until the lease is gone.
        inline = base64.b64encode(data).decode() if len(data) <= MAX_INLINE_RESULT_BYTES else None
        digest = hashlib.sha256(data).hexdigest() if inline else agent._upload(data, traffic, until_stopped=True)
        follow_on = agent._follow_on_request()

        def once() -> LeaseAck:
            if inline is not None:
                agent._charge(len(inline), traffic)
            request = CompleteRequest(result=digest, inline=inline, next=follow_on, compute_s=compute_s,
                                      cellular_bytes=traffic.cellular, wifi_bytes=traffic.wifi)
            return agent.client.complete(grant.lease_id, request)

        agent._next_grant = agent._retrying(once, until_stopped=True).next_lease  # idempotent
        agent.stats.units_done += 1
        agent.stats.items_done += grant.items
        agent.stats.items_resumed += grant.checkpoint.done_items if grant.checkpoint else 0
        agent.stats.compute_s += compute_s
        log.info("lease %s complete: %d items in %.2f s", grant.lease_id, grant.items, compute_s)

    def hand_back(self, why: str) -> None:
        agent, grant = self.agent, self.grant
        reading = agent.monitor.reading()
        if reading.eligible:
            reason = f"handback: the agent is stopping ({why})"
        else:
            agent.stats.preemptions += 1
            reason = "preempted: " + "; ".join(reading.eligibility.reasons)
        done, digest = self._upload_checkpoint()
        log.info("lease %s handed back at %d of %d items: %s", grant.lease_id, done, grant.items, reason)
        agent._report_failure(grant, FailRequest(
            reason=reason[:1000], handback=True, done_items=done, checkpoint=digest,
            cellular_bytes=self.traffic.cellular, wifi_bytes=self.traffic.wifi,
        ))

    def _upload_checkpoint(self) -> tuple[int, str | None]:
        """Upload the worker's checkpoint if the link allows it now; else fall back to the one the lease came with.

        Returns ``(done_items, digest)`` of whichever checkpoint the coordinator can have: the rows in the file
        uploaded, not the last progress message, since the worker may have written more batches since.
        """
        agent, grant = self.agent, self.grant
        fallback = (grant.checkpoint.done_items, grant.checkpoint.digest) if grant.checkpoint else (0, None)
        try:
            data = self.task.checkpoint_path.read_bytes()
        except FileNotFoundError:
            return fallback
        rows = int(np.load(io.BytesIO(data), allow_pickle=False).shape[0])
        state = agent.monitor.reading().state
        link = state.network if state is not None else Network.OFFLINE
        if rows <= fallback[0] or not agent.plan.allows(len(data), link):
            return fallback
        try:
            return rows, agent._upload(data, self.traffic, attempts=1)
        except errors.TransportError:
            return fallback
