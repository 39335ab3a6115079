"""The coordinator side of the workload contract: a driver per workload kind, found through the registry.

Workloads whose jobs are planned into units up front (batch inference, evaluation) subclass :class:`UnitDriver`:
the generic machinery (:class:`fleetgrid.coordinator.scheduler.Scheduler`) stores the plan, leases units to cars,
renews, expires and re-issues them, reconciles replicas and meters every closed lease; the driver only says what
a unit is for a car (:meth:`UnitDriver.grant`), whether a report is acceptable (:meth:`UnitDriver.check_result`,
called before any state changes), what it was worth (:meth:`UnitDriver.usage`) and what the job's result is
(:meth:`UnitDriver.assemble`). A driver also declares how its units are placed on cars
(:attr:`UnitDriver.placement`): one car per unit, a gang of cars leased together, or resident on a car with no
natural end; the scheduler applies it. Federated training, whose work is planned round by round, has its own
driver (:class:`fleetgrid.coordinator.training.TrainingService`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ValidationError

from ..core import Placement, Usage
from ..errors import InvalidInput
from ..protocol import CompleteRequest
from ..workloads.base import workloads

if TYPE_CHECKING:
    from ..clock import Clock
    from ..protocol import Grant
    from .artifacts import ArtifactStore
    from .config import CoordinatorConfig
    from .store import JobRecord, LeaseRecord, Store, UnitRecord

__all__ = ["DriverContext", "Plan", "UnitDriver", "form_gangs", "load_unit_drivers"]


@dataclass(frozen=True, slots=True)
class DriverContext:
    """What a driver may use: the store, the artifact store, the config and the clock."""

    store: Store
    artifacts: ArtifactStore
    config: CoordinatorConfig
    clock: Clock


@dataclass(slots=True)
class Plan:
    """A job planned into units. ``artifacts`` (digest, size) are recorded as the tenant's in the transaction that
    stores the job; ``new_files`` are those the planning itself created, removed again if the job is not stored."""

    job: JobRecord
    units: list[UnitRecord]
    artifacts: list[tuple[str, int]] = field(default_factory=list)
    new_files: list[str] = field(default_factory=list)


class UnitDriver(ABC):
    """A workload planned into units up front. One instance per coordinator process; methods are called from the
    thread pool, never on the event loop."""

    kind: ClassVar[str]
    submit_model: ClassVar[type[BaseModel]]
    """The tenant's job submission (``POST /v1/jobs`` with this ``kind``)."""
    result_suffix: ClassVar[str] = "bin"
    """File suffix of the assembled result, for the download's name."""
    reports_with: ClassVar[str | None] = None
    """The route this workload's cars report a finished lease with, when it is not the generic complete (the
    generic progress and complete routes then answer 409 naming it)."""
    requeue: ClassVar[bool] = True
    """Whether a unit whose lease failed, was handed back or expired goes back to the queue (False: it is
    cancelled, and the workload plans that work anew)."""
    verifiable: ClassVar[bool] = False
    """Whether :meth:`agree` compares two cars' results of one unit meaningfully (within the workload's
    tolerance), so that results can be verified by replication (:mod:`fleetgrid.coordinator.verification`)."""
    placement: ClassVar[Placement] = Placement.SINGLE
    """How units are placed on cars. ``RESIDENT``: a lease never completes; it is renewed while its car stays
    eligible and ends by preemption (its unit goes straight back to the queue for another car) or with the job.
    Every close is metered with the seconds it was held. ``GANG``: :meth:`plan` puts the units in gangs
    (:func:`form_gangs`); a gang's units are leased to as many different cars all at once, and when one of those
    leases ends other than by completion the others are cancelled and the gang's units wait for cars again."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.placement is not Placement.SINGLE and not cls.requeue:
            raise TypeError(f"{cls.__name__} places its units {cls.placement}, which moves a unit whose lease ends "
                            "early straight back to the queue; it cannot also set requeue = False")

    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx

    def check_placement(self, units: list[UnitRecord]) -> None:
        """InvalidInput unless the plan's ``units`` fit :attr:`placement`: a GANG workload's are each in a gang of
        exactly its ``gang_size`` units of one replica (see :func:`form_gangs`); any other workload's in none."""
        gangs: dict[str, list[UnitRecord]] = {}
        for unit in units:
            if unit.gang is not None:
                gangs.setdefault(unit.gang, []).append(unit)
        if self.placement is not Placement.GANG:
            if gangs:
                raise InvalidInput(f"{self.kind} units are placed {self.placement}, yet its plan puts units in gangs "
                                   f"({', '.join(sorted(gangs))}); only a gang workload's units form gangs")
            return
        loose = [u.unit_id for u in units if u.gang is None]
        if loose:
            raise InvalidInput(f"{self.kind} units are leased in gangs, yet units {loose[:4]} are in none")
        for gang, members in gangs.items():
            sizes = sorted({str(u.gang_size) for u in members})
            if sizes != [str(len(members))]:
                raise InvalidInput(f"gang {gang} has {len(members)} units whose gang_size says {', '.join(sizes)}; "
                                   "a gang is exactly gang_size units")
            if any(u.replicas != 1 for u in members):
                raise InvalidInput(f"gang {gang} has replicated units; a gang's units are computed once, by its cars")

    def parse_submit(self, body: dict[str, Any]) -> BaseModel:
        try:
            return self.submit_model.model_validate(body)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:8])
            raise InvalidInput(f"bad {self.kind} job: {problems}. See /docs for the schema.") from exc

    @abstractmethod
    def plan(self, tenant: str, request: Any, job_id: str) -> Plan:
        """Validate a submission and plan it into units (write what the units need as artifacts)."""

    @abstractmethod
    def grant(self, job: JobRecord, unit: UnitRecord, lease: LeaseRecord) -> Grant:
        """What the car holding ``lease`` of ``unit`` is told to do."""

    @abstractmethod
    def check_result(self, job: JobRecord, unit: UnitRecord, data: bytes) -> None:
        """Raise InvalidInput (naming the problem) unless ``data`` is an acceptable result of ``unit``. Called
        before any state changes, so a refused report leaves the unit leased and the job as it was."""

    def check_checkpoint(self, job: JobRecord, unit: UnitRecord, data: bytes, done: int) -> None:
        """Raise InvalidInput unless ``data`` is an acceptable partial result covering ``done`` of the unit."""
        raise InvalidInput(f"{self.kind} units do not take checkpoints; report the whole result when done")

    def usage(self, job: JobRecord, unit: UnitRecord, report: CompleteRequest, data: bytes,
              resumed: int) -> Usage:
        """What a completed lease delivered; ``resumed`` is what the unit's checkpoint already held."""
        return Usage(accelerator_s=report.compute_s, cellular_bytes=report.cellular_bytes,
                     wifi_bytes=report.wifi_bytes)

    def held_usage(self, lease: LeaseRecord) -> Usage:
        """What a lease placed RESIDENT or in a GANG delivered beyond the time it was held (its usage row's
        accelerator-seconds), as the coordinator counted it: e.g. the requests a serving replica answered."""
        return Usage()

    def agree(self, job: JobRecord, a: bytes, b: bytes) -> bool:
        """Whether two replicas' results of one unit agree (for a quorum)."""
        return a == b

    @abstractmethod
    def assemble(self, job: JobRecord, results: list[tuple[UnitRecord, bytes]]) -> bytes:
        """The job's result from every unit's accepted result, in unit order."""

    def progress(self, job: JobRecord) -> dict[str, Any] | None:
        """Workload-specific status for ``GET /v1/jobs/{id}`` (None: nothing beyond the unit counts)."""
        return None


def form_gangs(units: list[UnitRecord], size: int) -> list[UnitRecord]:
    """Put ``units`` (in order) in gangs of ``size`` units each, named after the first unit's job; a GANG
    workload's :meth:`UnitDriver.plan` calls this on the units it planned."""
    if size < 1 or len(units) % size:
        raise InvalidInput(f"{len(units)} units do not split into gangs of {size}; plan a multiple of {size} units")
    for i, unit in enumerate(units):
        unit.gang, unit.gang_size = f"{unit.job_id}:gang{i // size}", size
    return units


def load_unit_drivers(ctx: DriverContext) -> dict[str, UnitDriver]:
    """One driver per registered workload whose driver is a :class:`UnitDriver`."""
    drivers: dict[str, UnitDriver] = {}
    for workload in workloads():
        cls = workload.load("driver")
        if isinstance(cls, type) and issubclass(cls, UnitDriver):
            drivers[workload.kind] = cls(ctx)
    return drivers
