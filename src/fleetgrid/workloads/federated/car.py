"""The car side of federated training: one :class:`TrainGrant` from the round's global weights to the update the car
sends.

Per job the car keeps the last global version it holds and its uplink error-feedback residual, so a car that
already holds a round's base version downloads nothing, one a version behind downloads only the deltas, and each
update carries what compression dropped from the car's previous one. Training runs in the worker like an inference
unit, so the monitor's kill stops it just as fast; a preempted car sends the steps it did when the data plan allows,
else hands the lease back. The car's examples never leave it: the only bytes it sends are update frames.

Torch is imported only once a car trains, so an agent that only runs inference keeps a torch-free main process.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetgrid import errors
from fleetgrid.protocol import (
    FailRequest,
    LeaseAck,
    LeaseRequest,
    TrainGrant,
    UpdateReport,
    pack_frame,
)
from fleetgrid.workloads.base import CarHandler, save_atomic
from fleetgrid.workloads.federated.task import TrainState, TrainTask, load_train_state

if TYPE_CHECKING:
    from fleetgrid.agent.link import CarLink
    from fleetgrid.workloads.training import (
        ErrorFeedback,
        LocalTrainingConfig,
        ModelDownload,
    )

__all__ = ["HeldGlobal", "TrainHandler"]

log = logging.getLogger(__name__)

_PARAMS, _RECORD, _RESIDUAL = "global.npy", "global.json", "residual.npy"  # in StateDir.train_dir(job)


@dataclass(frozen=True)
class HeldGlobal:
    """The last global version of one job that this car holds, kept in the job's train dir."""

    version: int
    digest: str
    """``params_digest(params)``: what a grant's ``model_digest`` is compared with."""
    params: np.ndarray
    """(P,) float32."""

    @classmethod
    def load(cls, folder: Path) -> HeldGlobal | None:
        """The version held in ``folder``; None if there is none, or if a crash left the files out of step."""
        import torch

        from fleetgrid.workloads.training import params_digest

        try:
            record = json.loads((folder / _RECORD).read_text(encoding="utf-8"))
            params = np.load(folder / _PARAMS, allow_pickle=False)
            held = cls(int(record["version"]), str(record["digest"]), params)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if params.dtype != np.float32 or params.ndim != 1 or params_digest(torch.from_numpy(params)) != held.digest:
            log.warning("the global model held in %s does not match its record; it will be downloaded again", folder)
            return None
        return held

    def save(self, folder: Path) -> None:
        """Weights first, then the record naming them: a crash in between leaves a pair that :meth:`load` refuses."""
        save_atomic(folder / _PARAMS, self.params)
        tmp = folder / (_RECORD + ".tmp")
        tmp.write_text(json.dumps({"version": self.version, "digest": self.digest}), encoding="utf-8")
        os.replace(tmp, folder / _RECORD)


