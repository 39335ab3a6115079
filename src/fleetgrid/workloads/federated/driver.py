"""The coordinator side of federated training as a unit workload: a share of a round is a unit offered to one car,
leased, renewed and expired like any other; the round loop itself is :class:`TrainingService`."""

from __future__ import annotations

from typing import Any, NoReturn

from fleetgrid.coordinator.drivers import DriverContext, UnitDriver
from fleetgrid.coordinator.store import JobRecord, LeaseRecord, UnitRecord
from fleetgrid.coordinator.training import TrainingService
from fleetgrid.errors import InvalidInput
from fleetgrid.protocol import TrainGrant, TrainSubmit

__all__ = ["TrainingDriver"]


class TrainingDriver(UnitDriver):
    kind = "train"
    submit_model = TrainSubmit
    result_suffix = "safetensors"
    reports_with = ("/v1/train/leases/{lease_id}/update, naming the update uploaded with PUT /v1/artifacts/{sha256} "
                    "(or /fail to hand it back)")
    requeue = False  # a share handed back or expired is not offered again: the round loop offers another car one

    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx)
        self.service = TrainingService(ctx.store, ctx.artifacts, ctx.config, ctx.clock)

    def plan(self, tenant: str, request: Any, job_id: str) -> NoReturn:
        raise InvalidInput("training jobs are planned round by round; submit them with TrainingService.submit")

    def grant(self, job: JobRecord, unit: UnitRecord, lease: LeaseRecord) -> TrainGrant:
        return self.service.grant(job, unit, lease)

    def check_result(self, job: JobRecord, unit: UnitRecord, data: bytes) -> None:
        raise InvalidInput(f"lease of unit {unit.unit_id} is a training lease; it reports with POST "
                           "/v1/train/leases/{lease_id}/update (or /fail to hand it back)")

    def assemble(self, job: JobRecord, results: list[tuple[UnitRecord, bytes]]) -> NoReturn:
        raise InvalidInput(f"training job {job.job_id} finishes with its last global version, not by assembly")
