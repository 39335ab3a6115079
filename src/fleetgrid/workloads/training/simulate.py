"""An in-process fleet: N simulated cars behind the :class:`~strategies.Fleet` protocol, on a simulated clock.

Cars differ in speed, may be preempted mid-round (they hand back partial work) or vanish, and account every byte
they move. Training runs for real, in this process, but only when a report is due, so revoked work costs nothing.
Chosen cars can be hostile (``SimulationConfig.hostile``), to measure what one bad car costs a strategy.
Tests and ``bench/training_local.py`` use it; the coordinator replaces it with real leases.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fleetgrid.clock import ManualClock
from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.compression import (
    ErrorFeedback,
    decode,
    encode,
    encoded_nbytes,
    read_header,
)
from fleetgrid.workloads.training.flat import FlatLayout
from fleetgrid.workloads.training.local import (
    LocalDataset,
    control_codec,
    cross_entropy_loss,
    train_locally,
)
from fleetgrid.workloads.training.messages import (
    ClientUpdate,
    TrainInstructions,
    apply_download,
)
from fleetgrid.workloads.training.strategies import Strategy

__all__ = ["ATTACKS", "SimulatedFleet", "SimulationConfig", "hostile_update"]

ATTACKS = ("scaled", "signflip", "huge", "noise")
"""What a hostile car can do to its honest update before sending it; see :func:`hostile_update`."""


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    preempt_prob: float = 0.0
    """Chance a dispatched car is preempted (owner drives off) after a uniform 0..planned-1 steps (H, or fewer on
    a small shard: ``LocalTrainingConfig.planned_steps``); it reports them."""
    dropout_prob: float = 0.0
    """Chance a dispatched car vanishes without reporting anything."""
    steps_per_s: float = 5.0
    """Median local steps per second of a car."""
    speed_spread: float = 0.5
    """Sigma of the log-normal spread of car speeds; 0 makes every car equally fast."""
    uplink_bytes_per_s: float = 1.5e6
    """~12 Mbps, a home upload link or a decent cellular one."""
    downlink_bytes_per_s: float = 6e6
    seed: int = 0
    hostile: Mapping[str, str] = field(default_factory=dict)
    """Hostile cars: car id (``"car-3"``) -> one of :data:`ATTACKS`. Such a car is dispatched and trains like any
    other (the strategy is not told) but sends :func:`hostile_update` of its honest report."""

    def __post_init__(self) -> None:
        bad = {cid: a for cid, a in self.hostile.items() if a not in ATTACKS}
        if bad:
            raise InvalidInput(f"hostile attacks must be among {ATTACKS}, got {bad}")
        for name in ("preempt_prob", "dropout_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidInput(f"{name} must be a probability in [0, 1], got {getattr(self, name)!r}")
        if self.preempt_prob + self.dropout_prob > 1:
            raise InvalidInput(f"preempt_prob + dropout_prob must be <= 1, got {self.preempt_prob + self.dropout_prob}")
        for name in ("steps_per_s", "uplink_bytes_per_s", "downlink_bytes_per_s"):
            if not getattr(self, name) > 0:
                raise InvalidInput(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not self.speed_spread >= 0:
            raise InvalidInput(f"speed_spread must be >= 0, got {self.speed_spread!r}")


@dataclass
class _Car:
    client_id: str
    dataset: LocalDataset
    speed: float
    feedback: ErrorFeedback
    held_version: int | None = None
    held_params: torch.Tensor | None = None
    held_exact: bool = True
    """False once the car installed a compact snapshot: it holds ``held_version`` approximately."""
    fleet_control: torch.Tensor | None = None
    """Drift correction: the fleet's ``c`` that came down with ``held_version``."""
    own_control: torch.Tensor | None = None
    """Drift correction: this car's ``c_i``, its mean gradient in its last lease that reported (None before)."""
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass
class _Job:
    instructions: TrainInstructions
    params: torch.Tensor
    stop_after: int | None  # preempted after this many steps; None: runs to the end
    vanishes: bool


