"""Whether a car may lend its computer right now: pure rules over the owner's policy and the car's state.

The rules, each giving one reason when it fails:

1. the owner has opted in;
2. the car is not driving;
3. on battery, the state of charge is at or above the owner's floor. The floor does not apply while the car is
   plugged in (charging, or full and still plugged): the work then draws from the grid and can only slow
   charging, never drain the battery, which is what the floor protects;
4. if the owner allows work only while plugged in, the car is plugged in;
5. the local hour falls in the owner's allowed hours;
6. the car is online (Wi-Fi or cellular). Whether bytes may move over cellular is the data plan's question
   (:mod:`fleetgrid.vehicle.dataplan`), not eligibility's: a car on cellular may compute on work it holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetgrid.vehicle.policy import OwnerPolicy
from fleetgrid.vehicle.state import DriveState, Network, VehicleState

__all__ = ["Eligibility", "check_eligibility", "is_eligible"]


@dataclass(frozen=True, slots=True)
class Eligibility:
    """The verdict and, when not eligible, every reason why, in rule order."""

    eligible: bool
    reasons: tuple[str, ...] = ()


def _clock_time(hour: float) -> str:
    minutes = int(hour * 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _two_fractions(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` to two decimals, or as many more as it takes to tell them apart."""
    for digits in range(2, 7):
        sa, sb = f"{a:.{digits}f}", f"{b:.{digits}f}"
        if sa != sb:
            break
    return sa, sb


def check_eligibility(policy: OwnerPolicy, state: VehicleState) -> Eligibility:
    reasons: list[str] = []
    if not policy.opt_in:
        reasons.append("the owner has not opted in")
    if state.drive is DriveState.DRIVING:
        reasons.append("driving")
    if not state.plugged_in and state.soc < policy.min_soc:
        soc, floor = _two_fractions(state.soc, policy.min_soc)
        reasons.append(f"state of charge {soc} below the owner's floor {floor}")
    if policy.plugged_in_only and not state.plugged_in:
        reasons.append("not plugged in, and the owner allows work only while plugged in")
    if not policy.in_allowed_hours(state.local_hour):
        start, end = policy.allowed_hours
        reasons.append(
            f"local time {_clock_time(state.local_hour)} outside the owner's allowed hours {start:02d}:00-{end:02d}:00"
        )
    if state.network is Network.OFFLINE:
        reasons.append("offline")
    return Eligibility(eligible=not reasons, reasons=tuple(reasons))


def is_eligible(policy: OwnerPolicy, state: VehicleState) -> bool:
    return check_eligibility(policy, state).eligible
