"""What the agent keeps on the car's disk: its credential and key, data-plan counts, stats, model caches and work
files.

Secrets and counts are written owner-only (0600) by atomic rename, so a power cut never leaves half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fleetgrid.clock import Clock
from fleetgrid.errors import InvalidInput
from fleetgrid.vehicle.dataplan import DataPlan
from fleetgrid.vehicle.policy import OwnerPolicy

__all__ = ["AgentStats", "Enrollment", "StateDir"]


@dataclass
class AgentStats:
    """What one agent run has done; ``to_json`` adds latency percentiles."""

    leases: int = 0
    """Leases taken, of every workload."""
    leases_done: int = 0
    """Leases finished with their work accepted (units completed, full training updates accepted): what the
    agent's ``max_units`` counts."""
    units_done: int = 0
    items_done: int = 0
    items_resumed: int = 0
    """Items of completed units that a checkpoint spared computing again (theirs or another car's)."""
    unit_failures: int = 0
    """Units failed for the unit's own sake (a bad shard, an unknown model), not preemptions."""
    leases_lost: int = 0
    """Leases the coordinator no longer held (expired, reissued) when the agent reported on them."""
    preemptions: int = 0
    """Units handed back because the car became ineligible."""
    preemption_latencies_ms: list[float] = field(default_factory=list)
    """Wall milliseconds from the bus read that first showed the car ineligible to the worker process gone."""
    compute_s: float = 0.0
    cellular_bytes: int = 0
    wifi_bytes: int = 0
    wifi_waits: int = 0
    """Transfers that waited because cellular was not allowed or would pass the monthly cap."""
    model_downloads: int = 0
    """Model files fetched for inference, and global versions fetched for training."""
    model_cache_hits: int = 0
    """Leases whose model was already on disk: by file digest, or by global version digest for training."""
    transport_errors: int = 0
    train_leases: int = 0
    """Shares of training rounds taken (counted in ``leases`` too)."""
    train_updates: int = 0
    """Finished updates the coordinator accepted."""
    train_partial_updates: int = 0
    """Updates of preempted training the coordinator accepted."""
    updates_refused: int = 0
    """Updates refused because their round had closed (409): no fault of the car."""
    train_bytes_up: int = 0
    """Bytes of update artifacts uploaded (masked inputs included) and of secure-aggregation messages sent: the only
    training uploads, the car's data never leaves it."""
    train_bytes_down: int = 0
    """Bytes of global-model artifacts downloaded (snapshots and deltas) and of secure-aggregation answers."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["preemption_latency_ms"] = _percentiles(self.preemption_latencies_ms)
        return data


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        p50 = p99 = ordered[0]
    else:
        cuts = statistics.quantiles(ordered, n=100, method="inclusive")
        p50, p99 = cuts[49], cuts[98]
    return {"p50": round(p50, 3), "p99": round(p99, 3), "max": round(ordered[-1], 3), "n": len(ordered)}


@dataclass(frozen=True)
class Enrollment:
    vehicle_id: str
    credential: str
    coordinator: str


class StateDir:
    """The agent's directory: ``enrollment.json``, ``dataplan.json``, ``stats.json``, ``models/``, ``work/`` and
    ``train/`` (per training job, the last global version the car holds and its uplink residual)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.models = self.root / "models"
        self.work = self.root / "work"
        self.train = self.root / "train"
        for path in (self.models, self.work, self.train):
            path.mkdir(exist_ok=True)

    def load_enrollment(self) -> Enrollment | None:
        data = self._read("enrollment.json")
        if data is None:
            return None
        try:
            return Enrollment(**data)
        except TypeError as exc:
            raise InvalidInput(f"{self.root / 'enrollment.json'} is not an enrollment record: {exc}") from exc

    def save_enrollment(self, enrollment: Enrollment) -> None:
        self._write("enrollment.json", asdict(enrollment))

    @property
    def key_path(self) -> Path:
        """The car's Ed25519 private key (PEM, 0600), made at enrollment; its public half is the coordinator's."""
        return self.root / "car_key.pem"

    def load_plan(self, policy: OwnerPolicy, clock: Clock) -> DataPlan:
        data = self._read("dataplan.json")
        return DataPlan(policy, clock) if data is None else DataPlan.from_json(data, policy, clock)

    def save_plan(self, plan: DataPlan) -> None:
        self._write("dataplan.json", plan.to_json())

    def save_stats(self, stats: AgentStats) -> None:
        self._write("stats.json", stats.to_json())

    def model_path(self, digest: str) -> Path:
        return self.models / digest

    def unit_dir(self, lease_id: str) -> Path:
        """A fresh directory for one lease's input, checkpoint and result."""
        path = self._unit_path(lease_id)
        path.mkdir(exist_ok=True)
        return path

    def train_dir(self, job_id: str) -> Path:
        """The directory that outlives a training job's leases: the global it holds, its uplink residual, its
        shard."""
        path = self.train / _safe_name(job_id)
        path.mkdir(exist_ok=True)
        return path

    def discard_unit(self, lease_id: str) -> None:
        shutil.rmtree(self._unit_path(lease_id), ignore_errors=True)

    def _unit_path(self, lease_id: str) -> Path:
        return self.work / _safe_name(lease_id)

    def _read(self, name: str) -> dict[str, Any] | None:
        path = self.root / name
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"{path} cannot be read as JSON ({exc}); fix or delete it") from exc

    def _write(self, name: str, data: dict[str, Any]) -> None:
        path = self.root / name
        tmp = path.with_name(name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
        os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a tmp file left by an earlier crash
        os.replace(tmp, path)


def _safe_name(name: str) -> str:
    """``name`` as one path component: an id from the coordinator never reaches outside the state directory."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
