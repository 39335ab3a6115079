"""The car side of federated training: one :class:`TrainGrant` from the round's global weights to the update the car
sends.

Per job the car keeps the last global version it holds and its uplink error-feedback residual, so a car that already
holds a round's base version downloads nothing, one a version behind downloads only the deltas, one far behind the
compact snapshot when the grant offers one (then it holds the version approximately, and later deltas keep that copy
up to date), and each update carries what compression dropped from the car's previous one. The global's bytes and
the update are artifacts, moved like any workload's (resumable, metered, waiting for an allowed link): the grant
names the snapshots and deltas to fetch; the update is uploaded, then reported by its digest. Training runs in the
worker like an inference unit, so the monitor's kill stops it just as fast; a preempted car sends the steps it did
when the data plan allows, else hands the lease back. The car's examples never leave it: the only bytes it sends are
updates.

Torch is imported only once a car trains, so an agent that only runs inference keeps a torch-free main process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetgrid import errors
from fleetgrid.protocol import (
    FailRequest,
    LeaseAck,
    LeaseRequest,
    ModelDelta,
    TrainGrant,
    UpdateReport,
)
from fleetgrid.workloads.base import CarHandler, save_atomic
from fleetgrid.workloads.federated.task import TrainState, TrainTask, load_train_state

if TYPE_CHECKING:
    from fleetgrid.agent.link import CarLink
    from fleetgrid.workloads.training import (
        ErrorFeedback,
        LocalTrainingConfig,
    )

__all__ = ["HeldGlobal", "TrainHandler"]

log = logging.getLogger(__name__)

_PARAMS, _RECORD, _RESIDUAL = "global.npy", "global.json", "residual.npy"  # in StateDir.train_dir(job)
_FETCHED = "fetched"
"""Where a global's artifacts land in the train dir: a download cut short (a trip, a lost link) resumes from its
partial file there, even under the job's next lease."""


