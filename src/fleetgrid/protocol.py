"""Wire models: every request and response body between tenants, vehicles and the coordinator.

The coordinator and the agent import these same definitions. Cars sit behind carrier NAT and only dial out, so the
vehicle API is pull-based: enroll once, then heartbeat, lease (long-poll), renew, report progress, complete or fail.
Times on the wire are seconds since the epoch on the coordinator's clock.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

__all__ = [
    "API_PREFIX",
    "MAX_COMPUTE_S",
    "MAX_INLINE_RESULT_BYTES",
    "MAX_ITEMS",
    "MAX_LEASE_BYTES",
    "ArtifactInfo",
    "ArtifactRef",
    "CheckpointRef",
    "CompactSnapshot",
    "CompleteRequest",
    "Digest",
    "EnrollRequest",
    "EnrollResponse",
    "ErrorBody",
    "FailRequest",
    "FleetOverview",
    "Grant",
    "HeartbeatResponse",
    "JobState",
    "JobStatus",
    "JobSubmit",
    "LeaseAck",
    "LeaseGrant",
    "LeaseRequest",
    "LedgerEntry",
    "ModelDelta",
    "ModelRef",
    "ProgressReport",
    "Redundancy",
    "SecAggPlan",
    "StateReport",
    "TenantCreate",
    "TenantCreated",
    "TenantSummary",
    "TrainGrant",
    "TrainSubmit",
    "PrivacyProgress",
    "TrainingProgress",
    "UpdateReport",
    "VehicleReputation",
    "VehicleSummary",
    "WorkGrant",
    "is_digest",
]

API_PREFIX = "/v1"
MAX_INLINE_RESULT_BYTES = 256 * 1024
"""Results up to this size may travel inside ``CompleteRequest.inline`` instead of a separate upload."""
MAX_LEASE_BYTES = 1 << 40
"""Most bytes one lease may report moving over one link (1 TiB): a bound on what a car can bill, not a quota."""
MAX_COMPUTE_S = 7 * 24 * 3600.0
"""Most compute seconds one lease may report; the coordinator also holds it to the lease's own lifetime."""
MAX_ITEMS = 1 << 30
"""Most items (or training examples) one report may claim."""
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")

Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the content, 64 lowercase hex digits")]


def is_digest(value: str) -> bool:
    return bool(_DIGEST_RE.match(value))


