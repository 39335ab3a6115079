"""The car side of an evaluation unit: fetch the weights (cached by digest), score the car's shard in the worker,
and send the four numbers back inline. No example leaves the car."""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fleetgrid.protocol import CompleteRequest, FailRequest, LeaseAck, WorkGrant
from fleetgrid.workloads.base import CarHandler
from fleetgrid.workloads.evaluation.messages import EvalGrant
from fleetgrid.workloads.evaluation.task import EvalTask

if TYPE_CHECKING:
    from fleetgrid.agent.link import CarLink

__all__ = ["EvalHandler"]

log = logging.getLogger(__name__)


class EvalHandler(CarHandler):
    grant: WorkGrant

    def __init__(self, grant: WorkGrant, car: CarLink, folder: Path) -> None:
        super().__init__(grant, car, folder)
        self.spec = EvalGrant.model_validate(grant.spec)
        self.compute_s = 0.0
        self.task = EvalTask(
            model_name=self.spec.model, weights_path=car.state_dir.model_path(self.spec.weights.digest),
            weights_digest=self.spec.weights.digest, data=self.spec.data, shard=self.spec.shard,
            max_examples=self.spec.max_examples, result_path=folder / "metrics.json",
        )

    def run(self) -> None:
        car, spec = self.car, self.spec
        log.info("lease %s: evaluating %s on shard %d", self.grant.lease_id, spec.model, spec.shard)
        car.check_preempted()
        if self.task.weights_path.exists():
            car.stats.model_cache_hits += 1
        else:
            car.fetch(spec.weights.digest, spec.weights.size, self.task.weights_path)
            car.stats.model_downloads += 1
        started = time.perf_counter()
        try:
            car.compute(self.task)
        finally:
            self.compute_s = time.perf_counter() - started
        self._deliver(self.task.result_path.read_bytes())

    def _deliver(self, report: bytes) -> None:
        car = self.car
        car.wait_for_link(len(report), preemptible=False)
        inline = base64.b64encode(report).decode()
        digest = hashlib.sha256(report).hexdigest()
        follow_on = car.follow_on_request()

        def once() -> LeaseAck:
            car.charge(len(inline))
            return car.client.complete(self.grant.lease_id, CompleteRequest(
                result=digest, inline=inline, next=follow_on, compute_s=self.compute_s,
                cellular_bytes=car.traffic.cellular, wifi_bytes=car.traffic.wifi))

        car.grant_next(car.retrying(once, until_stopped=True).next_lease)
        car.stats.compute_s += self.compute_s
        log.info("lease %s: metrics of shard %d delivered", self.grant.lease_id, self.spec.shard)

    def hand_back(self, why: str) -> None:
        car = self.car
        reason = car.handback_reason(why)
        car.report_failure(FailRequest(reason=reason[:1000], handback=True, compute_s=self.compute_s,
                                       cellular_bytes=car.traffic.cellular, wifi_bytes=car.traffic.wifi))
