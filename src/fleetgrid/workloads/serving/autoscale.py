"""How many cars a deployment needs: enough replicas for its requests in flight (``TARGET_IN_FLIGHT`` each) plus its
warm spares, between its floor and ceiling; one replica added per look when short, one retired after demand has
stayed lower for ``SCALE_DOWN_AFTER_S`` (an idle one first), so a burst does not make cars load and drop the model
again and again.

With several coordinator replicas on one PostgreSQL, each deployment is scaled by one of them: the one holding its
claim (the same claim that makes one replica drive a training job).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleetgrid.core import UnitState
from fleetgrid.workloads.serving.driver import LIVE_JOB_STATES, replica_unit

if TYPE_CHECKING:
    from fleetgrid.coordinator.app import Coordinator
    from fleetgrid.coordinator.store import JobRecord, UnitRecord
    from fleetgrid.workloads.serving.router import ServingRouter

__all__ = ["SCALE_DOWN_AFTER_S", "TARGET_IN_FLIGHT", "Autoscaler", "desired_replicas"]

TARGET_IN_FLIGHT = 4.0
"""Requests in flight one replica is meant to hold: more, and the deployment is short of cars."""
SCALE_DOWN_AFTER_S = 30.0
SMOOTHING = 0.3
"""Weight of the newest look at the demand."""


def desired_replicas(*, floor: int, ceiling: int, spares: int, demand: float,
                     target: float = TARGET_IN_FLIGHT) -> int:
    """Replicas for ``demand`` requests in flight: ``ceil(demand / target)`` (at least one) plus ``spares``,
    within [``floor``, ``ceiling``]."""
    need = max(1, math.ceil(demand / target - 1e-9))
    return max(floor, min(ceiling, need + spares))


@dataclass
class _Scaling:
    demand: float = 0.0
    refused_seen: int = 0
    low_since: float | None = None


class Autoscaler:
    def __init__(self, coord: Coordinator, router: ServingRouter) -> None:
        self.coord, self.router = coord, router
        self._state: dict[str, _Scaling] = {}

    def look(self) -> dict[str, int]:
        """Scale every live deployment this coordinator serves and holds the claim of by at most one replica;
        returns the replica count now wanted per job. Runs in a thread (it reads and writes the store)."""
        store, clock = self.coord.store, self.coord.clock
        out = {}
        # The deployments this coordinator serves: replicas polling it, or clients calling it.
        known = {c.deployment for c in self.router.all_replicas()} | set(self.router.counts)
        for job_id in sorted(known):
            job = store.get_job(job_id)
            if job is None or job.kind != "serve" or job.state not in LIVE_JOB_STATES:
                continue
            floor, ceiling = job.spec["replicas"], job.spec.get("max_replicas") or job.spec["replicas"]
            spares = job.spec.get("spares", 0)
            if ceiling == floor or not self._claimed(job):
                continue
            out[job.job_id] = self._scale(job, floor, ceiling, spares, clock.now())
        for job_id in set(self._state) - set(out):
            del self._state[job_id]
        return out

    def _claimed(self, job: JobRecord) -> bool:
        training = self.coord.training  # its replica id and claim length: one claim per job, whatever drives it
        now = self.coord.clock.now()
        return self.coord.store.claim_job(job.job_id, training.replica, now, now + training.claim_ttl_s)

    def _scale(self, job: JobRecord, floor: int, ceiling: int, spares: int, now: float) -> int:
        state = self._state.setdefault(job.job_id, _Scaling())
        pool = self.router.replicas(job.job_id)
        refused = self.router.counts.get(job.job_id, {}).get("refused", 0)
        in_flight = sum(len(c.in_flight) for c in pool) + (refused - state.refused_seen)  # a refusal: one short
        state.refused_seen = refused
        state.demand += SMOOTHING * (in_flight - state.demand)
        wanted = desired_replicas(floor=floor, ceiling=ceiling, spares=spares, demand=state.demand)
        live = [u for u in self.coord.store.units_of(job.job_id)
                if u.state in (UnitState.PENDING, UnitState.LEASED)]
        if wanted > len(live):
            state.low_since = None
            self.coord.store.add_units([replica_unit(job, self.coord.store.next_unit_idx(job.job_id))])
        elif wanted < len(live):
            if state.low_since is None:
                state.low_since = now
            elif now - state.low_since >= SCALE_DOWN_AFTER_S:
                state.low_since = now  # the next one waits as long again
                self.coord.scheduler.retire(job, self._idlest(live).unit_id)
        else:
            state.low_since = None
        return wanted

    def _idlest(self, live: list[UnitRecord]) -> UnitRecord:
        """A replica not yet on a car, else the one holding the fewest requests."""
        waiting = [u for u in live if u.state == UnitState.PENDING]
        if waiting:
            return waiting[-1]
        load = {c.vehicle_id: len(c.in_flight) for c in self.router.all_replicas()}
        return min(live, key=lambda u: (load.get(u.vehicle_id or "", 0), -u.idx))