@dataclass(frozen=True)
class HeldGlobal:
    """The last global version of one job that this car holds, exactly or (from a compact snapshot) approximately,
    kept in the job's train dir."""

    version: int
    digest: str
    """``params_digest(params)``; for an exact copy, what a grant's ``model_digest`` is compared with."""
    params: np.ndarray
    """(P,) float32."""
    exact: bool = True
    """False when the params came from a compact snapshot (and any deltas since): the version, approximately."""
    model_digest: str | None = None
    """For an approximate copy, the ``model_digest`` of the version it stands for (None when exact: ``digest``)."""

    @property
    def stands_for(self) -> str:
        """The ``model_digest`` of the version held: a grant naming it needs nothing fetched."""
        return self.digest if self.exact or self.model_digest is None else self.model_digest

    @classmethod
    def load(cls, folder: Path) -> HeldGlobal | None:
        """The version held in ``folder``; None if there is none, or if a crash left the files out of step."""
        import torch

        from fleetgrid.workloads.training import params_digest

        try:
            record = json.loads((folder / _RECORD).read_text(encoding="utf-8"))
            params = np.load(folder / _PARAMS, allow_pickle=False)
            exact = bool(record.get("exact", True))  # records from before compact snapshots are exact
            held = cls(int(record["version"]), str(record["digest"]), params, exact,
                       None if exact else str(record["model_digest"]))
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
        record: dict[str, Any] = {"version": self.version, "digest": self.digest}
        if not self.exact:
            record |= {"exact": False, "model_digest": self.model_digest}
        tmp.write_text(json.dumps(record), encoding="utf-8")
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
            shard_cache=self.folder,
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
        if grant.secagg is not None:
            self._deliver_secure(state)
        else:
            self._deliver(state)

    def hand_back(self, why: str) -> None:
        """The car was preempted (or the agent is stopping): send the steps done as a partial update if the link
        may carry it right now, else give the lease back for another car."""
        car = self.car
        reason = car.handback_reason(why)
        state = None
        if self.global_params is not None:  # training started: the worker may have left weights to report
            state = load_train_state(self.task.result_path) or load_train_state(self.task.checkpoint_path)
        if state is not None and state.steps_done > 0 and self.grant.secagg is None:  # never in clear if secure
            assert self.local is not None  # set before training starts
            log.info("lease %s %s after %d of %d steps; sending the update of those steps", self.grant.lease_id,
                     reason, state.steps_done, self.local.steps)
            if self._send_partial(state):
                return
        log.info("lease %s handed back: %s", self.grant.lease_id, reason)
        car.report_failure(FailRequest(reason=reason[:1000], handback=True, compute_s=self.compute_s,
                                       cellular_bytes=car.traffic.cellular, wifi_bytes=car.traffic.wifi))

    # --- the model down ----------------------------------------------------------------------------------------

    def _base_weights(self) -> np.ndarray:
        """The round's base weights: the car's own copy when it stands for the grant's version, else fetched (only
        the deltas when the car holds an older version and they weigh less than the snapshot it would fetch
        instead: the compact one if offered, else the float32 one) and checked as far as it can be (see
        :meth:`_install`)."""
        car, grant = self.car, self.grant
        held = HeldGlobal.load(self.folder)
        if held is not None and held.stands_for == grant.model_digest:
            car.stats.model_cache_hits += 1
            return held.params
        chain = self._delta_chain(held)
        fresh = None
        if held is not None and chain is not None:
            try:
                fresh = self._install(held, chain)
            except (errors.HashMismatch, errors.NotFound) as exc:
                log.warning("lease %s: deltas from version %d missed (%s); fetching the whole model", grant.lease_id,
                            held.version, exc)
        if fresh is None:
            fresh = self._install(None, None)
        fresh.save(self.folder)
        shutil.rmtree(self.folder / _FETCHED, ignore_errors=True)
        car.stats.model_downloads += 1
        return fresh.params

    def _delta_chain(self, held: HeldGlobal | None) -> list[ModelDelta] | None:
        """The grant's deltas after the held version, if they lead all the way from it to the base version and
        weigh less than the snapshot the car would fetch instead; None if a snapshot is the way."""
        grant = self.grant
        if held is None or held.version >= grant.base_version:
            return None
        chain = [d for d in grant.deltas if d.version > held.version]
        if [d.version for d in chain] != list(range(held.version + 1, grant.base_version + 1)):
            return None
        whole = grant.snapshot.size if grant.compact is None else grant.compact.size
        return chain if sum(d.size for d in chain) < whole else None

    def _install(self, held: HeldGlobal | None, chain: list[ModelDelta] | None) -> HeldGlobal:
        """The base version from the compact snapshot if the grant offers one, else the float32 snapshot (``chain``
        None), or from ``held`` and the deltas after it. The result is checked (HashMismatch) against the grant's
        digest, or the compact snapshot's decoded one; a chain onto an approximate copy has no digest to match,
        so only its contiguity (:meth:`_delta_chain`) and each blob's content digest (:meth:`_fetch`) are."""
        import torch

        from fleetgrid.workloads.training import ModelDownload, apply_download, params_digest

        grant, compact = self.grant, self.grant.compact
        if (held is None or chain is None) and compact is not None:
            download = ModelDownload(from_version=None, version=grant.base_version, digest=compact.params_digest,
                                     full=self._fetch(compact.digest, compact.size), exact=False)
            params = apply_download(None, download)
            return HeldGlobal(grant.base_version, compact.params_digest, params.numpy(), False, grant.model_digest)
        if held is None or chain is None:
            download = ModelDownload(from_version=None, version=grant.base_version, digest=grant.model_digest,
                                     full=self._fetch(grant.snapshot.digest, grant.snapshot.size))
            params = apply_download(None, download)
        else:
            deltas = tuple(self._fetch(d.digest, d.size) for d in chain)
            download = ModelDownload(from_version=held.version, version=grant.base_version,
                                     digest=grant.model_digest, full=None, deltas=deltas, exact=held.exact)
            params = apply_download(torch.from_numpy(held.params), download)
            if not held.exact:
                return HeldGlobal(grant.base_version, params_digest(params), params.numpy(), False,
                                  grant.model_digest)
        return HeldGlobal(grant.base_version, grant.model_digest, params.numpy())

    def _fetch(self, digest: str, size: int) -> bytes:
        """One artifact of the global, through the lease's link: resumed where a cut left it, charged, checked."""
        car = self.car
        dest = self.folder / _FETCHED / digest
        dest.parent.mkdir(exist_ok=True)
        before = car.traffic.cellular + car.traffic.wifi
        car.fetch(digest, size, dest)
        car.stats.train_bytes_down += car.traffic.cellular + car.traffic.wifi - before
        return dest.read_bytes()

    # --- the update up -----------------------------------------------------------------------------------------

    def _deliver(self, state: TrainState) -> None:
        """Upload the finished update and report it. It is worth waiting for: a trip does not stop it, and both
        steps retry through outages until the agent stops; the next work is asked for with the report."""
        car = self.car
        payload, feedback = self._payload(state)
        car.wait_for_link(len(payload), preemptible=False)
        digest = car.upload(payload, until_stopped=True)
        car.stats.train_bytes_up += len(payload)
        follow_on = car.follow_on_request()
        try:
            ack = car.retrying(lambda: self._send_report(state, digest, False, follow_on), until_stopped=True)
        except errors.Conflict as exc:
            self._refused(exc)
            return
        self._accepted(state, feedback, preempted=False)
        self.accepted = True
        car.grant_next(ack.next_lease)

    def _deliver_secure(self, state: TrainState) -> None:
        """Send the finished update masked, through the round's secure aggregation (see :mod:`.secure_car`)."""
        from fleetgrid.workloads.federated.secure_car import SecureDelivery

        assert self.global_params is not None and self.local is not None
        delivery = SecureDelivery(self.car, self.grant, self.local)
        if delivery.run(self.global_params - state.params, state, self.compute_s):
            self.accepted = True
            self.car.stats.train_updates += 1
            self.car.stats.compute_s += self.compute_s
        else:
            self.car.stats.updates_refused += 1

    def _send_partial(self, state: TrainState) -> bool:
        """One try at uploading and reporting ``state``'s update now, if the data plan allows it on the current
        link; False when it was not delivered and the lease should be handed back."""
        assert self.local is not None
        car = self.car
        preempted = state.steps_done < self.local.steps
        payload, feedback = self._payload(state)
        if not car.allows_now(len(payload)):
            return False
        try:
            digest = car.upload(payload, attempts=1)
            car.stats.train_bytes_up += len(payload)
            self._send_report(state, digest, preempted, None)
        except errors.Conflict as exc:
            self._refused(exc)
            return True  # the round is closed: there is nothing left to hand back
        except errors.FleetgridError as exc:
            log.info("partial update of lease %s not delivered (%s)", self.grant.lease_id, exc)
            return False
        self._accepted(state, feedback, preempted=preempted)
        return True

    def _payload(self, state: TrainState) -> tuple[bytes, ErrorFeedback]:
        """The compressed delta ``global - local`` (clipped, and noised for distributed DP, as the grant's
        ``local`` says), and the residual to keep once the coordinator accepts it. Called once per update sent:
        a second noise draw of the same update would average the noise away."""
        import torch

        from fleetgrid.workloads.training import ErrorFeedback
        from fleetgrid.workloads.training.local import private_delta

        assert self.global_params is not None and self.local is not None
        delta = private_delta(torch.from_numpy(self.global_params - state.params), self.local).numpy()  # (P,)
        feedback = ErrorFeedback(delta.size)
        try:
            residual = np.load(self.folder / _RESIDUAL, allow_pickle=False)
        except (OSError, ValueError):
            residual = None
        if residual is not None and residual.shape == feedback.residual.shape:
            feedback.residual = residual.astype(np.float32, copy=False)
        payload, _ = feedback.compress(delta, self.local.compression)
        return payload, feedback

    def _send_report(self, state: TrainState, digest: str, preempted: bool,
                     follow_on: LeaseRequest | None) -> LeaseAck:
        """One try at reporting the uploaded update; its byte counts are the lease's, the upload included."""
        return self.car.client.train_update(self.grant.lease_id, self._report(state, digest, preempted, follow_on))

    def _report(self, state: TrainState, digest: str, preempted: bool,
                follow_on: LeaseRequest | None) -> UpdateReport:
        assert self.local is not None
        loss = state.loss_sum / state.steps_done
        return UpdateReport(
            update=digest, round=self.grant.round, base_version=self.grant.base_version,
            num_examples=state.num_examples, steps_done=state.steps_done,
            steps_planned=self.local.planned_steps(state.num_examples),
            examples_seen=state.examples_seen,
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
        assert self.local is not None
        log.info("lease %s: %s update of %d of %d steps accepted (%.2f s)", self.grant.lease_id,
                 "partial" if preempted else "full", state.steps_done, self.local.steps, self.compute_s)

    def _refused(self, exc: errors.Conflict) -> None:
        self.car.stats.updates_refused += 1
        log.info("lease %s: update refused, its round has closed (%s)", self.grant.lease_id, exc)


def _local_config(data: dict[str, Any]) -> LocalTrainingConfig:
    from fleetgrid.workloads.training import LocalTrainingConfig, config_from_dict

    config: LocalTrainingConfig = config_from_dict(LocalTrainingConfig, data)
    return config