class _Wire(BaseModel):
    """Strict base: unknown fields are an error, so a typo in a spec never silently does nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorBody(_Wire):
    error: str = Field(description="machine-readable code, e.g. 'hash_mismatch'")
    message: str = Field(description="what was wrong and what would be accepted")
    request_id: str | None = Field(default=None, description="the request's X-Request-ID, to find it in the logs")


# --- artifacts -------------------------------------------------------------------------------------------------


class ArtifactInfo(_Wire):
    digest: Digest
    size: int


class ArtifactRef(_Wire):
    digest: Digest
    size: int = Field(ge=0)
    format: str | None = Field(default=None, description="'npy' or 'jsonl' for item shards, None for opaque files")


# --- vehicles --------------------------------------------------------------------------------------------------


class EnrollRequest(_Wire):
    enrollment_token: str = Field(min_length=1, max_length=512)
    name: str = Field(min_length=1, max_length=128, description="the car's display name, e.g. its VIN suffix")
    hardware: str = Field(description="hardware profile preset: 'hw3', 'ai4' or 'ai5'")
    public_key: str | None = Field(
        default=None, max_length=64,
        description="the car's Ed25519 public key, 32 raw bytes base64url-encoded: every later request must then "
                    "be signed with its private key (X-Fleetgrid-Signature); omitted: the bearer credential alone")


class EnrollResponse(_Wire):
    vehicle_id: str
    credential: str = Field(description="bearer credential for every later call; shown once, stored only hashed")


class StateReport(_Wire):
    """What the car says about itself; the coordinator trusts it for scheduling and the fleet overview only."""

    drive: Literal["driving", "parked", "charging"]
    soc: float = Field(ge=0.0, le=1.0)
    network: Literal["wifi", "cellular", "offline"]
    plugged_in: bool
    eligible: bool
    reasons: list[str] = Field(default_factory=list, max_length=16)
    cellular_used_bytes: int = Field(default=0, ge=0, le=MAX_LEASE_BYTES)
    at: float | None = Field(default=None, allow_inf_nan=False, description="the car's clock time of the reading")


class HeartbeatResponse(_Wire):
    server_time: float
    active_leases: list[str] = Field(description="lease ids the coordinator still holds open for this car")
    policy: dict[str, Any] | None = Field(
        default=None, description="the owner policy (OwnerPolicy's fields) the car's owner set on the coordinator; "
        "the car applies it from now on. Absent: none set there, the car keeps its own")


class LeaseRequest(_Wire):
    state: StateReport
    wait_s: float = Field(default=0.0, ge=0.0, le=60.0, description="long-poll: wait up to this long for work")


class ModelRef(_Wire):
    name: str
    file: ArtifactRef | None = Field(default=None, description="the user's model file, for user-supplied models")


class CheckpointRef(_Wire):
    done_items: int = Field(ge=0)
    digest: Digest = Field(description="partial result (.npy) for the unit's first done_items items")


class LeaseGrant(_Wire):
    lease_id: str
    job_id: str
    unit_index: int
    replica: int
    kind: Literal["inference"] = "inference"
    model: ModelRef
    input: ArtifactRef
    items: int
    batch_size: int
    checkpoint: CheckpointRef | None = None
    deadline: float
    renew_every_s: float


class ModelDelta(_Wire):
    """One step of a training job's global model, stored as an artifact: the encoded downlink delta that takes
    version ``version - 1`` to ``version``."""

    version: int = Field(ge=1, description="the global version this delta leads to, from version - 1")
    digest: Digest
    size: int = Field(ge=0)


class CompactSnapshot(_Wire):
    """A training job's global version quantized (``StrategyConfig.snapshot_bits``), stored as an artifact: a car
    that installs it holds that version approximately, and checks what it decoded against ``params_digest``."""

    digest: Digest
    size: int = Field(ge=0)
    params_digest: Digest = Field(description="params_digest of the params decoded from it (not the version's own "
                                  "model_digest: the compact copy differs from the version by its rounding)")


class SecAggPlan(_Wire):
    """A secure-aggregation round's plan, as the car gets it in its grant (``secagg.RoundPlan`` on the wire): the
    cohort whose masks cancel, the grid every update is quantized on, and how many may drop. Bytes are base64."""

    round_id: str = Field(min_length=1, max_length=200)
    cohort: list[str] = Field(min_length=3, max_length=4096, description="the cars of the round, sorted")
    member: str = Field(description="this car's id in the cohort")
    vector_length: int = Field(ge=1, le=1 << 31)
    clip: float = Field(gt=0, allow_inf_nan=False, description="the L2 norm the update is clipped to")
    bound: float = Field(gt=0, allow_inf_nan=False, description="each coordinate is clamped to [-bound, bound]")
    bits: int = Field(ge=1, le=24, description="bits per quantized coordinate")
    rotation: str | None = Field(default=None, min_length=44, max_length=44,
                                 description="32 bytes, base64: the seed of the random rotation applied before "
                                 "quantizing; null: none")
    max_dropout: float = Field(ge=0, lt=0.5)
    seed: str = Field(min_length=44, max_length=44, description="32 bytes, base64: orders the neighbour graph")


class TrainGrant(_Wire):
    """One car's share of one training round: train the global ``base_version`` for ``local['steps']`` steps on the
    shard it builds itself from ``data`` and ``shard``, then upload the compressed delta as an artifact and report
    it (never the data).

    The global's bytes are artifacts, fetched with ``GET /v1/artifacts/{digest}`` (resumable with ``Range``) like any
    other: ``snapshot`` whole, or, for a car holding an older version N, the ``deltas`` after N when they are all
    listed and weigh less than the snapshot (or than ``compact``, the version quantized, when it is offered: a car
    that is not current then fetches the cheaper of the two, never the float32 snapshot)."""

    kind: Literal["train"] = "train"
    lease_id: str
    job_id: str
    round: int = Field(description="the round attempt; the update must quote it back")
    base_version: int = Field(ge=0, description="global version to train from")
    model_digest: Digest = Field(description="params_digest of that version; a car holding it fetches nothing")
    snapshot: ArtifactRef = Field(description="global version base_version, whole (float32, lossless encoding)")
    deltas: list[ModelDelta] = Field(
        default_factory=list, max_length=256,
        description="the encoded deltas leading to base_version, oldest first and contiguous (may be empty)")
    compact: CompactSnapshot | None = Field(
        default=None, description="global version base_version quantized; when set, a car that is not current and "
        "cannot use the deltas fetches this instead of the snapshot, and then holds the version approximately")
    model: str = Field(description="built-in trainable model, e.g. 'mnist1d-cnn' or 'charlm'")
    local: dict = Field(description="LocalTrainingConfig as JSON: optimizer, lr, steps (H), batch size, compression")
    seed: int = Field(description="seeds the car's batch order")
    data: dict = Field(description="DataSpec as JSON; the car derives its private shard from it")
    shard: int = Field(ge=0, description="which shard of the data spec is this car's")
    deadline: float
    renew_every_s: float
    secagg: SecAggPlan | None = Field(default=None, description="set when the job runs secure aggregation: the "
                                      "update is masked and sent through /v1/train/leases/{id}/secagg/{phase}")


class WorkGrant(_Wire):
    """A lease of any other registered workload (see ``fleetgrid.workloads.base``): the envelope every workload
    shares, with the workload's own grant in ``spec``, which the workload validates with its own typed model. A new
    workload needs no change here."""

    kind: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="the registered workload, e.g. 'evaluate'")
    lease_id: str
    job_id: str
    unit_index: int = Field(ge=0)
    spec: dict = Field(description="the workload's own grant, e.g. which model and shard to evaluate")
    deadline: float
    renew_every_s: float


def _grant_kind(value: object) -> str:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if kind in ("inference", "train") else "work"


Grant = Annotated[
    Annotated[LeaseGrant, Tag("inference")] | Annotated[TrainGrant, Tag("train")] | Annotated[WorkGrant, Tag("work")],
    Discriminator(_grant_kind),
]
"""What POST /v1/leases answers: an inference unit, a share of a training round, or another workload's lease."""


