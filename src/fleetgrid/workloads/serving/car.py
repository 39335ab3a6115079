"""The car side of a replica: load the model in the worker, then long-poll the coordinator for requests, run each
batch in one forward pass, and send the answers with the next poll, until the car must stop.

Every request and answer byte is charged to the owner's data plan; a car whose plan no longer allows the current
link hands the replica back. Compute runs in the preemptable worker, so the driver gets the computer back the
instant the car turns ineligible, exactly as with batch work; between batches the worker only holds the model.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from fleetgrid import errors
from fleetgrid.protocol import FailRequest, WorkGrant
from fleetgrid.workloads.base import CarHandler
from fleetgrid.workloads.serving.messages import (
    GenerateParams,
    ServeAnswer,
    ServeExchange,
    ServeGrant,
    ServeRequest,
    ServeWork,
)
from fleetgrid.workloads.serving.task import Continuation, EmbedTask, GenerateTask

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
        self._generations: dict[str, _Generation] = {}
        self._seeds = random.Random()

    def counts_as_done(self) -> bool:
        return False  # a replica ends when the deployment does, not as a unit of work

    def run(self) -> None:
        car, spec = self.car, self.spec
        log.info("lease %s: serving %s (%s)", self.grant.lease_id, spec.deployment, spec.model)
        # Load the model before taking requests: the first client does not wait for it.
        if spec.weights is not None:
            self._fetch_weights()
            self._generate([Continuation(text="\n", steps=1, temperature=1.0, top_p=1.0, seed=0)])
        else:
            self._embed(_WARM_UP)
        while True:
            car.check_preempted()
            send, self._answers = _fit(self._answers)
            busy = bool(self._answers or self._generations)
            work = self._exchange(ServeExchange(answers=send, wait_s=0 if busy else spec.wait_s))
            if work.closed:
                log.info("lease %s: deployment %s no longer needs this replica", self.grant.lease_id,
                         spec.deployment)
                return
            cancelled = set(work.cancelled)
            for request_id in cancelled:
                self._generations.pop(request_id, None)
            for request in work.requests:
                if request.generate is not None and request.request_id not in cancelled:
                    self._generations[request.request_id] = _Generation.of(request, self._seeds)
            embeds = [r for r in work.requests if r.texts]
            if embeds:
                self._answers += self._run(embeds, cancelled)
            if self._generations:
                self._answers += self._step()

    def _fetch_weights(self) -> None:
        car, weights = self.car, self.spec.weights
        assert weights is not None
        path = car.state_dir.model_path(weights.digest)
        if path.exists():
            car.stats.model_cache_hits += 1
        else:
            car.fetch(weights.digest, weights.size, path)
            car.stats.model_downloads += 1

    def _step(self) -> list[ServeAnswer]:
        """Every generation in progress (up to ``max_batch``) one ``chunk_tokens`` further: the next piece of each
        answer, the last one with its finish reason."""
        active = list(self._generations.values())[: self.spec.max_batch]
        try:
            added = self._generate([g.next_chunk(self.spec.chunk_tokens) for g in active])
        except errors.Preempted:
            raise
        except errors.FleetgridError as exc:
            for g in active:
                self._generations.pop(g.request_id, None)
            return [ServeAnswer(request_id=g.request_id, error=str(exc)[:1000]) for g in active]
        pieces = []
        for g, new in zip(active, added, strict=True):
            piece = g.advance(new)
            pieces.append(piece)
            if piece.finish_reason is not None:
                del self._generations[g.request_id]
                self.served += 1
        return pieces

    def _generate(self, sequences: list[Continuation]) -> list[str]:
        weights = self.spec.weights
        assert weights is not None
        task = GenerateTask(model_name=self.spec.model, weights_path=self.car.state_dir.model_path(weights.digest),
                            weights_digest=weights.digest, sequences=tuple(sequences),
                            result_path=self.folder / "generated.json")
        started = time.perf_counter()
        try:
            self.car.compute(task)
        finally:
            self.compute_s += time.perf_counter() - started
        return json.loads(task.result_path.read_text())

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


@dataclass
class _Generation:
    """One generation in progress on this car: the answer so far continues ``params.prefix`` (what an earlier car
    already sent)."""

    request_id: str
    params: GenerateParams
    answer: str
    seed: int

    @classmethod
    def of(cls, request: ServeRequest, seeds: random.Random) -> _Generation:
        params = request.generate
        assert params is not None
        seed = params.seed if params.seed is not None else seeds.getrandbits(32)
        return cls(request.request_id, params, params.prefix, seed)

    def next_chunk(self, chunk: int) -> Continuation:
        left = self.params.max_tokens - len(self.answer)
        return Continuation(text=self.params.prompt + self.answer, steps=max(0, min(chunk, left)),
                            temperature=self.params.temperature, top_p=self.params.top_p,
                            seed=(self.seed * 1_000_003 + len(self.answer)) % (1 << 62))

    def advance(self, new: str) -> ServeAnswer:
        """The piece ``new`` makes, cut at the first stop sequence; with a finish reason if it ends the answer."""
        offset = len(self.answer)
        finish: Literal["stop", "length"] | None = None
        stops = [s for s in self.params.stop if s]
        if stops:
            seen = self.answer[-max(len(s) for s in stops):] + new  # a stop may straddle two pieces
            cut = min((i for i in (seen.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                new = seen[:cut][len(seen) - len(new):] if cut > len(seen) - len(new) else ""
                finish = "stop"
        self.answer += new
        if finish is None and len(self.answer) >= self.params.max_tokens:
            finish = "length"
        return ServeAnswer(request_id=self.request_id, text=new, offset=offset, finish_reason=finish)
