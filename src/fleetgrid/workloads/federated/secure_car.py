"""The car's side of a secure-aggregation round over HTTP: after training, the update is clipped (and noised, for
distributed DP), quantized on the round's grid and masked; the car advertises its keys, deals shares of its secrets
to its neighbours, uploads the masked input as an artifact (like a plain update, charged to the data plan) and
answers the unmasking request. The coordinator never sees the update itself. Every byte of every phase, both
ways, is charged to the data plan and counted in the car's training bytes.

A :class:`Conflict` at any phase means the round went on without this car (it was too slow and counted as dropped)
or closed; the car then stops quietly, as a plain car does when its update is refused.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING

import numpy as np

from fleetgrid import errors
from fleetgrid.protocol import UpdateReport

if TYPE_CHECKING:
    from pydantic import BaseModel

    from fleetgrid.agent.link import CarLink
    from fleetgrid.protocol import TrainGrant
    from fleetgrid.secagg_wire import SecAggDownlink
    from fleetgrid.workloads.federated.task import TrainState
    from fleetgrid.workloads.training import LocalTrainingConfig

__all__ = ["SecureDelivery"]

log = logging.getLogger(__name__)


class SecureDelivery:
    """One lease's trip through the protocol; :meth:`run` returns once the car's part is done or refused."""

    def __init__(self, car: CarLink, grant: TrainGrant, local: LocalTrainingConfig) -> None:
        from fleetgrid.secagg_wire import plan_from_wire
        from fleetgrid.workloads.training.secagg import SecAggCar

        assert grant.secagg is not None
        self.car, self.grant, self.local = car, grant, local
        self.member = grant.secagg.member
        self.plan = plan_from_wire(grant.secagg)
        self.protocol = SecAggCar(self.member, self.plan)
        self.masked = False
        """The masked input was taken: the car's work is in the round's sum (and its lease is paid)."""

    def run(self, delta: np.ndarray, state: TrainState, compute_s: float) -> bool:
        """Send ``delta`` (global - local, (P,) float32) masked; True once the masked input was taken."""
        try:
            self._rounds(delta, state, compute_s)
        except errors.Conflict as exc:
            log.info("lease %s: secure round %s went on without this car (%s)", self.grant.lease_id,
                     self.plan.round_id, exc)
        return self.masked

    def _rounds(self, delta: np.ndarray, state: TrainState, compute_s: float) -> None:
        import torch

        from fleetgrid.secagg_wire import (
            EncryptedShareBody,
            KeyAdvertisementBody,
            MaskedBody,
            ShareBundleBody,
            UnmaskBody,
        )
        from fleetgrid.workloads.training.local import private_delta
        from fleetgrid.workloads.training.secagg import quantize

        me, car = self.protocol, self.car
        clipped = private_delta(torch.from_numpy(np.asarray(delta, dtype=np.float32)), self.local).numpy()
        rng = np.random.default_rng(secrets.randbits(128))  # rounding the coordinator cannot replay
        quantized = quantize(clipped, self.plan.quantization, rng)
        self._send("advertise", KeyAdvertisementBody.of(me.advertise()))
        bundle = me.share_keys(self._fetch("share").neighbour_keys(self.member))
        self._send("share", ShareBundleBody(shares=[EncryptedShareBody.of(s) for s in bundle.shares]))
        me.receive_shares(self._fetch("masked").shares_for(self.member))
        payload = me.masked_input(quantized).payload
        car.wait_for_link(len(payload), preemptible=False)
        digest = car.upload(payload, until_stopped=True)
        car.stats.train_bytes_up += len(payload)
        self._send("masked", MaskedBody(report=self._report(state, digest, compute_s)))
        self.masked = True
        log.info("lease %s: masked input of secure round %s sent", self.grant.lease_id, self.plan.round_id)
        answer = me.unmask(self._fetch("unmask").unmask_request(self.member))
        self._send("unmask", UnmaskBody.of(answer))
        log.info("lease %s: secure round %s unmasking answered", self.grant.lease_id, self.plan.round_id)

    def _send(self, phase: str, body: BaseModel) -> None:
        car = self.car
        nbytes = car.retrying(lambda: car.client.secagg_send(self.grant.lease_id, phase, body), until_stopped=True)
        car.charge(nbytes)
        sent = len(body.model_dump_json().encode())  # what secagg_send posted; the rest of nbytes is the answer
        car.stats.train_bytes_up += sent
        car.stats.train_bytes_down += max(nbytes - sent, 0)

    def _fetch(self, phase: str) -> SecAggDownlink:
        """Ask until the coordinator reached ``phase``, at the pace it says."""
        car = self.car
        while True:
            car.check_preempted()
            down, nbytes = car.retrying(lambda: car.client.secagg_fetch(self.grant.lease_id, phase),
                                        until_stopped=True)
            car.charge(nbytes)
            car.stats.train_bytes_down += nbytes
            if down.ready:
                return down
            car.sleep(max(down.retry_after_s, 0.05))

    def _report(self, state: TrainState, digest: str, compute_s: float) -> UpdateReport:
        loss = state.loss_sum / state.steps_done if state.steps_done else None
        return UpdateReport(
            update=digest, round=self.grant.round, base_version=self.grant.base_version,
            num_examples=state.num_examples, steps_done=state.steps_done,
            steps_planned=self.local.planned_steps(state.num_examples),
            examples_seen=state.examples_seen, train_loss=loss if loss is not None and np.isfinite(loss) else None,
            compute_s=compute_s, cellular_bytes=self.car.traffic.cellular, wifi_bytes=self.car.traffic.wifi,
        )
