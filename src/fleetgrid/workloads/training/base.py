"""The base of every federated strategy: one abstract class with a few small hooks and one round loop, free of
any transport.

:class:`Strategy` owns the global model (a flat float32 vector), validates every report before it can touch it,
publishes each new version as a compressed delta, and checkpoints to safetensors bytes; the concrete strategies
in :mod:`strategies` each override a hook or two. The transport is the :class:`Fleet` protocol: the in-process
simulation (:mod:`simulate`) or the coordinator's leases.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from safetensors.torch import save as st_save

from fleetgrid.errors import Conflict, InvalidInput
from fleetgrid.workloads.training.aggregate import client_weight, clip_to_norm, schedule_scale
from fleetgrid.workloads.training.compression import (
    CompressionConfig,
    ErrorFeedback,
    decode,
    encode,
)
from fleetgrid.workloads.training.config import LocalTrainingConfig, StrategyConfig, local_config_at, to_dict
from fleetgrid.workloads.training.messages import (
    ClientUpdate,
    ModelDownload,
    TrainInstructions,
    params_digest,
)
from fleetgrid.workloads.training.privacy import (
    calibrate_noise_multiplier,
    car_noise_std,
    epsilon_spent,
    private_combine,
)
from fleetgrid.workloads.training.reputation import reputation_combine
from fleetgrid.workloads.training.robust import check_examples, robust_combine
from fleetgrid.workloads.training.secure import SecureFleet, SecureSum, secure_mean

__all__ = ["COMPACT_CHUNK", "AcceptedUpdate", "EvaluateFn", "Fleet", "Strategy", "read_metadata"]

EvaluateFn = Callable[[torch.Tensor], Mapping[str, float]]

COMPACT_CHUNK = 256
"""Values per scale in a compact snapshot: a model's flat vector runs through layers of different magnitudes, so a
scale per 256 values (1.6% more bytes at 8 bits) keeps each layer's rounding nearer its own size."""


class Fleet(Protocol):
    """The transport a round loop drives: who is free, hand out work, wait for reports, call work off."""

    def now(self) -> float:
        """Seconds on the fleet's clock."""

    def idle_clients(self) -> list[str]:
        """Cars eligible for new work now, in a stable order."""

    def busy_count(self) -> int:
        """Cars holding work that has not reported yet."""

    def dispatch(self, assignments: Mapping[str, TrainInstructions], strategy: Strategy) -> None:
        """Start each car on its instructions; the car fetches its model with ``strategy.download``."""

    def next_update(self, deadline: float) -> ClientUpdate | None:
        """The next report to arrive no later than ``deadline``, or None if none will."""

    def cancel_outstanding(self) -> None:
        """Revoke all work not yet reported (its leases close; late reports will be refused)."""

    def max_examples(self, client_id: str) -> int | None:
        """The most examples this car's data can hold (a report claiming more is refused), None if unknown."""


@dataclass(frozen=True)
class AcceptedUpdate:
    """A report that passed validation: its decoded delta and the weight the strategy gave it."""

    update: ClientUpdate
    delta: torch.Tensor
    weight: float
    staleness: int