class LeaseAck(_Wire):
    lease_id: str
    state: str
    deadline: float | None = None
    next_lease: Grant | None = Field(default=None, description="the next unit, when the request asked for one")


class UpdateReport(_Wire):
    """A training lease's report (``POST /v1/train/leases/{id}/update``): the update itself is an artifact the car
    uploaded first (``PUT /v1/artifacts/{sha256}``), named here by its digest; this body carries no bytes of it."""

    update: Digest = Field(description="sha256 of the encoded delta (compression.encode output) the car uploaded")
    round: int
    base_version: int = Field(ge=0)
    num_examples: int = Field(ge=1, le=MAX_ITEMS, description="size of the car's local dataset (FedAvg's weight)")
    steps_done: int = Field(ge=0)
    steps_planned: int = Field(ge=1)
    examples_seen: int = Field(ge=0, le=MAX_ITEMS)
    train_loss: float | None = Field(default=None, allow_inf_nan=False)
    preempted: bool = Field(default=False, description="True for a partial update sent when the car was preempted")
    compute_s: float = Field(default=0.0, ge=0.0, le=MAX_COMPUTE_S, allow_inf_nan=False)
    cellular_bytes: int = Field(default=0, ge=0, le=MAX_LEASE_BYTES,
                                description="bytes this lease moved over cellular, this one included")
    wifi_bytes: int = Field(default=0, ge=0, le=MAX_LEASE_BYTES)
    next: LeaseRequest | None = Field(default=None, description="also lease the next work, as POST /v1/leases would")


class ProgressReport(_Wire):
    done_items: int = Field(ge=0)
    checkpoint: Digest | None = Field(default=None, description="partial result uploaded as an artifact")


