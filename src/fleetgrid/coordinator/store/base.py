"""The coordinator's state behind one interface; every method is one atomic transaction.

Several coordinator processes may share one store (replicas on PostgreSQL): every transition checks the state it
leaves inside its transaction and reports whether it happened, so a race between them applies it once.

Like Flower's state backends, there is one abstract class and implementations chosen by a factory
(:func:`fleetgrid.coordinator.store.open_store`); one contract test suite runs against each backend. Records are
plain dataclasses; the store never decides policy (quorums, re-issue limits): the scheduler does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..reputation import Reputation, Verdict
from .billing_base import BillingState
from .history_base import FleetHistory
from .identity_base import IdentityState
from .secagg_base import SecAggState

__all__ = [
    "ArtifactRecord",
    "GangSeat",
    "JobRecord",
    "LeaseRecord",
    "LedgerRecord",
    "OnWork",
    "Store",
    "TenantRecord",
    "UnitRecord",
    "VehicleRecord",
]

T = TypeVar("T")

OnWork = Callable[[int | None, tuple[str, ...]], None]
"""``on_work(units, vehicles)``: ``units`` new units anyone may take (None: an unknown amount, so every waiting car
should look) and work offered to ``vehicles`` by name."""


@dataclass(slots=True)
class VehicleRecord:
    vehicle_id: str
    name: str
    hardware: str
    credential_hash: str
    enrolled_at: float
    revoked: bool = False
    last_seen: float | None = None
    state: dict[str, Any] | None = None
    eligible: bool = False
    public_key: str | None = None
    """The car's Ed25519 public key (base64url), sent at enrollment; None for cars enrolled before keys."""
    suspended_at: float | None = None
    """Set while the car is suspended (by the operator or automatically): every request of it is refused."""
    suspended_reason: str | None = None

    @property
    def suspended(self) -> bool:
        return self.suspended_at is not None


@dataclass(slots=True)
class JobRecord:
    job_id: str
    tenant: str
    name: str
    kind: str
    model: str
    spec: dict[str, Any]
    items: int
    units_total: int
    created_at: float
    state: str = "queued"
    units_done: int = 0
    reissued_units: int = 0
    preemptions: int = 0
    finished_at: float | None = None
    result_digest: str | None = None
    error: str | None = None
    checkpoint_digest: str | None = None
    """Training jobs: the strategy checkpoint of global version ``units_done``."""
    driver: str | None = None
    """Training jobs: the coordinator replica whose claim to drive the job's rounds is the latest."""


@dataclass(slots=True)
class UnitRecord:
    unit_id: str
    job_id: str
    idx: int
    replica: int
    start_item: int
    end_item: int
    input_digest: str
    input_format: str
    replicas: int = 1
    state: str = "pending"  # pending | leased | done | cancelled
    attempts: int = 0
    vehicle_id: str | None = None
    checkpoint_items: int = 0
    checkpoint_digest: str | None = None
    result_digest: str | None = None
    target_vehicle: str | None = None
    """Only this vehicle may lease the unit (a share of a training round offered to one car)."""
    offer_expires: float | None = None
    """A targeted unit not leased by then is no longer on offer (its round loop offers the share elsewhere)."""
    payload: dict[str, Any] | None = None
    """The workload's own description of the unit (a training share's instructions)."""
    gang: str | None = None
    """GANG placement: the gang whose units are leased to that many different cars all at once."""
    gang_size: int | None = None
    """How many units (cars) the gang has."""

    @property
    def items(self) -> int:
        return self.end_item - self.start_item


@dataclass(slots=True)
class LeaseRecord:
    lease_id: str
    unit_id: str
    job_id: str
    vehicle_id: str
    issued_at: float
    deadline: float
    state: str = "active"  # active | completed | failed | handed_back | expired | cancelled
    result_digest: str | None = None
    closed_at: float | None = None
    resumed_items: int = 0
    """Items of the unit's checkpoint when the lease was issued: computed (and metered) under an earlier lease."""


