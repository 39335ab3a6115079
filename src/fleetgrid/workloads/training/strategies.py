"""The federated strategies, each the :class:`~base.Strategy` round loop with one hook or two overridden.

:class:`FedAvg` steps the server by the averaged delta, :class:`FedAdam` swaps that step for Adam or Yogi,
:class:`DiLoCo` for outer Nesterov momentum, and :class:`FedBuff` keeps cars busy and weighs stale updates down.
Strategies are looked up by name here and resumed from their checkpoints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from safetensors.torch import load as st_load

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.aggregate import (
    adaptive_step,
    nesterov_step,
    sgd_step,
    staleness_weight,
    weighted_mean,
)
from fleetgrid.workloads.training.base import AcceptedUpdate, Fleet, Strategy, read_metadata
from fleetgrid.workloads.training.compression import decode, encode
from fleetgrid.workloads.training.config import (
    DiLoCoConfig,
    FedAdamConfig,
    FedAvgConfig,
    FedBuffConfig,
    StrategyConfig,
    config_from_dict,
)
from fleetgrid.workloads.training.messages import ClientUpdate, ModelDownload, TrainInstructions, params_digest

__all__ = [
    "STRATEGIES",
    "AcceptedUpdate",
    "DiLoCo",
    "FedAdam",
    "FedAvg",
    "FedBuff",
    "Fleet",
    "Strategy",
    "make_strategy",
    "read_metadata",
    "strategy_from_state_bytes",
]

class FedAvg(Strategy):
    """McMahan et al.: the new global is the example-weighted mean of local models (server SGD, lr 1)."""

    name = "fedavg"
    config_class = FedAvgConfig
    config: FedAvgConfig  # Strategy.__init__ refuses any other config class

    def server_step(self, pseudo_grad: torch.Tensor) -> torch.Tensor:
        return sgd_step(self.params, pseudo_grad, self.config.server_lr * self.server_lr_scale())


class DiLoCo(Strategy):
    """Douillard et al.: cars run H AdamW steps; the server treats the mean delta as a gradient for outer SGD
    with Nesterov momentum. With ``drift_correction`` it also keeps the fleet's control variate ``c``, the mean of
    the cars' reported mean gradients (``server_state['control']``, so checkpoints carry it), and sends it down
    with each new version."""

    name = "diloco"
    config_class = DiLoCoConfig
    config: DiLoCoConfig  # Strategy.__init__ refuses any other config class
    _control_blob: tuple[int, bytes] | None = None  # (version, encoded c): encoded once per version

    def server_step(self, pseudo_grad: torch.Tensor) -> torch.Tensor:
        buf = self.server_state.get("momentum", torch.zeros_like(self.params))
        target, self.server_state["momentum"] = nesterov_step(
            self.params, pseudo_grad, buf, self.config.outer_lr * self.server_lr_scale(), self.config.outer_momentum
        )
        return target

    def instructions(self, client_id: str) -> TrainInstructions:
        ins = super().instructions(client_id)
        if not self.config.drift_correction:
            return ins
        return dataclasses.replace(ins, local=dataclasses.replace(ins.local,
                                                                  drift_correction=self.config.drift_correction))

    def _validate(self, update: ClientUpdate, max_examples: int | None) -> AcceptedUpdate:
        accepted = super()._validate(update, max_examples)
        if self.config.drift_correction:
            _control_of(update, self.numel)  # raises InvalidInput on a missing or malformed one
        return accepted

    def aggregate(self, accepted: Sequence[AcceptedUpdate]) -> dict[str, Any]:
        summary = super().aggregate(accepted)
        if self.config.drift_correction:  # the same reports and weights as the aggregate just used
            usable = [a for a in accepted if a.weight > 0]
            self.server_state["control"] = weighted_mean([_control_of(a.update, self.numel) for a in usable],
                                                         [a.weight for a in usable])
        return summary

    def download(self, held_version: int | None, version: int | None = None, *,
                 held_exact: bool = True) -> ModelDownload:
        out = super().download(held_version, version, held_exact=held_exact)
        control = self.server_state.get("control")
        if not self.config.drift_correction or control is None or (out.full is None and not out.deltas):
            return out  # off, no round yet, or the car already holds this version and its c
        if self._control_blob is None or self._control_blob[0] != self.version:
            self._control_blob = (self.version, encode(control, self.config.downlink))
        return dataclasses.replace(out, control=self._control_blob[1])


def _control_of(update: ClientUpdate, numel: int) -> torch.Tensor:
    """A drift-corrected report's mean gradient, decoded (not clipped here: the car's grad_clip bounds each step)."""
    if update.control is None:
        raise InvalidInput(f"update from {update.client_id!r} has no control (its mean gradient), which "
                           "drift_correction needs; the car must run with the lease's drift_correction")
    control = decode(update.control)  # raises InvalidInput on a malformed or non-finite payload
    if control.shape != (numel,):
        raise InvalidInput(f"control from {update.client_id!r} has shape {control.shape}; the model needs ({numel},)")
    return torch.from_numpy(control.astype("float32", copy=True))


class FedBuff(FedAvg):
    """Nguyen et al.: asynchronous buffered aggregation. ``concurrency`` cars always train; every K arriving
    updates make a new version; an update s versions stale weighs (1 + s) ** -exponent of a fresh one."""

    name = "fedbuff"
    config_class = FedBuffConfig
    config: FedBuffConfig  # Strategy.__init__ refuses any other config class
    closes_rounds = False

    @property
    def max_staleness(self) -> int:
        return self.config.max_staleness

    def configure_round(self, idle_clients: Sequence[str], busy: int) -> list[str]:
        k = max(0, min(self.config.concurrency - busy, len(idle_clients)))
        return self._rng.sample(list(idle_clients), k)

    def client_weight(self, update: ClientUpdate, staleness: int) -> float:
        return super().client_weight(update, staleness) * staleness_weight(staleness, self.config.staleness_exponent)

    def round_complete(self, accepted: Sequence[AcceptedUpdate]) -> bool:
        return sum(a.weight > 0 for a in accepted) >= self.config.buffer_size


class FedAdam(FedAvg):
    """Reddi et al. (2021): FedAvg whose server step is Adam, or Yogi (``config.server_optimizer``), on the mean
    delta. Plain averaging moves every coordinate by one server lr; on non-IID cars a few coordinates carry most
    of the disagreement, and the per-coordinate scale steps those less."""

    name = "fedadam"
    config_class = FedAdamConfig
    config: FedAdamConfig  # Strategy.__init__ refuses any other config class

    def server_step(self, pseudo_grad: torch.Tensor) -> torch.Tensor:
        c = self.config
        zeros = torch.zeros_like(self.params)
        target, self.server_state["first"], self.server_state["second"] = adaptive_step(
            self.params, pseudo_grad, self.server_state.get("first", zeros), self.server_state.get("second", zeros),
            lr=c.server_lr * self.server_lr_scale(), beta1=c.beta1, beta2=c.beta2, tau=c.tau,
            kind=c.server_optimizer,
        )
        return target


STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedAvg, DiLoCo, FedBuff, FedAdam)}


def make_strategy(
    name: str, initial_params: torch.Tensor, settings: StrategyConfig | Mapping[str, Any] | None = None
) -> Strategy:
    """A strategy by name, with settings as a config object or its JSON dict (validated either way)."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise InvalidInput(f"unknown strategy {name!r}; accepted: {sorted(STRATEGIES)}")
    config: StrategyConfig
    if settings is None:
        config = cls.config_class()
    elif isinstance(settings, StrategyConfig):
        config = settings
    else:
        config = config_from_dict(cls.config_class, dict(settings))
    return cls(initial_params, config)