class CompleteRequest(_Wire):
    """Report a unit done. A small result can ride along (``inline``) and the car can ask for its next unit in the
    same call (``next``): one round trip per unit instead of three, which matters on a cellular link."""

    result: Digest = Field(description="sha256 of the unit's result (.npy): uploaded first, or sent in `inline`")
    inline: str | None = Field(
        default=None, max_length=(MAX_INLINE_RESULT_BYTES + 2) // 3 * 4,
        description=f"the result's bytes, base64, when at most {MAX_INLINE_RESULT_BYTES} bytes",
    )
    next: LeaseRequest | None = Field(default=None, description="also lease the next unit, as POST /v1/leases would")
    compute_s: float = Field(default=0.0, ge=0.0, le=MAX_COMPUTE_S, allow_inf_nan=False,
                             description="seconds this lease computed; at most the time since it was issued")
    cellular_bytes: int = Field(default=0, ge=0, le=MAX_LEASE_BYTES)
    wifi_bytes: int = Field(default=0, ge=0, le=MAX_LEASE_BYTES)


class FailRequest(_Wire):
    reason: str = Field(min_length=1, max_length=1000)
    handback: bool = Field(default=False, description="True when the car was preempted: not the unit's fault")
    done_items: int = Field(default=0, ge=0)
    checkpoint: Digest | None = None
    compute_s: float = Field(default=0.0, ge=0.0, le=MAX_COMPUTE_S, allow_inf_nan=False,
                             description="seconds this lease computed; at most the time since it was issued")
    cellular_bytes: int = Field(default=0, ge=0, le=MAX_LEASE_BYTES)
    wifi_bytes: int = Field(default=0, ge=0, le=MAX_LEASE_BYTES)


# --- tenants ---------------------------------------------------------------------------------------------------


class Redundancy(_Wire):
    """Compute each unit on ``replicas`` different cars; accept once ``quorum`` of them agree within tolerance."""

    replicas: int = Field(default=1, ge=1, le=7)
    quorum: int = Field(default=1, ge=1, le=7)
    # Finite: an infinite tolerance would make any two results agree, garbage included.
    atol: float = Field(default=1e-4, ge=0.0, allow_inf_nan=False)
    rtol: float = Field(default=1e-3, ge=0.0, allow_inf_nan=False)


class JobSubmit(_Wire):
    kind: Literal["inference"] = "inference"
    name: str = Field(default="", max_length=200)
    model: str = Field(description="a registered model name; see GET /v1/models")
    model_file: Digest | None = Field(default=None, description="uploaded TorchScript/torch.export file")
    inputs: Digest = Field(description="uploaded inputs: a .npy array or JSON Lines text")
    input_format: Literal["npy", "jsonl"]
    unit_items: int | None = Field(default=None, ge=1, le=1_000_000)
    batch_size: int | None = Field(default=None, ge=1, le=65_536)
    redundancy: Redundancy = Field(default_factory=Redundancy)

    @field_validator("redundancy")
    @classmethod
    def _quorum_fits(cls, value: Redundancy) -> Redundancy:
        if value.quorum > value.replicas:
            raise ValueError(f"quorum {value.quorum} exceeds replicas {value.replicas}; use 1 <= quorum <= replicas")
        return value


class TrainSubmit(_Wire):
    """A federated training job: which model, how each car derives its data, which strategy, and when to stop."""

    kind: Literal["train"] = "train"
    name: str = Field(default="", max_length=200)
    model: str = Field(description="built-in trainable model: 'mnist1d-cnn' or 'charlm'")
    data: dict = Field(default_factory=dict, description="DataSpec: dataset, num_vehicles (shards), alpha, seed, ...")
    strategy: str = Field(default="fedavg", description="'fedavg', 'fedadam', 'diloco' or 'fedbuff'")
    settings: dict = Field(default_factory=dict, description="the strategy's config as JSON (nested: local, rounds)")
    rounds: int = Field(default=10, ge=1, le=100_000, description="stop after this many global versions")
    target_metric: dict[str, float] | None = Field(
        default=None, description="stop early once every named held-out metric reaches its value, e.g. accuracy")
    init_seed: int = Field(default=0, description="seeds the initial weights")
    eval_max: int = Field(default=2048, ge=1, le=100_000, description="held-out examples scored after each round")


