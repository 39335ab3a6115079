"""The vehicle agent's settings: one keyword-only dataclass, each field documented and checked where it is declared."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from fleetgrid.errors import InvalidInput
from fleetgrid.vehicle.hardware import get_profile
from fleetgrid.vehicle.policy import OwnerPolicy

__all__ = ["AgentConfig"]


@dataclass(kw_only=True)
class AgentConfig:
    """How one car's agent talks to the coordinator and when it works.

    Intervals named ``*_s`` are wall seconds: they pace calls to the coordinator, which keeps wall time (its lease
    deadlines and ``renew_every_s`` are wall seconds too). Only the car's own state and the data plan's calendar
    month follow the agent's clock, which a demo may run at ``--clock-speed 1440``.
    """

    coordinator: str
    """Base URL of the coordinator, e.g. ``https://grid.example:8443`` (the ``/v1`` prefix is added)."""
    state_dir: Path
    """Where the agent keeps its credential, data-plan counts, stats, model cache and work files."""
    enrollment_token: str | None = None
    """One-time token to enroll with; not needed once the state dir holds a credential."""
    name: str = "fleetgrid-car"
    """The car's display name on the coordinator."""
    hardware: str = "ai4"
    """Hardware profile preset: 'hw3', 'ai4' or 'ai5'."""
    policy: OwnerPolicy = field(default_factory=OwnerPolicy)
    """The owner's settings: opt-in, charge floor, hours, cellular cap."""
    heartbeat_interval_s: float = 15.0
    """Seconds between state reports (the coordinator counts a car online for 60 s after its last one)."""
    poll_interval_s: float = 1.0
    """Pause after an empty answer that did not hold the long-poll, and the base of the back-off after a network
    error (doubling up to 16 times this)."""
    lease_wait_s: float = 10.0
    """Long-poll: how long the coordinator may hold a lease request open (wall seconds on the server, <= 60)."""
    progress_interval_s: float = 10.0
    """Seconds between progress reports, each with a checkpoint uploaded if the data plan allows it."""
    monitor_interval_s: float = 0.005
    """Wall seconds between reads of the vehicle bus: the floor of the preemption latency."""
    threads: int | None = None
    """Torch intra-op threads in the worker; None leaves torch's default."""
    verify: bool | str = True
    """TLS: True checks against system CAs, a path checks against that CA bundle, False does not check (tests)."""
    timeout_s: float = 10.0
    """Per-request timeout in wall seconds (a long-poll gets ``lease_wait_s`` on top)."""
    max_units: int | None = None
    """Stop after this many completed units (demos and tests); None runs until told to stop."""

    def __post_init__(self) -> None:
        if not self.coordinator.startswith(("http://", "https://")):
            raise InvalidInput(f"coordinator URL {self.coordinator!r} must start with http:// or https://")
        self.state_dir = Path(self.state_dir)
        if self.enrollment_token is not None and not self.enrollment_token:
            raise InvalidInput("enrollment token is empty; pass the token the operator issued, or None")
        if not 1 <= len(self.name) <= 128:
            raise InvalidInput(f"car name must be 1 to 128 characters, got {len(self.name)}")
        self.hardware = get_profile(self.hardware).name
        for name in ("heartbeat_interval_s", "poll_interval_s", "progress_interval_s", "monitor_interval_s",
                     "timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InvalidInput(f"agent {name} must be a number of seconds > 0, got {value!r}")
        if not 0 <= self.lease_wait_s <= 60:
            raise InvalidInput(f"agent lease_wait_s must be in [0, 60] seconds, got {self.lease_wait_s!r}")
        if self.threads is not None and self.threads < 1:
            raise InvalidInput(f"agent threads must be >= 1 or None (torch's default), got {self.threads!r}")
        if self.max_units is not None and self.max_units < 1:
            raise InvalidInput(f"agent max_units must be >= 1 or None (run until stopped), got {self.max_units!r}")
