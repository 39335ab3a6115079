"""The workload contract: what a kind of work (batch inference, federated training, evaluation, ...) provides, and
the registry that finds it by name.

A workload is one folder under ``fleetgrid/workloads/`` plus one :func:`register` line at the bottom of this
module. It provides three pieces, each found lazily by dotted path so that a car that only runs inference never
imports torch in its main process and the coordinator never imports the car's code:

- a **car handler** (:class:`CarHandler`): what the vehicle agent does with one lease of this kind. It receives the
  grant, a :class:`fleetgrid.agent.link.CarLink` (fetch/upload artifacts with resume and metering, charge the data
  plan, wait for a link, check preemption, run a worker task, report back) and a scratch folder; it never sees the
  agent itself.
- **worker tasks** (:class:`WorkerTask`): the compute a handler runs in the preemptable worker process. A task is a
  small picklable dataclass whose :meth:`WorkerTask.execute` the child calls; the worker knows no workload.
- a **coordinator driver**: plans a job into work, validates each report, reacts when a lease closes, assembles or
  publishes results and checkpoints (see :mod:`fleetgrid.coordinator.drivers`).
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetgrid.errors import InvalidInput

if TYPE_CHECKING:
    from fleetgrid.agent.link import CarLink

__all__ = [
    "CarHandler",
    "WorkerCache",
    "WorkerTask",
    "Workload",
    "car_handler",
    "get_workload",
    "register",
    "save_atomic",
    "workloads",
]


class WorkerCache:
    """What the worker child keeps between tasks (loaded models, built datasets), keyed by the task that knows
    what they are. ``threads`` caps torch's intra-op threads; ``runner_factory`` builds inference runners (tests
    inject a fake one)."""

    def __init__(self, threads: int | None, runner_factory: Callable[..., Any] | None = None) -> None:
        self.threads = threads
        self.runner_factory = runner_factory
        self._items: dict[Any, Any] = {}

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        """The cached value under ``key``, built by ``build()`` on first use."""
        if key not in self._items:
            self._items[key] = build()
        return self._items[key]

    def replace(self, slot: str, key: Any, build: Callable[[], Any]) -> Any:
        """Keep one value per ``slot``: the one for ``key``, dropping the previous one before building the new
        (a car's dataset for another job must not stay in memory beside the new one)."""
        held = self._items.get(slot)
        if held is not None and held[0] == key:
            return held[1]
        self._items.pop(slot, None)
        value = build()
        self._items[slot] = (key, value)
        return value


def save_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as .npy so that a reader (or a SIGKILL) sees either the old file or the new one, whole."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
    os.replace(tmp, path)


class WorkerTask(ABC):
    """Compute that runs in the preemptable worker process; subclasses are frozen dataclasses of plain data.

    ``execute`` may be killed at any instant (SIGKILL): whatever must survive is written by atomic rename to files
    the task names. It reports progress (items or steps done) through ``progress``.
    """

    result_path: Path
    start: int = 0
    """Progress already done before this task started (a resumed unit's items)."""

    @abstractmethod
    def execute(self, cache: WorkerCache, progress: Callable[[int], None]) -> None:
        """Run in the child; write the result to ``result_path``; raise a :mod:`fleetgrid.errors` error if the
        task itself is bad (the child reports it and serves the next one)."""

    @abstractmethod
    def describe(self, done: int) -> str:
        """Where the task was at ``done`` (for messages): '12 of 40 items', 'step 30'."""


class CarHandler(ABC):
    """One lease on the car: :meth:`run` it to the end, or :meth:`hand_back` what it has when it cannot finish.

    The agent holds the lease (renewals), maps the coordinator's refusals, and calls ``hand_back`` when the car is
    preempted (``run`` raised :class:`fleetgrid.errors.Preempted`) or the agent stops. Any other
    :class:`fleetgrid.errors.FleetgridError` from ``run`` fails the lease with its message.
    """

    def __init__(self, grant: Any, car: CarLink, folder: Path) -> None:
        self.grant, self.car, self.folder = grant, car, folder

    @abstractmethod
    def run(self) -> None: ...

    @abstractmethod
    def hand_back(self, why: str) -> None: ...

    def counts_as_done(self) -> bool:
        """Whether this lease counts towards the agent's ``max_units`` once ``run`` returned."""
        return True


@dataclass(frozen=True, slots=True)
class Workload:
    """One registry line: the workload's wire name and where its pieces live (``module:attribute``)."""

    kind: str
    """The grant's ``kind`` on the wire and the job's ``kind`` in the store."""
    car: str
    """The :class:`CarHandler` subclass."""
    driver: str
    """The coordinator driver class."""
    description: str = ""
    routes: str | None = None
    """A function ``(app, coordinator) -> service`` adding the workload's own HTTP routes to the coordinator (a
    serving API); the service it returns, if any, is started and stopped with the app (``start``/``stop``)."""

    def load(self, part: str) -> Any:
        path = getattr(self, part)
        if path is None:
            return None
        module, _, attribute = path.partition(":")
        return getattr(importlib.import_module(module), attribute)


_REGISTRY: dict[str, Workload] = {}


def register(workload: Workload) -> Workload:
    if workload.kind in _REGISTRY and _REGISTRY[workload.kind] != workload:
        raise ValueError(f"workload kind {workload.kind!r} is registered twice")
    _REGISTRY[workload.kind] = workload
    return workload


def workloads() -> list[Workload]:
    return sorted(_REGISTRY.values(), key=lambda w: w.kind)


def get_workload(kind: str) -> Workload:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise InvalidInput(f"unknown workload kind {kind!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


_HANDLERS: dict[str, type[CarHandler]] = {}


def car_handler(kind: str) -> type[CarHandler]:
    """The car handler class of workload ``kind`` (imported on first use)."""
    handler = _HANDLERS.get(kind)
    if handler is None:
        handler = _HANDLERS[kind] = get_workload(kind).load("car")
    return handler


# --- the registry: one line per workload ------------------------------------------------------------------------
register(Workload("inference", car="fleetgrid.workloads.batch_inference.car:InferenceHandler",
                  driver="fleetgrid.workloads.batch_inference.driver:InferenceDriver",
                  description="batch inference: a job's inputs sharded into units, results assembled in order"))
register(Workload("train", car="fleetgrid.workloads.federated.car:TrainHandler",
                  driver="fleetgrid.workloads.federated.driver:TrainingDriver",
                  description="federated training: rounds of local training, compressed updates aggregated"))
register(Workload("evaluate", car="fleetgrid.workloads.evaluation.car:EvalHandler",
                  driver="fleetgrid.workloads.evaluation.driver:EvalDriver",
                  description="federated evaluation: a model scored on each car's own data, only metrics travel"))
register(Workload("serve", car="fleetgrid.workloads.serving.car:ServeHandler",
                  driver="fleetgrid.workloads.serving.driver:ServingDriver",
                  routes="fleetgrid.workloads.serving.service:serving_routes",
                  description="online serving: replicas resident on cars behind an OpenAI-compatible API"))