class PrivacyProgress(_Wire):
    """A differentially private training job's privacy so far. The unit is one car's whole data (user-level DP)."""

    mode: str = Field(description="'central' (the coordinator adds the noise) or 'distributed' (each car adds a share)")
    epsilon: float | None = Field(description="epsilon spent at delta by the versions so far (null: unbounded)")
    delta: float
    epsilon_budget: float | None = Field(default=None, description="the job stops before spending more")
    noise_multiplier: float | None = Field(description="sigma: the sum's noise std over clip (null until calibrated)")
    clip: float = Field(description="the L2 bound on one car's update")
    accountant: str = Field(default="rdp", description="'rdp' or 'pld'")
    sampling_rate: float = Field(default=1.0, description="q, the chance a given car is asked in a round")
    stopped_on_budget: bool = Field(default=False, description="the job ended (done) because its budget was spent")


class TrainingProgress(_Wire):
    version: int
    target_versions: int
    round: int
    strategy: str
    bytes_up: int
    bytes_down: int
    reports: int
    rejected: int
    checkpoint: Digest | None
    history: list[dict]
    driver: str | None = Field(default=None, description="the coordinator replica driving the job's rounds")
    partial_updates: int = Field(default=0, description="updates of shares cut short (a car preempted mid-share "
                                 "sending the steps it did) in the versions so far")
    handbacks: int = Field(default=0, description="shares handed back unfinished, with no update (a car "
                           "preempted before it trained, or that could not send)")
    privacy: PrivacyProgress | None = Field(default=None, description="differential privacy spent so far; null "
                                            "when the job runs without it")
    secure_aggregation: bool = Field(default=False, description="each round's updates are masked: the coordinator "
                                     "sees only their sum; the history's secagg_dropped counts each round's dropouts")


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobStatus(_Wire):
    job_id: str
    name: str
    kind: str
    model: str
    state: JobState
    items: int
    units_total: int
    units_done: int
    units_in_flight: int
    reissued_units: int
    preemptions: int
    created_at: float
    finished_at: float | None
    result: Digest | None
    error: str | None
    training: TrainingProgress | None = None
    progress: dict | None = Field(default=None, description="the workload's own progress, e.g. an evaluation's "
                                  "per-car and aggregate metrics so far")


class TenantCreate(_Wire):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")


class TenantCreated(_Wire):
    tenant: str
    token: str


class TenantSummary(_Wire):
    """A tenant as ``GET /v1/tenants`` lists it; tokens are never shown again after creation."""

    name: str
    created_at: float
    revoked: bool


# --- operator --------------------------------------------------------------------------------------------------


class VehicleSummary(_Wire):
    vehicle_id: str
    name: str
    hardware: str
    revoked: bool
    last_seen: float | None
    drive: str | None
    soc: float | None
    network: str | None
    eligible: bool
    active_leases: int


class VehicleReputation(_Wire):
    """How far the coordinator trusts a car's results (see fleetgrid.coordinator.reputation)."""

    vehicle_id: str
    agreed: int = Field(description="results of the car that another car's result confirmed")
    streak: int = Field(description="confirmed results since its last fault (halved by an implausible report)")
    faults: int = Field(description="results of the car that other cars' agreeing results outvoted")
    implausible: int = Field(description="reports that claimed more compute or bytes than the coordinator saw, "
                                         "or work faster than the car's hardware can do it")
    trusted: bool = Field(description="whether its results are released without a check (spot-checked instead)")
    check_rate: float = Field(description="the probability that its next result is verified first")
    suspended: bool
    suspended_reason: str | None = None


class LedgerEntry(_Wire):
    """One car's metered work, summed over its closed leases, each quantity in its own unit."""

    vehicle_id: str
    units: int = Field(description="closed leases")
    items: int = Field(description="inference items computed (a resumed unit counts only what this car computed)")
    examples: int = Field(default=0, description="training and evaluation examples processed on the car")
    steps: int = Field(default=0, description="optimizer steps taken on the car")
    compute_s: float
    cellular_bytes: int
    wifi_bytes: int


class FleetOverview(_Wire):
    vehicles: int
    by_state: dict[str, int]
    eligible_now: int
    online: int
    leases_in_flight: int
    jobs: dict[str, int]
    units_pending: int
    long_polling: int = Field(default=0, description="cars long-polling the coordinator that answered (one replica) "
                                                     "that found no work and wait to be woken")