class SimulatedFleet:
    """``datasets[i]`` is the private data of car ``f"car-{i}"``; ``model`` is a scratch module every car's local
    training runs in (one process, one car at a time). ``initial_params``, if given, is version 0 as each car
    builds it locally from the job's model seed (``tasks.build_model``), so no car downloads it; a wrong one is
    caught by the digest check on the car's first delta. With ``initial_exact`` False it is instead the compact
    snapshot of version 0 (``Strategy.compact_snapshot``) each car downloaded: an approximate copy."""

    def __init__(
        self,
        model: nn.Module,
        datasets: Sequence[LocalDataset],
        config: SimulationConfig | None = None,
        *,
        initial_params: torch.Tensor | None = None,
        initial_exact: bool = True,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy_loss,
    ) -> None:
        self.config = config = config or SimulationConfig()
        if not datasets:
            raise InvalidInput("a simulated fleet needs >= 1 car (one dataset per car), got none")
        self.model = model
        self.loss_fn = loss_fn
        self.numel = FlatLayout.of(model).numel
        self.clock = ManualClock()
        self._rng = random.Random(config.seed)
        self.cars = {
            f"car-{i}": _Car(
                f"car-{i}",
                ds,
                config.steps_per_s * math.exp(self._rng.gauss(0, config.speed_spread)),
                ErrorFeedback(self.numel),
            )
            for i, ds in enumerate(datasets)
        }
        unknown = sorted(set(config.hostile) - set(self.cars))
        if unknown:
            raise InvalidInput(f"hostile cars {unknown} are not in this fleet (car-0 .. car-{len(self.cars) - 1})")
        self._attack_rng = np.random.default_rng(config.seed)  # apart from self._rng: dispatch stays as in a clean run
        if initial_params is not None:
            for car in self.cars.values():
                car.held_version, car.held_params = 0, initial_params.detach().clone()
                car.held_exact = initial_exact
        self._jobs: dict[str, _Job] = {}
        self._events: list[tuple[float, int, str]] = []
        self._seq = 0
        self.counts = {"dispatched": 0, "reported": 0, "preempted": 0, "vanished": 0, "revoked": 0, "steps": 0,
                       "full_downloads": 0, "full_download_bytes": 0, "compact_downloads": 0,
                       "compact_download_bytes": 0, "deltas_down": 0, "hostile": 0}
        """What happened to dispatched work (``hostile``: doctored reports sent), and how the downloads went: whole
        float32 models and compact snapshots (and their bytes), and the deltas in chains (a car already current
        downloads none of them)."""

    # ------------------------------------------------------------------------------------- Fleet protocol

    def now(self) -> float:
        return self.clock.now()

    def idle_clients(self) -> list[str]:
        return [c for c in self.cars if c not in self._jobs]

    def busy_count(self) -> int:
        return len(self._jobs)

    def dispatch(self, assignments: Mapping[str, TrainInstructions], strategy: Strategy) -> None:
        cfg = self.config
        for cid, ins in assignments.items():
            car = self.cars[cid]
            if cid in self._jobs:
                raise InvalidInput(f"{cid} already holds work for round {self._jobs[cid].instructions.round}")
            download = strategy.download(car.held_version, held_exact=car.held_exact)
            car.held_params = apply_download(car.held_params, download)
            car.held_version, car.held_exact = download.version, download.exact
            if download.control is not None:
                car.fleet_control = torch.from_numpy(decode(download.control).reshape(-1).copy())
            car.bytes_down += download.nbytes
            self.counts["deltas_down"] += len(download.deltas)
            if download.full is not None:
                kind = "full" if download.exact else "compact"
                self.counts[f"{kind}_downloads"] += 1
                self.counts[f"{kind}_download_bytes"] += download.nbytes
            u = self._rng.random()
            vanishes = u < cfg.dropout_prob
            planned = ins.local.planned_steps(len(car.dataset))
            stop_after = (
                self._rng.randrange(planned)
                if not vanishes and u < cfg.dropout_prob + cfg.preempt_prob
                else None
            )
            steps = planned if stop_after is None else stop_after
            upload = encoded_nbytes(self.numel, ins.local.compression) if steps else 0
            if steps and ins.local.drift_correction:  # the car's mean gradient goes up too, dense
                upload += encoded_nbytes(self.numel, control_codec(ins.local))
            duration = download.nbytes / cfg.downlink_bytes_per_s + steps / car.speed + upload / cfg.uplink_bytes_per_s
            self._jobs[cid] = _Job(ins, car.held_params, stop_after, vanishes)
            self._seq += 1
            heapq.heappush(self._events, (self.now() + duration, self._seq, cid))
            self.counts["dispatched"] += 1

    def next_update(self, deadline: float) -> ClientUpdate | None:
        while self._events:
            t, _, cid = self._events[0]
            if t > deadline:
                self.clock.set(max(self.now(), deadline))
                return None
            heapq.heappop(self._events)
            self.clock.set(max(self.now(), t))
            job = self._jobs.pop(cid)
            if job.vanishes:
                self.counts["vanished"] += 1
                continue
            update = self._train(self.cars[cid], job)
            if update is not None:
                return update
        return None

    def cancel_outstanding(self) -> None:
        self.counts["revoked"] += len(self._jobs)
        self._jobs.clear()
        self._events.clear()

    def max_examples(self, client_id: str) -> int | None:
        car = self.cars.get(client_id)
        return len(car.dataset) if car is not None else None

    # ------------------------------------------------------------------------------------------ internals

    def _train(self, car: _Car, job: _Job) -> ClientUpdate | None:
        stop = None if job.stop_after is None else (lambda steps, n=job.stop_after: steps >= n)
        strength = job.instructions.local.drift_correction
        correction = None
        if strength > 0 and car.own_control is not None and car.fleet_control is not None:
            correction = strength * (car.fleet_control - car.own_control)  # SCAFFOLD: g - c_i + c
        result = train_locally(
            self.model,
            job.params,
            car.dataset,
            job.instructions,
            client_id=car.client_id,
            should_stop=stop,
            error_feedback=car.feedback,
            loss_fn=self.loss_fn,
            correction=correction,
        )
        if result.control is not None:
            car.own_control = result.control
        self.counts["preempted"] += result.preempted
        if result.update is None:
            return None
        self.counts["reported"] += 1
        self.counts["steps"] += result.steps_done
        car.bytes_up += result.bytes_up
        attack = self.config.hostile.get(car.client_id)
        if attack is None:
            return result.update
        self.counts["hostile"] += 1
        return hostile_update(result.update, attack, self._attack_rng)

    def stats(self) -> dict[str, float]:
        """Fleet totals: bytes each way, steps reported, and what happened to dispatched work."""
        return {
            "bytes_up": sum(c.bytes_up for c in self.cars.values()),
            "bytes_down": sum(c.bytes_down for c in self.cars.values()),
            "sim_time_s": self.now(),
            **self.counts,
        }

    def bytes_per_car(self) -> dict[str, tuple[int, int]]:
        """(bytes_up, bytes_down) of each car."""
        return {cid: (c.bytes_up, c.bytes_down) for cid, c in self.cars.items()}