class TrainHandler(CarHandler):
    """One share of a training round on this car: :meth:`run` it, or :meth:`hand_back` it if it cannot finish.

    Transfers go through the lease's :class:`~fleetgrid.agent.link.CarLink`, so training bytes are charged to the
    data plan and wait for an allowed link exactly as inference bytes do.
    """

    grant: TrainGrant

    def __init__(self, grant: TrainGrant, car: CarLink, unit: Path) -> None:
        super().__init__(grant, car, unit)
        self.folder = car.state_dir.train_dir(grant.job_id)
        self.task = TrainTask(
            model_name=grant.model, global_path=self.folder / _PARAMS, model_digest=grant.model_digest,
            data=grant.data, shard=grant.shard, local=grant.local, seed=grant.seed, round=grant.round,
            base_version=grant.base_version, checkpoint_path=unit / "checkpoint.npz", result_path=unit / "result.npz",
        )
        self.local: LocalTrainingConfig | None = None
        self.global_params: np.ndarray | None = None  # (P,) float32, once fetched
        self.compute_s = 0.0
        self.accepted = False  # a full update was accepted: the lease counts as done

    def counts_as_done(self) -> bool:
        return self.accepted

    def run(self) -> None:
        """Fetch the base weights, train in the worker, and send the finished update."""
        car, grant = self.car, self.grant
        car.stats.train_leases += 1
        log.info("lease %s: training job %s round %d from version %d", grant.lease_id, grant.job_id, grant.round,
                 grant.base_version)
        self.local = _local_config(grant.local)  # a bad config fails the lease rather than handing it back
        car.check_preempted()  # the car may have turned ineligible during the long-poll
        self.global_params = self._base_weights()
        started = time.perf_counter()
        try:
            car.compute(self.task)
        finally:
            self.compute_s = time.perf_counter() - started
        state = load_train_state(self.task.result_path)
        if state is None:
            raise errors.FleetgridError(f"the worker finished lease {grant.lease_id} but wrote no result")
        self._deliver(state)

    def hand_back(self, why: str) -> None:
        """The car was preempted (or the agent is stopping): send the steps done as a partial update if the link
        may carry it right now, else give the lease back for another car."""
        car = self.car
        reason = car.handback_reason(why)
        state = None
        if self.global_params is not None:  # training started: the worker may have left weights to report
            state = load_train_state(self.task.result_path) or load_train_state(self.task.checkpoint_path)
        if state is not None and state.steps_done > 0 and self._send_partial(state):
            return
        log.info("lease %s handed back: %s", self.grant.lease_id, reason)
        car.report_failure(FailRequest(reason=reason[:1000], handback=True, compute_s=self.compute_s,
                                       cellular_bytes=car.traffic.cellular, wifi_bytes=car.traffic.wifi))

    # --- the model down ----------------------------------------------------------------------------------------

    def _base_weights(self) -> np.ndarray:
        """The round's base weights: the car's own copy when its digest is the grant's, else downloaded (only the
        deltas when the car holds an older version) and checked against the grant's digest."""
        car, grant = self.car, self.grant
        held = HeldGlobal.load(self.folder)
        if held is not None and held.digest == grant.model_digest:
            car.stats.model_cache_hits += 1
            return held.params
        try:
            fresh = self._download(held)
        except errors.HashMismatch as exc:
            if held is None:
                raise
            log.warning("lease %s: deltas from version %d missed (%s); fetching the whole model", grant.lease_id,
                        held.version, exc)
            fresh = self._download(None)
        if fresh.digest != grant.model_digest:
            raise errors.HashMismatch(
                f"job {grant.job_id} served version {fresh.version} (digest {fresh.digest[:12]}...), but lease "
                f"{grant.lease_id} trains from version {grant.base_version} (digest {grant.model_digest[:12]}...)"
            )
        fresh.save(self.folder)
        car.stats.model_downloads += 1
        return fresh.params

    def _download(self, held: HeldGlobal | None) -> HeldGlobal:
        import torch

        from fleetgrid.workloads.training import apply_download

        car, have = self.car, held.version if held is not None else None
        # Sized as one float32 snapshot (the server decides between that and the deltas; a few deltas of a
        # compressed downlink weigh about as much) so that cellular is not started for more than the cap allows.
        numel = held.params.size if held is not None else _numel(self.grant.model)
        expected = _snapshot_nbytes(numel)

        def get(on_bytes: Callable[[int], None]) -> tuple[dict[str, Any], list[bytes]]:
            def counted(n: int) -> None:
                car.stats.train_bytes_down += n
                on_bytes(n)

            return car.client.train_model(self.grant.job_id, have, on_bytes=counted)

        head, blobs = car.receive(get, lambda: expected)
        download = _model_download(head, blobs)
        params = apply_download(torch.from_numpy(held.params) if held is not None else None, download)
        return HeldGlobal(download.version, download.digest, params.numpy())

    # --- the update up -----------------------------------------------------------------------------------------

    def _deliver(self, state: TrainState) -> None:
        """Send the finished update. It is worth waiting for: a trip does not stop it, and it retries through
        outages until the agent stops; the next work is asked for in the same call."""
        car = self.car
        payload, feedback = self._payload(state)
        car.wait_for_link(self._nbytes(state, payload, False, None), preemptible=False)
        follow_on = car.follow_on_request()
        try:
            ack = car.retrying(lambda: self._post(state, payload, False, follow_on), until_stopped=True)
        except errors.Conflict as exc:
            self._refused(exc)
            return
        self._accepted(state, feedback, preempted=False)
        self.accepted = True
        car.grant_next(ack.next_lease)

    def _send_partial(self, state: TrainState) -> bool:
        """One try at sending ``state``'s update now, if the data plan allows it on the current link; False when
        it was not delivered and the lease should be handed back."""
        assert self.local is not None
        preempted = state.steps_done < self.local.steps
        payload, feedback = self._payload(state)
        if not self.car.allows_now(self._nbytes(state, payload, preempted, None)):
            return False
        try:
            self._post(state, payload, preempted, None)
        except errors.Conflict as exc:
            self._refused(exc)
            return True  # the round is closed: there is nothing left to hand back
        except (errors.TransportError, errors.NotFound, errors.Forbidden) as exc:
            log.info("partial update of lease %s not delivered (%s)", self.grant.lease_id, exc)
            return False
        self._accepted(state, feedback, preempted=preempted)
        return True

    def _payload(self, state: TrainState) -> tuple[bytes, ErrorFeedback]:
        """The compressed delta ``global - local``, and the residual to keep once the coordinator accepts it."""
        from fleetgrid.workloads.training import ErrorFeedback

        assert self.global_params is not None and self.local is not None
        delta = self.global_params - state.params  # (P,) pseudo-gradient
        feedback = ErrorFeedback(delta.size)
        try:
            residual = np.load(self.folder / _RESIDUAL, allow_pickle=False)
        except (OSError, ValueError):
            residual = None
        if residual is not None and residual.shape == feedback.residual.shape:
            feedback.residual = residual.astype(np.float32, copy=False)
        payload, _ = feedback.compress(delta, self.local.compression)
        return payload, feedback

    def _post(self, state: TrainState, payload: bytes, preempted: bool, follow_on: LeaseRequest | None) -> LeaseAck:
        """One try at sending the update. The body is charged first, so the report's byte counts include it (to
        within the few bytes that the counts themselves add)."""
        nbytes = self._nbytes(state, payload, preempted, follow_on)
        self.car.charge(nbytes)  # per attempt: a broken upload spent its bytes too
        self.car.stats.train_bytes_up += nbytes
        report = self._report(state, preempted, follow_on)
        return self.car.client.train_update(self.grant.lease_id, report, payload)

    def _nbytes(self, state: TrainState, payload: bytes, preempted: bool, follow_on: LeaseRequest | None) -> int:
        return len(pack_frame(self._report(state, preempted, follow_on), [payload]))

    def _report(self, state: TrainState, preempted: bool, follow_on: LeaseRequest | None) -> UpdateReport:
        assert self.local is not None
        loss = state.loss_sum / state.steps_done
        return UpdateReport(
            round=self.grant.round, base_version=self.grant.base_version, num_examples=state.num_examples,
            steps_done=state.steps_done, steps_planned=self.local.steps, examples_seen=state.examples_seen,
            train_loss=loss if math.isfinite(loss) else None, preempted=preempted, compute_s=self.compute_s,
            next=follow_on, cellular_bytes=self.car.traffic.cellular, wifi_bytes=self.car.traffic.wifi,
        )

    def _accepted(self, state: TrainState, feedback: ErrorFeedback, *, preempted: bool) -> None:
        """Keep the residual only now: an update that never arrived must not leave its error behind."""
        save_atomic(self.folder / _RESIDUAL, feedback.residual)
        stats = self.car.stats
        if preempted:
            stats.train_partial_updates += 1
        else:
            stats.train_updates += 1
        stats.compute_s += self.compute_s
        log.info("lease %s: %s update of %d steps accepted (%.2f s)", self.grant.lease_id,
                 "partial" if preempted else "full", state.steps_done, self.compute_s)

    def _refused(self, exc: errors.Conflict) -> None:
        self.car.stats.updates_refused += 1
        log.info("lease %s: update refused, its round has closed (%s)", self.grant.lease_id, exc)