@dataclass(slots=True)
class LedgerRecord:
    lease_id: str
    vehicle_id: str
    job_id: str
    items: int
    compute_s: float
    cellular_bytes: int
    wifi_bytes: int
    at: float
    accepted: bool = True
    workload: str | None = None
    """'inference' or 'train'; None where the caller did not say."""
    examples: int = 0
    """Training examples seen."""
    steps: int = 0
    """Optimizer steps taken."""
    tokens: int = 0
    """Tokens generated or read (priced per 1,000)."""
    rejected: str | None = None
    """Why work the car reported is not paid (its replica lost the quorum); None while it stands."""
    plugged_in: bool | None = None
    """Whether the car was plugged in when the lease closed, as it last said; None if not known."""


@dataclass(slots=True)
class GangSeat:
    """A car's place in a gang: the member held for it while the gang forms, or its lease once the gang is full."""

    unit: UnitRecord
    lease: LeaseRecord | None = None
    """None while the gang forms: the car waits, and no member is leased to anyone."""
    others: list[str] = field(default_factory=list)
    """When this car's seat filled the gang: the cars whose leases were issued with its own (to wake)."""


@dataclass(slots=True)
class ArtifactRecord:
    digest: str
    size: int
    created_at: float
    owners: list[str] = field(default_factory=list)