def strategy_from_state_bytes(blob: bytes) -> Strategy:
    """Resume a strategy from ``Strategy.state_bytes`` output (e.g. after the coordinator was SIGKILLed)."""
    try:
        tensors = st_load(blob)
        meta = read_metadata(blob)
        name = meta["strategy"]
    except Exception as exc:  # safetensors raises its own (Rust) error types; translate all at this boundary
        raise InvalidInput(
            f"not a fleetgrid strategy checkpoint ({exc}); expected Strategy.state_bytes output"
        ) from exc
    strategy = make_strategy(name, tensors["params"], meta["config"])
    strategy.version = int(meta["version"])
    strategy.round = int(meta["round"])
    strategy.history = meta["history"]
    strategy.noise_multiplier = meta.get("noise_multiplier", strategy.noise_multiplier)
    strategy.stopped_on_budget = bool(meta.get("stopped_on_budget", False))
    strategy.reputation = {str(k): float(v) for k, v in meta.get("reputation", {}).items()}
    strategy._downlink.residual = tensors["downlink_residual"].numpy().copy()
    strategy.server_state = {k.removeprefix("server."): v for k, v in tensors.items() if k.startswith("server.")}
    strategy._digest = params_digest(strategy.params)
    rng = meta["rng"]
    strategy._rng.setstate((rng[0], tuple(rng[1]), rng[2]))
    return strategy