class Strategy(ABC):
    """A federated optimizer over a flat float32 global model. Hooks: ``configure_round``, ``client_weight``,
    ``server_step``, ``evaluate``; the rest (validation, versioning, downloads, checkpoints, the loop) is shared.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[StrategyConfig]]
    closes_rounds: ClassVar[bool] = True
    """Synchronous strategies revoke stragglers at round end and refuse reports for any other round."""
    keep_versions: ClassVar[int] = 16
    """How many recent downlink deltas are kept, so a car a few versions behind downloads deltas only."""

    def __init__(self, initial_params: torch.Tensor, config: StrategyConfig) -> None:
        if not isinstance(config, self.config_class):
            raise InvalidInput(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        if (
            not isinstance(initial_params, torch.Tensor)
            or initial_params.dtype != torch.float32
            or initial_params.dim() != 1
            or not torch.isfinite(initial_params).all()
        ):
            raise InvalidInput("initial params must be a finite 1-D float32 tensor (FlatLayout.flatten of the model)")
        self.config = config
        self.params = initial_params.detach().clone()
        self.version = 0
        self.round = 0
        self.planned_versions: int | None = None
        """The last version of the run in progress (``Strategy.run``'s ``num_versions``): the server lr's horizon."""
        self._reopened = False  # the next attempt continues round ``self.round`` (see reopen_round)
        self.server_state: dict[str, torch.Tensor] = {}
        self.reputation: dict[str, float] = {}
        """Per car id, the agreement score of ``robust.reputation`` (see :mod:`reputation`); empty when it is off."""
        self.history: list[dict[str, Any]] = []
        self.refused = 0
        """Reports refused as malformed or hostile (InvalidInput) since the last version."""
        self.noise_multiplier: float | None = config.privacy.noise_multiplier
        """DP's sigma; calibrated from ``privacy.target_epsilon`` over the planned versions when ``run`` starts."""
        self.target_prior: tuple[float, ...] | None = None
        """The class shares of the job's held-out targets, set by whoever runs the strategy: the
        ``logit_target`` of every car's lease when ``local.logit_adjustment`` is on (:func:`~local.heldout_prior`)."""
        self.stopped_on_budget = False
        """The run ended early because another round would have spent more than ``privacy.epsilon_budget``."""
        self._downlink = ErrorFeedback(self.numel)
        self._deltas: dict[int, bytes] = {}  # version v -> encoded delta from v - 1
        self._snapshots: dict[int, tuple[torch.Tensor, str]] = {}  # recent versions v -> (params, digest)
        self._compact: tuple[int, bytes, str] | None = None  # (version, blob, digest of its decoded params)
        self._digest = params_digest(self.params)
        self._rng = random.Random(config.seed)
        self.lock = threading.RLock()
        """Held while the round loop changes the global; a transport validating reports or serving downloads
        from other threads takes it too."""

    @property
    def numel(self) -> int:
        return int(self.params.numel())

    @property
    def digest(self) -> str:
        return self._digest

    # ------------------------------------------------------------------------------------------------- hooks

    def configure_round(self, idle_clients: Sequence[str], busy: int) -> list[str]:
        """Which idle cars get work now. Default: random idle cars, up to the over-selected cohort size less the
        cars already working on (or done with) this round."""
        k = min(self.config.rounds.cohort_size - busy, len(idle_clients))
        return self._rng.sample(list(idle_clients), k) if k > 0 else []

    def client_weight(self, update: ClientUpdate, staleness: int) -> float:
        """A report's aggregation weight. Default: examples, times the share of planned steps (or 0 if dropped)."""
        return client_weight(
            num_examples=update.num_examples,
            steps_done=update.steps_done,
            steps_planned=update.steps_planned,
            partial_work=self.config.rounds.partial_work,
        )

    @abstractmethod
    def server_step(self, pseudo_grad: torch.Tensor) -> torch.Tensor:
        """The new global params from the weighted-mean delta ``global - local``; may update ``server_state``."""

    def server_lr_scale(self) -> float:
        """The factor on the server (outer) lr for the step that makes the next version (warm-up, then decay)."""
        floor = self.config.server_lr_floor
        return schedule_scale(self.version, self.planned_versions if floor is not None else None,
                              warmup=self.config.server_warmup_versions, floor=floor or 0.0)

    def round_complete(self, accepted: Sequence[AcceptedUpdate]) -> bool:
        """Whether to stop waiting and aggregate. Default: enough usable reports."""
        return sum(a.weight > 0 for a in accepted) >= self.config.rounds.clients_per_round

    def evaluate(self, evaluate_fn: EvaluateFn | None) -> dict[str, float]:
        """Held-out metrics of the current global."""
        return dict(evaluate_fn(self.params)) if evaluate_fn is not None else {}

    # ------------------------------------------------------------------------------------- work and reports

    def instructions(self, client_id: str) -> TrainInstructions:
        local = self._car_clipping(local_config_at(self.config, self.version))
        if local.logit_adjustment > 0 and self.target_prior is not None:
            local = dataclasses.replace(local, logit_target=self.target_prior)
        return TrainInstructions(
            round=self.round,
            base_version=self.version,
            model_digest=self._digest,
            local=local,
            seed=_stable_seed(self.config.seed, self.round, client_id),
        )

    def _car_clipping(self, local: LocalTrainingConfig) -> LocalTrainingConfig:
        """``local`` with the clip (and, for distributed DP, the noise) each car applies to its own update: the
        privacy clip, or under secure aggregation without DP the fixed norm bound."""
        privacy, robust = self.config.privacy, self.config.robust
        if privacy.enabled:
            noise = 0.0
            if privacy.mode == "distributed":
                assert privacy.clip is not None and self.noise_multiplier is not None  # PrivacyConfig, run()
                noise = car_noise_std(noise_multiplier=self.noise_multiplier, clip=privacy.clip,
                                      cars=self.config.rounds.clients_per_round)
            return dataclasses.replace(local, update_clip=privacy.clip, update_noise_std=noise)
        if self.config.secure_aggregation and robust.norm_bound == "fixed":
            return dataclasses.replace(local, update_clip=robust.max_norm)
        return local

    # ------------------------------------------------------------------------------------------ privacy

    @property
    def sampling_rate(self) -> float:
        return self.config.privacy.sampling_rate(self.config.rounds.cohort_size)

    def epsilon(self, extra_rounds: int = 0) -> float:
        """Epsilon spent (at ``privacy.delta``) by the versions so far, plus ``extra_rounds`` more at sigma."""
        p = self.config.privacy
        sigmas = [float(r["dp_sigma"]) for r in self.history if "dp_sigma" in r]
        sigmas += [self.noise_multiplier or 0.0] * extra_rounds
        return epsilon_spent(sigmas, q=self.sampling_rate, delta=p.delta, accountant=p.accountant)

    def privacy_report(self) -> dict[str, Any] | None:
        """The job's privacy so far (None when DP is off): epsilon at delta, the budget, sigma, clip, mode."""
        p = self.config.privacy
        if not p.enabled:
            return None
        # each version's record holds its epsilon: no accountant run here (progress is read under the lock)
        spent = next((float(r["epsilon"]) for r in reversed(self.history) if "epsilon" in r), 0.0)
        return {"mode": p.mode, "epsilon": spent, "delta": p.delta, "epsilon_budget": p.epsilon_budget,
                "noise_multiplier": self.noise_multiplier, "clip": p.clip, "accountant": p.accountant,
                "sampling_rate": self.sampling_rate, "stopped_on_budget": self.stopped_on_budget}

    def _budget_spent(self) -> bool:
        """Whether one more round would take epsilon past ``privacy.epsilon_budget``."""
        budget = self.config.privacy.epsilon_budget
        return budget is not None and self.epsilon(extra_rounds=1) > budget

    def accept(self, update: ClientUpdate, *, max_examples: int | None = None) -> AcceptedUpdate:
        """Validate a report without touching the global. Raises Conflict for a closed round or a too-stale base,
        InvalidInput (counted in ``refused``) for anything malformed (wrong shape, dtype, non-finite values,
        impossible counts, more examples than ``max_examples``, what the car's data can hold)."""
        try:
            return self._validate(update, max_examples)
        except InvalidInput:
            with self.lock:  # the coordinator's routes validate reports from other threads
                self.refused += 1
            raise

    def _validate(self, update: ClientUpdate, max_examples: int | None) -> AcceptedUpdate:
        staleness = self.version - update.base_version
        if self.closes_rounds and (update.round != self.round or staleness != 0):
            raise Conflict(
                f"update from {update.client_id!r} is for round {update.round} (version "
                f"{update.base_version}); only round {self.round} (version {self.version}) is open"
            )
        if not 0 <= staleness <= self.max_staleness:
            raise Conflict(
                f"update from {update.client_id!r} trained on version {update.base_version}, "
                f"{staleness} behind version {self.version}; at most {self.max_staleness} is accepted"
            )
        if update.num_examples < 1 or update.examples_seen < 0:
            raise InvalidInput(
                f"update from {update.client_id!r} reports num_examples={update.num_examples}, "
                f"examples_seen={update.examples_seen}; need >= 1 and >= 0"
            )
        check_examples(update, max_examples)
        delta = decode(update.payload)  # raises InvalidInput on a malformed or non-finite payload
        if delta.shape != (self.numel,):
            raise InvalidInput(
                f"update from {update.client_id!r} has shape {delta.shape}; the model needs ({self.numel},)"
            )
        weight = self.client_weight(update, staleness)
        return AcceptedUpdate(update, torch.from_numpy(np.array(delta, dtype=np.float32)), weight, staleness)

    @property
    def max_staleness(self) -> int:
        return 0

    def aggregate(self, accepted: Sequence[AcceptedUpdate]) -> dict[str, Any]:
        """Fold validated reports into a new global version, combined as ``config.robust`` says; returns a summary
        (``partial``: reports of work cut short, e.g. by a preemption; ``cars``: how many cars the used reports
        came from; ``clipped``: deltas whose norm was bounded; ``refused``: reports refused since the last
        version). With no usable report (all weights 0) it raises InvalidInput and leaves everything as it was."""
        usable = [a for a in accepted if a.weight > 0]
        if not usable:
            raise InvalidInput(f"round {self.round}: no usable update to aggregate ({len(accepted)} all weigh 0)")
        privacy = self.config.privacy
        if privacy.enabled:
            assert self.noise_multiplier is not None  # given, or calibrated when run() started
            bounded = [a.delta for a in usable]
            if self.config.robust.norm_bound == "fixed":  # a data-independent bound below the clip keeps the analysis
                assert self.config.robust.max_norm is not None
                bounded = [clip_to_norm(d, self.config.robust.max_norm)[0] for d in bounded]
            pseudo_grad, robust = private_combine(bounded, privacy, noise_multiplier=self.noise_multiplier,
                                                  expected_cars=self.config.rounds.clients_per_round)
        elif self.config.robust.reputation:
            pseudo_grad, robust, self.reputation = reputation_combine(
                [a.delta for a in usable], [a.weight for a in usable], [a.update.client_id for a in usable],
                self.reputation, self.config.robust)
        else:
            pseudo_grad, robust = robust_combine([a.delta for a in usable], [a.weight for a in usable],
                                                 self.config.robust)
        target = self.server_step(pseudo_grad)
        self._publish(target)
        refused, self.refused = self.refused, 0
        return {
            "reports": len(accepted),
            "partial": sum(a.update.steps_done < a.update.steps_planned for a in accepted),
            "cars": len({a.update.client_id for a in usable}),
            "used": len(usable),
            "steps": sum(a.update.steps_done for a in usable),
            "mean_staleness": sum(a.staleness for a in usable) / len(usable),
            "pseudo_grad_norm": float(pseudo_grad.norm()),
            "refused": refused,
            **robust,
        }

    def aggregate_sum(self, secure: SecureSum) -> dict[str, Any]:
        """Fold a secure round's exact sum into a new global version (see :func:`secure.secure_mean`)."""
        pseudo_grad, metrics = secure_mean(self.config, secure, noise_multiplier=self.noise_multiplier)
        self._publish(self.server_step(pseudo_grad))
        refused, self.refused = self.refused, 0
        return {"reports": secure.cars, "partial": 0, "cars": secure.cars, "used": secure.cars,
                "steps": secure.steps, "mean_staleness": 0.0, "pseudo_grad_norm": float(pseudo_grad.norm()),
                "refused": refused, **metrics}

    def _publish(self, target: torch.Tensor) -> None:
        """Make ``target`` (as exactly as the downlink codec carries it) the next version."""
        blob, sent = self._downlink.compress(target - self.params, self.config.downlink)
        if not self.closes_rounds:  # cars of an asynchronous strategy may still be sent the version they were given
            self._snapshots[self.version] = (self.params, self._digest)
            self._snapshots.pop(self.version - self.max_staleness - 1, None)
        self.params = self.params + torch.from_numpy(sent.reshape(-1))
        self.version += 1
        self._digest = params_digest(self.params)
        self._deltas[self.version] = blob
        self._deltas.pop(self.version - self.keep_versions, None)

    def downlink_delta(self, version: int) -> bytes | None:
        """The encoded delta that took version ``version - 1`` to ``version``, while it is among the last
        ``keep_versions`` (None for older ones, for version 0, and for those made before a restart)."""
        return self._deltas.get(version)

    def snapshot(self) -> bytes:
        """The current version whole and exact: float32 values, losslessly encoded."""
        return encode(self.params, CompressionConfig())

    def compact_snapshot(self) -> tuple[bytes, str] | None:
        """The current version as ``config.snapshot_bits`` quantize it, and ``params_digest`` of what a car decodes
        from it; None when the option is off. Made once per version."""
        bits = self.config.snapshot_bits
        if bits is None:
            return None
        if self._compact is None or self._compact[0] != self.version:
            blob = encode(self.params, CompressionConfig(bits=bits, chunk_size=COMPACT_CHUNK))
            decoded = torch.from_numpy(decode(blob).reshape(-1).copy())
            self._compact = (self.version, blob, params_digest(decoded))
        return self._compact[1], self._compact[2]

    def download(self, held_version: int | None, version: int | None = None, *,
                 held_exact: bool = True) -> ModelDownload:
        """What a car holding ``held_version`` (exactly, or approximately after a compact snapshot:
        ``held_exact``) must fetch for ``version`` (default: the current one), the cheapest of: nothing, the
        deltas from its version (exact, so an approximate copy stays as close), the compact snapshot (the current
        version only, with ``config.snapshot_bits``), else the float32 snapshot. An asynchronous strategy also
        serves the few versions its cars may still train on; an older one raises Conflict."""
        target = self.version if version is None else version
        if target == self.version:
            params, digest = self.params, self._digest
        elif target in self._snapshots:
            params, digest = self._snapshots[target]
        else:
            raise Conflict(f"global version {target} is no longer served (current: {self.version}); lease new work")
        if held_version == target:
            return ModelDownload(from_version=held_version, version=target, digest=digest, full=None,
                                 exact=held_exact)
        compact = self.compact_snapshot() if target == self.version else None
        whole = 4 * self.numel if compact is None else len(compact[0])
        if (
            held_version is not None
            and 0 <= held_version < target
            and all(v in self._deltas for v in range(held_version + 1, target + 1))
        ):
            deltas = tuple(self._deltas[v] for v in range(held_version + 1, target + 1))
            if sum(map(len, deltas)) < whole:
                return ModelDownload(from_version=held_version, version=target, digest=digest, full=None,
                                     deltas=deltas, exact=held_exact)
        if compact is not None:
            return ModelDownload(from_version=None, version=target, digest=compact[1], full=compact[0], exact=False)
        return ModelDownload(from_version=None, version=target, digest=digest,
                             full=encode(params, CompressionConfig()))

    # -------------------------------------------------------------------------------------------- the loop

    def run(
        self,
        fleet: Fleet,
        num_versions: int,
        *,
        evaluate_fn: EvaluateFn | None = None,
        on_version: Callable[[Strategy], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Drive rounds until the global reaches ``num_versions``; after each, evaluate and call ``on_version``
        (the place to checkpoint). A round that ends with fewer than ``min_reports`` usable reports is
        abandoned, the global untouched, and retried up to ``max_retries`` times before Conflict is raised (so is
        one whose sum fails its norm check). A private run stops early, ``stopped_on_budget`` set, before a round
        that would spend more than ``privacy.epsilon_budget``."""
        self.planned_versions = num_versions
        privacy = self.config.privacy
        if privacy.target_epsilon is not None and self.noise_multiplier is None:
            self.noise_multiplier = calibrate_noise_multiplier(
                privacy.target_epsilon, rounds=num_versions, q=self.sampling_rate, delta=privacy.delta,
                accountant=privacy.accountant)
        if not self.history:
            self.history.append({"version": 0, **self.evaluate(evaluate_fn)})
        rc = self.config.rounds
        while self.version < num_versions:
            if privacy.enabled and self._budget_spent():
                self.stopped_on_budget = True
                break
            for attempt in range(rc.max_retries + 1):  # noqa: B007 (read after the loop: the attempt that succeeded)
                with self.lock:
                    if self._reopened:
                        self._reopened = False
                    else:
                        self.round += 1
                self._dispatch(fleet)
                deadline = fleet.now() + rc.deadline_s
                accepted: list[AcceptedUpdate] = []
                rejected = 0
                if self.config.secure_aggregation and isinstance(fleet, SecureFleet):  # only the sum is seen
                    secure = fleet.secure_round(self, deadline, lambda: self._dispatch(fleet))
                    if secure is not None and secure.cars >= rc.min_reports:
                        try:
                            with self.lock:
                                summary = self.aggregate_sum(secure)
                        except InvalidInput:  # longer than the clips allow: some car cheated; the round is void
                            continue
                        break
                    continue
                poll_s = getattr(fleet, "poll_s", None)
                while not self.round_complete(accepted):
                    if poll_s is None:
                        update = fleet.next_update(deadline)
                    else:  # a live fleet: cars turn up mid-round, so top the cohort up between short waits
                        update = fleet.next_update(min(deadline, fleet.now() + poll_s))
                        if update is None and fleet.now() < deadline:
                            self._dispatch(fleet, reported=len(accepted) + rejected)
                            continue
                    if update is None:
                        break
                    try:
                        accepted.append(self.accept(update, max_examples=fleet.max_examples(update.client_id)))
                    except (InvalidInput, Conflict):
                        rejected += 1
                    if not self.closes_rounds:  # asynchronous: a car that reported gets new work at once
                        self._dispatch(fleet)
                    elif poll_s is not None and not self.round_complete(accepted):  # a complete round wants no more
                        self._dispatch(fleet, reported=len(accepted) + rejected)
                if self.closes_rounds:
                    fleet.cancel_outstanding()
                if sum(a.weight > 0 for a in accepted) >= rc.min_reports:
                    try:
                        with self.lock:
                            summary = self.aggregate(accepted)
                        break
                    except InvalidInput:  # a sum that fails its check (some car did not clip): retry the round
                        with self.lock:
                            self.refused += len(accepted)
            else:
                raise Conflict(
                    f"version {self.version + 1} abandoned {rc.max_retries + 1} times: fewer than "
                    f"min_reports={rc.min_reports} usable reports by each deadline, or a sum of updates that failed "
                    "its norm check"
                )
            record = {
                "version": self.version,
                "round": self.round,
                "attempts": attempt + 1,
                "rejected": rejected,
                "time": fleet.now(),
                **summary,
                **self.evaluate(evaluate_fn),
            }
            if privacy.enabled:
                record["epsilon"] = epsilon_spent(
                    [float(r["dp_sigma"]) for r in [*self.history, record] if "dp_sigma" in r],
                    q=self.sampling_rate, delta=privacy.delta, accountant=privacy.accountant)
            with self.lock:
                self.history.append(record)
            if on_version is not None:
                on_version(self)
        return self.history

    def reopen_round(self, round_: int) -> None:
        """Continue round attempt ``round_`` (after a restart, the one the acknowledged reports and the shares
        still out on cars quote) instead of starting a new one: reports for it are accepted from now on."""
        with self.lock:
            self.round, self._reopened = round_, True

    def _dispatch(self, fleet: Fleet, *, reported: int = 0) -> None:
        """Offer work to the cars ``configure_round`` picks; ``reported`` cars of this round already count as
        busy, so a top-up never asks more cars than the cohort."""
        chosen = self.configure_round(fleet.idle_clients(), fleet.busy_count() + reported)
        if chosen:
            fleet.dispatch({c: self.instructions(c) for c in chosen}, self)

    # ------------------------------------------------------------------------------------------- checkpoint

    def state_bytes(self, extra: Mapping[str, Any] | None = None) -> bytes:
        """Everything needed to resume: global params, server optimizer state, downlink residual, counters,
        config, metric history and per-car reputation, as one safetensors blob (metadata holds the JSON; the
        reputation is keyed by car id, which a tensor name in ``server_state`` would carry less plainly)."""
        tensors = {"params": self.params.contiguous(), "downlink_residual": torch.from_numpy(self._downlink.residual)}
        tensors |= {f"server.{k}": v.contiguous() for k, v in self.server_state.items()}
        meta = {
            "strategy": self.name,
            "version": self.version,
            "round": self.round,
            "config": to_dict(self.config),
            "history": self.history,
            "rng": _rng_state_to_json(self._rng.getstate()),
            "noise_multiplier": self.noise_multiplier,
            "stopped_on_budget": self.stopped_on_budget,
            "privacy": self.privacy_report(),
            **({"reputation": self.reputation} if self.reputation else {}),  # absent when off: same bytes as before
            **(extra or {}),
        }
        # One metadata key holding sorted JSON: safetensors orders several keys arbitrarily, and a checkpoint
        # should hash the same for the same state (artifacts are deduplicated by hash).
        return st_save(tensors, metadata={"fleetgrid": json.dumps(meta, sort_keys=True)})


def _stable_seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") & 0x7FFFFFFF


def _rng_state_to_json(state: tuple) -> list:
    return [state[0], list(state[1]), state[2]]



def read_metadata(blob: bytes) -> dict[str, Any]:
    """The JSON fleetgrid stores in a safetensors file's metadata (a checkpoint's or a final model's), read from
    the header alone; KeyError / ValueError if there is none."""
    header_len = int.from_bytes(blob[:8], "little")  # safetensors: u64 header length, then the JSON header
    return json.loads(json.loads(blob[8 : 8 + header_len])["__metadata__"]["fleetgrid"])

