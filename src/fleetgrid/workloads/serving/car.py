"""The car side of a replica: load the model in the worker, then long-poll the coordinator for requests, run each
batch in one forward pass, and send the answers with the next poll, until the car must stop.

Every request and answer byte is charged to the owner's data plan; a car whose plan no longer allows the current
link hands the replica back. Compute runs in the preemptable worker, so the driver gets the computer back the
instant the car turns ineligible, exactly as with batch work; between batches the worker only holds the model.
"""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fleetgrid import errors
from fleetgrid.protocol import FailRequest, WorkGrant
from fleetgrid.workloads.base import CarHandler
from fleetgrid.workloads.serving.messages import ServeAnswer, ServeExchange, ServeGrant, ServeRequest, ServeWork
from fleetgrid.workloads.serving.task import EmbedTask

if TYPE_CHECKING:
    from fleetgrid.agent.link import CarLink

__all__ = ["ServeHandler"]

log = logging.getLogger(__name__)

_WARM_UP = ("fleetgrid warms the model up",)
ANSWER_BYTES = 512 * 1024
"""Answers one exchange carries at most (the rest go with the next, sent at once): well under the coordinator's
limit on a JSON body."""


class ServeHandler(CarHandler):
    grant: WorkGrant

    def __init__(self, grant: WorkGrant, car: CarLink, folder: Path) -> None:
        super().__init__(grant, car, folder)
        self.spec = ServeGrant.model_validate(grant.spec)
        self.path = f"/serve/leases/{grant.lease_id}/exchange"
        self.compute_s = 0.0
        self.served = 0
        self._answers: list[ServeAnswer] = []

    def counts_as_done(self) -> bool:
        return False  # a replica ends when the deployment does, not as a unit of work

    def run(self) -> None:
        car, spec = self.car, self.spec
        log.info("lease %s: serving %s (%s)", self.grant.lease_id, spec.deployment, spec.model)
        self._embed(_WARM_UP)  # load the model before taking requests: the first client does not wait for it
        while True:
            car.check_preempted()
            send, self._answers = _fit(self._answers)
            work = self._exchange(ServeExchange(answers=send, wait_s=0 if self._answers else spec.wait_s))
            if work.closed:
                log.info("lease %s: deployment %s no longer needs this replica", self.grant.lease_id,
                         spec.deployment)
                return
            if work.requests:
                self._answers += self._run(work.requests, set(work.cancelled))

    def _exchange(self, body: ServeExchange) -> ServeWork:
        car = self.car
        sent = body.model_dump_json().encode()
        if not car.allows_now(len(sent) + 4096):
            raise errors.Preempted("the owner's data plan does not allow serving on this link now")
        car.charge(len(sent))
        work, received = car.client.exchange(self.path, sent, ServeWork, wait_s=body.wait_s)
        car.charge(received)
        return work

    def _run(self, requests: list[ServeRequest], cancelled: set[str]) -> list[ServeAnswer]:
        """One forward pass over every text of ``requests`` (a dynamic batch), split back per request."""
        wanted = [r for r in requests if r.request_id not in cancelled]
        answers: list[ServeAnswer] = []
        batch: list[ServeRequest] = []
        for request in wanted:
            if batch and sum(len(r.texts) for r in batch) + len(request.texts) > self.spec.max_batch:
                answers += self._answer(batch)
                batch = []
            batch.append(request)
        if batch:
            answers += self._answer(batch)
        return answers

    def _answer(self, batch: list[ServeRequest]) -> list[ServeAnswer]:
        texts = tuple(t for r in batch for t in r.texts)
        try:
            vectors = self._embed(texts)
        except errors.Preempted:
            raise
        except errors.FleetgridError as exc:  # the batch failed on this car: the coordinator retries elsewhere
            return [ServeAnswer(request_id=r.request_id, error=str(exc)[:1000]) for r in batch]
        answers, row = [], 0
        for request in batch:
            rows = vectors[row:row + len(request.texts)]
            row += len(request.texts)
            answers.append(ServeAnswer(request_id=request.request_id, rows=rows.shape[0], dim=rows.shape[1],
                                       vectors=base64.b64encode(rows.astype("<f4").tobytes()).decode()))
        self.served += len(batch)
        return answers

    def _embed(self, texts: tuple[str, ...]) -> np.ndarray:
        task = EmbedTask(model_name=self.spec.model, texts=texts, result_path=self.folder / "batch.npy")
        started = time.perf_counter()
        try:
            self.car.compute(task)
        finally:
            self.compute_s += time.perf_counter() - started
        return np.load(task.result_path, allow_pickle=False)

    def hand_back(self, why: str) -> None:
        car = self.car
        reason = car.handback_reason(why)
        try:  # tell the coordinator first, so the requests this car held go elsewhere now, not at the lease's end
            self._exchange(ServeExchange(answers=_fit(self._answers)[0], wait_s=0, leaving=True))
        except errors.FleetgridError as exc:
            log.info("lease %s: could not say goodbye (%s)", self.grant.lease_id, exc)
        car.stats.compute_s += self.compute_s
        car.report_failure(FailRequest(reason=reason[:1000], handback=True, compute_s=self.compute_s,
                                       cellular_bytes=car.traffic.cellular, wifi_bytes=car.traffic.wifi))


def _fit(answers: list[ServeAnswer]) -> tuple[list[ServeAnswer], list[ServeAnswer]]:
    """The answers to send now (at least one, at most about ``ANSWER_BYTES`` of them) and those left for later."""
    size = 0
    for i, answer in enumerate(answers):
        size += len(answer.vectors or "") + 200
        if i and size > ANSWER_BYTES:
            return answers[:i], answers[i:]
    return answers, []