def _local_config(data: dict[str, Any]) -> LocalTrainingConfig:
    from fleetgrid.workloads.training import LocalTrainingConfig, config_from_dict

    config: LocalTrainingConfig = config_from_dict(LocalTrainingConfig, data)
    return config


@functools.lru_cache(maxsize=8)
def _numel(model: str) -> int:
    """Parameters of built-in model ``model``: a car that holds no version yet learns a snapshot's size here."""
    from fleetgrid.workloads.training import FlatLayout, build_model

    return FlatLayout.of(build_model(model)).numel


def _snapshot_nbytes(numel: int) -> int:
    from fleetgrid.workloads.training import CompressionConfig, encoded_nbytes

    return encoded_nbytes(numel, CompressionConfig())


def _model_download(head: dict[str, Any], blobs: list[bytes]) -> ModelDownload:
    """The frame of ``GET /v1/train/{job}/model`` as a ModelDownload; TransportError if it is not one."""
    from fleetgrid.workloads.training import ModelDownload

    try:
        full = head["full"]
        if not isinstance(full, bool) or (full and len(blobs) != 1):
            raise ValueError(f"full must be a bool, and a full download one blob; got {full!r}, {len(blobs)} blobs")
        return ModelDownload(
            from_version=head["from_version"], version=int(head["version"]), digest=str(head["digest"]),
            full=blobs[0] if full else None, deltas=() if full else tuple(blobs),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise errors.TransportError(
            f"model download header {head} is not from_version, version, digest and full ({exc!r})"
        ) from exc