def hostile_update(update: ClientUpdate, attack: str, rng: np.random.Generator) -> ClientUpdate:
    """``update`` as a hostile car sends it instead, re-encoded with the honest payload's codec (so it weighs the
    same bytes and survives the same quantization):

    - ``scaled``: the delta x20, a boosted vote;
    - ``signflip``: x-4 (x-1 would merely cancel the car's own vote; -4 pulls the global backwards);
    - ``huge``: every value 3e38 (finite, near float32's largest) and 1e15 examples claimed: the coordinator must
      refuse it, as no car's data holds that many;
    - ``noise``: Gaussian, scaled to 10x the honest delta's norm.
    """
    config, shape, _ = read_header(update.payload)
    honest = decode(update.payload).reshape(-1)
    examples = update.num_examples
    if attack == "scaled":
        bad = 20 * honest
    elif attack == "signflip":
        bad = -4 * honest
    elif attack == "huge":
        bad, examples = np.full_like(honest, 3e38), 10**15
    elif attack == "noise":
        noise = rng.standard_normal(honest.size).astype(np.float32)
        bad = noise * np.float32(10 * np.linalg.norm(honest) / np.linalg.norm(noise))
    else:
        raise InvalidInput(f"unknown attack {attack!r}; accepted: {ATTACKS}")
    return dataclasses.replace(update, payload=encode(bad.reshape(shape), config), num_examples=examples)