class Store(BillingState, IdentityState, FleetHistory, SecAggState, ABC):
    """Everything the coordinator must not lose. Implementations must make each method atomic."""

    # --- secrets and tenants ------------------------------------------------------------------------------------
    @abstractmethod
    def get_secret(self, name: str) -> str | None:
        """A stored credential hash by role name ('enroll', 'operator')."""

    @abstractmethod
    def set_secret(self, name: str, value_hash: str) -> None: ...

    @abstractmethod
    def add_tenant(self, name: str, token_hash: str, now: float, *, replace: bool = False) -> None:
        """Raises Conflict if the tenant exists, unless ``replace`` (which sets its token)."""

    @abstractmethod
    def tenant_by_token_hash(self, token_hash: str) -> str | None: ...

    # --- vehicles -----------------------------------------------------------------------------------------------
    @abstractmethod
    def add_vehicle(self, vehicle: VehicleRecord) -> None: ...

    @abstractmethod
    def get_vehicle(self, vehicle_id: str) -> VehicleRecord | None: ...

    @abstractmethod
    def list_vehicles(self) -> list[VehicleRecord]: ...

    @abstractmethod
    def revoke_vehicle(self, vehicle_id: str) -> bool:
        """Returns False if there is no such vehicle."""

    # --- reputation (coordinator/reputation.py) -----------------------------------------------------------------
    @abstractmethod
    def get_reputation(self, vehicle_id: str) -> Reputation:
        """The car's counters (all zero if none of its results was ever checked)."""

    @abstractmethod
    def list_reputations(self) -> list[Reputation]:
        """Every car's counters that any check touched, by vehicle id."""

    @abstractmethod
    def record_verdicts(self, verdicts: Sequence[tuple[str, Verdict]], now: float) -> None:
        """Apply (vehicle id, verdict) pairs as increments to the cars' counters in one transaction (see
        :meth:`Reputation.after`): racing coordinators never lose one."""

    @abstractmethod
    def unverified_results(self, vehicle_id: str, kinds: Sequence[str]) -> list[UnitRecord]:
        """The car's accepted results that no other result confirmed (the only done replica of their unit), in
        running jobs of ``kinds``: what is recomputed when the car is caught."""

    @abstractmethod
    def known_answer(self, vehicle_id: str, kinds: Sequence[str]) -> UnitRecord | None:
        """A done replica of a unit whose accepted result at least two results confirmed, in a running job of
        ``kinds``, of a unit the car never leased (the latest such): a unit whose answer the coordinator knows
        and the car cannot have seen."""

    @abstractmethod
    def add_urgent_units(self, units: list[UnitRecord]) -> None:
        """Add units that any car asking for work gets before every other pending unit (a replica verifying a
        result: the sooner it is done, the sooner the car that computed the result is trusted or caught)."""

    @abstractmethod
    def reopen_unit(self, job_id: str, idx: int, replica: UnitRecord) -> bool:
        """Withdraw the accepted result of unit ``idx`` of a running job (its done count drops by one) and add
        ``replica`` to compute it again, urgent (see :meth:`add_urgent_units`), atomically; False (nothing
        changed) if it was not accepted or the job is no longer running."""

    @abstractmethod
    def report_state(self, vehicle_id: str, state: dict[str, Any], eligible: bool, now: float) -> None: ...

    @abstractmethod
    def report_states(self, rows: Sequence[tuple[str, dict[str, Any], bool, float]]) -> None:
        """Many cars' (vehicle_id, state, eligible, seen at) in one transaction."""

    # --- artifacts ----------------------------------------------------------------------------------------------
    @abstractmethod
    def add_artifact(self, digest: str, size: int, owner: str, now: float) -> None:
        """Record an artifact (idempotent) and grant ``owner`` ('tenant:NAME' or 'vehicle:ID') access to it."""

    @abstractmethod
    def add_artifacts(self, items: list[tuple[str, int]], owner: str, now: float) -> None:
        """Record many (digest, size) artifacts for one owner in one transaction."""

    @abstractmethod
    def get_artifact(self, digest: str) -> ArtifactRecord | None: ...

    @abstractmethod
    def owns(self, owner: str, digest: str) -> bool:
        """True if ``owner`` uploaded (or was granted) the artifact."""

    @abstractmethod
    def vehicle_may_read(self, vehicle_id: str, digest: str) -> bool:
        """True if the digest is an input, model file or checkpoint of one of the vehicle's active leases, or an
        artifact owned by the job of one of them (owner ``'job:ID'``: a training job's global versions)."""

    @abstractmethod
    def release_artifacts(self, owner: str, digests: Sequence[str] | None = None) -> list[str]:
        """Take away ``owner``'s hold on these artifacts (on all of its artifacts when ``digests`` is None), in one
        transaction; the records of those no one else holds are removed too, and their digests returned, for the
        caller to remove their files."""

    # --- jobs and units -----------------------------------------------------------------------------------------
    @abstractmethod
    def create_job(self, job: JobRecord, units: list[UnitRecord], artifacts: Sequence[tuple[str, int]] = ()) -> None:
        """Store a job and all its units in one transaction, with the (digest, size) ``artifacts`` it was cut into
        (its input shards), owned by the job's tenant."""

    @abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def list_jobs(self, tenant: str | None = None) -> list[JobRecord]: ...

    @abstractmethod
    def units_of(self, job_id: str, idx: int | None = None) -> list[UnitRecord]: ...

    @abstractmethod
    def count_units(self, job_id: str, state: str) -> int:
        """How many of a job's units (replicas counted) are in ``state``."""

    @abstractmethod
    def get_unit(self, unit_id: str) -> UnitRecord | None: ...

    @abstractmethod
    def add_units(self, units: list[UnitRecord]) -> None:
        """Extra replicas for a unit whose results disagreed."""

    @abstractmethod
    def accept_unit(self, job_id: str, idx: int, result_digest: str) -> bool:
        """Record the accepted result of logical unit ``idx``; False if it was already accepted."""

    @abstractmethod
    def accepted_results(self, job_id: str) -> list[tuple[int, str]]:
        """(idx, result digest) of every accepted unit, in index order."""

    @abstractmethod
    def finish_job(self, job_id: str, state: str, now: float, result_digest: str | None = None,
                   error: str | None = None, *, meter: Callable[[LeaseRecord], LedgerRecord] | None = None) -> bool:
        """Close a queued or running job; its pending and leased units are cancelled, and so are their active
        leases, each with the usage row ``meter`` makes of it (in the same transaction; none without ``meter``).
        False (and no change) if the job was already finished."""

    @abstractmethod
    def save_checkpoint(self, job_id: str, version: int, digest: str,
                        consumed: Sequence[tuple[int, str]] = (), driver: str | None = None) -> bool:
        """A training job reached global ``version``, checkpointed as artifact ``digest`` (stored beforehand); in
        the same transaction the (idx, result digest) of every update folded in (or dropped) since the last
        checkpoint are marked consumed, so a restart re-feeds exactly the acknowledged updates not yet in it.
        With ``driver``, only if that replica still drives the job and the version is new (False otherwise, and
        nothing is written): a replica that lost the job can never save a version twice."""

    # --- units offered to one car (training) --------------------------------------------------------------------
    @abstractmethod
    def offer_units(self, units: list[UnitRecord]) -> None:
        """Store units each offered to its ``target_vehicle`` until ``offer_expires``."""

    @abstractmethod
    def live_offers(self, job_id: str, now: float) -> list[str]:
        """The target vehicles of the job's units still on offer or leased."""

    @abstractmethod
    def cancel_open_units(self, job_id: str, now: float) -> int:
        """Cancel the job's pending and leased units and their active leases (a training round closed); the job
        itself stays as it is. Returns how many units."""

    @abstractmethod
    def cancel_expired_offers(self, now: float) -> int:
        """Cancel offered units nobody took by their ``offer_expires``."""

    @abstractmethod
    def unconsumed_results(self, job_id: str) -> list[UnitRecord]:
        """The job's done units whose results were not yet marked consumed, oldest first."""

    @abstractmethod
    def retire_unit(self, unit_id: str, now: float, meter: Callable[[LeaseRecord], LedgerRecord]) -> bool:
        """Cancel one pending or leased unit (a serving replica no longer needed) and its active lease, which
        ``meter`` turns into its usage row, in one transaction; False if the unit was not live."""

    @abstractmethod
    def next_unit_idx(self, job_id: str) -> int:
        """One more than the job's largest unit index (0 for none)."""

    # --- which replica drives a job -----------------------------------------------------------------------------
    single_process: bool = False
    """True when no other coordinator can use this store (SQLite, locked to one process)."""

    @abstractmethod
    def claim_job(self, job_id: str, replica: str, now: float, until: float) -> bool:
        """Make ``replica`` the driver of a live job until ``until``, if no other replica's claim is still valid
        (renewing its own); False if another replica drives it."""

    @abstractmethod
    def drop_claim(self, job_id: str, replica: str) -> None:
        """Give up driving a job (a replica stopping), so another takes over at once."""

    @abstractmethod
    def recently_eligible(self, since: float) -> list[str]:
        """Vehicles not revoked that reported themselves eligible at or after ``since``."""

    # --- leases -------------------------------------------------------------------------------------------------
    @abstractmethod
    def acquire(self, vehicle_id: str, now: float, deadline: float, lease_id: str, *,
                offers: bool = True) -> tuple[LeaseRecord, UnitRecord] | None:
        """Lease a unit offered to this vehicle first (unless ``offers`` is False: none can exist), else the oldest
        pending unit of a live job to the vehicle (never two replicas of one unit to one car,
        never one unit twice); None if there is none. Raises AuthError if the vehicle is revoked, NotFound if it
        is not enrolled: checked in the same transaction, so a revocation by another coordinator holds at once."""

    @abstractmethod
    def start_job(self, job_id: str) -> None:
        """Mark a queued job running (its first lease was issued); no change in any other state."""

    @abstractmethod
    def get_lease(self, lease_id: str) -> LeaseRecord | None: ...

    @abstractmethod
    def lease_context(self, lease_id: str) -> tuple[LeaseRecord, UnitRecord, JobRecord] | None:
        """A lease with its unit and job, read together."""

    @abstractmethod
    def active_leases(self, vehicle_id: str | None = None) -> list[LeaseRecord]: ...

    @abstractmethod
    def renew(self, lease_id: str, deadline: float) -> None: ...

    @abstractmethod
    def record_progress(self, lease_id: str, done_items: int, checkpoint_digest: str | None) -> None: ...

    @abstractmethod
    def complete(self, lease: LeaseRecord, unit: UnitRecord, result_digest: str, ledger: LedgerRecord, now: float,
                 *, accept: bool = False, artifact: tuple[int, str] | None = None,
                 blob: bytes | None = None) -> JobRecord:
        """Close the lease as completed, mark its unit done and write one ledger row, atomically; with ``accept``
        also accept the result as its logical unit's (when no quorum is needed); with ``artifact`` (size, owner)
        also record the result artifact (a file); with ``blob``, store the result's bytes themselves (a small
        result sent inline; :meth:`result_blob` reads them). Updates ``lease`` and ``unit`` and returns the job
        after.
        Raises LeaseExpired / Conflict, recording nothing, if the lease is no longer active (unless it was
        completed with this same result: a retry, which returns the job unchanged)."""

    @abstractmethod
    def result_blob(self, digest: str) -> bytes | None:
        """A small result's bytes stored by :meth:`complete`; None if there is no such blob."""

    @abstractmethod
    def release(self, lease_id: str, state: str, now: float, *, preempted: bool,
                checkpoint: tuple[int, str] | None = None, ledger_entry: LedgerRecord | None = None,
                requeue: bool = True, gang_usage: Callable[[LeaseRecord], LedgerRecord] | None = None) -> bool:
        """Close an active lease (failed / handed_back / expired) and put its unit back to pending for re-issue
        (or, without ``requeue``, cancel it: a training share is offered afresh by its round loop).
        With ``gang_usage``, a unit of a gang restarts its gang: the other members' active leases are cancelled,
        each with the usage row ``gang_usage`` makes of it, and every member not done goes back to pending.
        False, changing nothing, if the lease was closed already (by a completion or another sweep), or if its
        gang is being changed by another transaction that this one (running in a batch) must not wait for."""

    # --- gangs --------------------------------------------------------------------------------------------------
    @abstractmethod
    def gangs_live(self) -> bool:
        """Whether any unit of a gang is pending or leased (else leasing skips the gang look-ups)."""

    @abstractmethod
    def gang_seat(self, vehicle_id: str, now: float) -> GangSeat | None:
        """The car's lease of a gang that filled since it last asked (handed over once: a second call does not
        return it again), else the member held for it while its gang forms, else None."""

    @abstractmethod
    def join_gang(self, vehicle_id: str, now: float, hold_until: float, deadline: float,
                  new_lease_id: Callable[[], str]) -> GangSeat | None:
        """Keep the car's held seat until ``hold_until``, or else take a free seat of the oldest forming gang for
        it until then; if that was the gang's last free seat, lease every member at once, each to the car holding
        it (leases named by ``new_lease_id``, due at ``deadline``), and return this car's. None if there is no
        gang with a free seat. A car holds one seat at a time; no member is leased unless all of its gang is."""

    @abstractmethod
    def drop_holds(self, vehicle_id: str) -> None:
        """The car gives up any member held for it (it took other work, or is no longer eligible)."""

    @abstractmethod
    def expired_leases(self, now: float) -> list[LeaseRecord]: ...

    @abstractmethod
    def record_ledger(self, entry: LedgerRecord) -> None:
        """One metering row for work done outside the unit tables (a training lease); idempotent per lease."""

    # --- metering and overview ----------------------------------------------------------------------------------
    @abstractmethod
    def ledger_totals(self, start: float | None = None, end: float | None = None) -> list[dict[str, Any]]:
        """Per-vehicle sums: units, items, compute_s, cellular_bytes, wifi_bytes (Python ints and a finite float,
        whatever the rows hold: a sum never overflows), of the rows closed in ``[start, end)`` (default: all)."""

    @abstractmethod
    def counts(self) -> dict[str, Any]:
        """Jobs by state, pending units and active leases, for the fleet overview."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # --- group commit -------------------------------------------------------------------------------------------
    def batched(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` (which calls this store's methods) with other callers' in one transaction, each in a
        savepoint of its own; its future resolves once that transaction committed. A store without group commit
        runs it at once, in its own transactions."""
        future: Future[T] = Future()
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the current batch (see :meth:`batched`) committed; at once outside a batch."""
        fn()

    # --- wake-ups across coordinator processes ------------------------------------------------------------------
    def listen_for_work(self, on_work: OnWork) -> Callable[[], None]:
        """Call ``on_work`` (from another thread) whenever another coordinator process on this store makes work
        leasable: new units, units put back to pending, units offered to named cars. Returns what stops it.

        A store only one process may use (here: every store but PostgreSQL's) has nothing to listen for, as its one
        coordinator wakes its waiting cars itself."""
        return _nothing_to_stop

    # --- tenant administration --------------------------------------------------------------------------------
    @abstractmethod
    def list_tenants(self) -> list[TenantRecord]:
        """Every tenant, revoked ones included, by name."""

    @abstractmethod
    def revoke_tenant(self, name: str) -> str | None:
        """Make the tenant's token unusable; returns the token hash it had (for caches to drop), None if there is
        no such tenant. Revoking twice is harmless."""


@dataclass(slots=True)
class TenantRecord:
    name: str
    created_at: float
    revoked: bool = False


def _nothing_to_stop() -> None:
    pass
