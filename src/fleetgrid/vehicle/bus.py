"""The vehicle bus: where the agent reads the car's state. A real car's integration implements
:class:`VehicleBus`; tests set state by hand on :class:`ManualVehicleBus`; demos and the simulator replay a day
trace on a clock with :class:`SimulatedVehicleBus`.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from abc import ABC, abstractmethod
from typing import Any

from fleetgrid.clock import Clock
from fleetgrid.errors import InvalidInput
from fleetgrid.vehicle.schedule import VehicleTrace, load_traces
from fleetgrid.vehicle.soc import (
    BATTERY_KWH,
    CHARGER_KW,
    CHARGING_EFFICIENCY,
    DRIVING_KWH_PER_MINUTE,
    DayProfile,
    Mode,
)
from fleetgrid.vehicle.state import SECONDS_PER_DAY, DriveState, Network, VehicleState
from fleetgrid.vehicle.synthetic import synthetic_trace

__all__ = ["ManualVehicleBus", "SimulatedVehicleBus", "VehicleBus", "load_bus", "synthetic_trace"]


class VehicleBus(ABC):
    """The car's side of the agent: one call that says what the car is doing now."""

    @abstractmethod
    def read_state(self) -> VehicleState:
        """The car's state now."""

    def next_change(self) -> float | None:
        """Clock time of the next known state change, or None when the bus cannot tell (so the agent polls)."""
        return None


class ManualVehicleBus(VehicleBus):
    """State held in memory and changed with :meth:`set`. Thread-safe.

    With a ``clock``, every read is stamped with ``clock.now()`` (so the local hour follows the clock); without
    one, ``at`` is whatever was last set. :meth:`set` keeps the state physically consistent: driving unplugs,
    charging plugs in, and unplugging a charging car parks it, unless the change names ``plugged_in`` or
    ``drive`` itself.
    """

    def __init__(self, state: VehicleState | None = None, clock: Clock | None = None) -> None:
        self.clock = clock
        if state is None:
            at = clock.now() if clock is not None else 0.0
            state = VehicleState(drive=DriveState.PARKED, soc=0.8, network=Network.WIFI, plugged_in=False, at=at)
        self._state = state
        self._lock = threading.Lock()

    def _stamped(self, state: VehicleState) -> VehicleState:
        return state if self.clock is None else dataclasses.replace(state, at=self.clock.now())

    def read_state(self) -> VehicleState:
        with self._lock:
            return self._stamped(self._state)

    def set(self, **changes: Any) -> VehicleState:
        """Change some fields of the state (``drive``, ``soc``, ``network``, ``plugged_in``, ``at``); returns it."""
        accepted = [f.name for f in dataclasses.fields(VehicleState)]
        unknown = sorted(set(changes) - set(accepted))
        if unknown:
            raise InvalidInput(f"unknown vehicle state fields {unknown}; accepted: {', '.join(accepted)}")
        with self._lock:
            if "drive" in changes and "plugged_in" not in changes:
                try:
                    drive = DriveState(changes["drive"])
                except ValueError:
                    drive = None  # VehicleState rejects it below, naming the accepted values
                if drive is DriveState.DRIVING:
                    changes["plugged_in"] = False
                elif drive is DriveState.CHARGING:
                    changes["plugged_in"] = True
            unplugging = changes.get("plugged_in") is False and "drive" not in changes
            if unplugging and self._state.drive is DriveState.CHARGING:
                changes["drive"] = DriveState.PARKED
            state = dataclasses.replace(self._state, **changes)
            if "at" not in changes:
                state = self._stamped(state)
            self._state = state
            return state


class SimulatedVehicleBus(VehicleBus):
    """Replays a trace's days on a clock: day ``i`` of the trace is the ``i``-th local day from ``day0``'s.

    - drive: DRIVING in a trip; plugged in, CHARGING until the battery is full, then PARKED with ``plugged_in``;
      otherwise PARKED.
    - network: WIFI inside a Wi-Fi interval, else ``off_wifi_network`` (CELLULAR unless told OFFLINE; the car's
      modem is up while driving too).
    - soc: each day starts at that day's ``soc_start`` and follows :class:`~fleetgrid.vehicle.soc.DayProfile`:
      ``kwh_per_driving_minute`` drained while driving, ``charger_kw * charging_efficiency`` added while
      plugged, flat while parked unplugged. Days do not carry charge over: the trace's ``soc_start`` rules.

    ``day0`` is any time on the trace's first day (default: the clock's time now); the replay starts at that
    day's local midnight, so trace minutes and :attr:`VehicleState.local_hour` agree.
    """

    def __init__(
        self,
        trace: VehicleTrace,
        clock: Clock,
        battery_kwh: float = BATTERY_KWH,
        kwh_per_driving_minute: float = DRIVING_KWH_PER_MINUTE,
        charger_kw: float = CHARGER_KW,
        day0: float | None = None,
        *,
        charging_efficiency: float = CHARGING_EFFICIENCY,
        off_wifi_network: Network = Network.CELLULAR,
    ) -> None:
        _positive("battery_kwh", battery_kwh)
        _positive("kwh_per_driving_minute", kwh_per_driving_minute, allow_zero=True)
        _positive("charger_kw", charger_kw, allow_zero=True)
        _positive("charging_efficiency", charging_efficiency)
        if charging_efficiency > 1:
            raise InvalidInput(f"charging_efficiency is a fraction in (0, 1], got {charging_efficiency!r}")
        if off_wifi_network not in (Network.CELLULAR, Network.OFFLINE):
            raise InvalidInput(f"off_wifi_network must be 'cellular' or 'offline', got {off_wifi_network!r}")
        self.trace = trace
        self.clock = clock
        self.off_wifi_network = Network(off_wifi_network)
        start = clock.now() if day0 is None else day0
        _positive("day0", start, allow_zero=True, allow_negative=True)
        self.day0 = math.floor(start / SECONDS_PER_DAY) * SECONDS_PER_DAY
        self.drain_per_s = kwh_per_driving_minute / 60 / battery_kwh
        self.charge_per_s = charger_kw * charging_efficiency / 3600 / battery_kwh
        self._profiles: dict[int, DayProfile] = {}
        self._changes: dict[int, tuple[int, ...]] = {}

    def _profile(self, index: int) -> DayProfile:
        key = index % len(self.trace.days)
        profile = self._profiles.get(key)
        if profile is None:
            profile = DayProfile.build(self.trace.days[key], self.drain_per_s, self.charge_per_s)
            self._profiles[key] = profile
        return profile

    def _change_seconds(self, index: int) -> tuple[int, ...]:
        key = index % len(self.trace.days)
        points = self._changes.get(key)
        if points is None:
            wifi = {m * 60 for interval in self.trace.days[key].wifi for m in interval}
            points = tuple(sorted(wifi.union(self._profile(key).change_seconds()) - {SECONDS_PER_DAY}))
            self._changes[key] = points
        return points

    def _locate(self, t: float) -> tuple[int, float]:
        index = math.floor((t - self.day0) / SECONDS_PER_DAY)
        second = t - self.day0 - index * SECONDS_PER_DAY
        return index, min(max(second, 0.0), SECONDS_PER_DAY - 1e-6)  # guard float rounding at midnight

    def state_at(self, t: float) -> VehicleState:
        """The state the trace gives at clock time ``t`` (what :meth:`read_state` returns when the clock says ``t``)."""
        index, second = self._locate(t)
        segment = self._profile(index).segment_at(second)
        if segment.mode is Mode.DRIVING:
            drive = DriveState.DRIVING
        elif segment.charging(second):
            drive = DriveState.CHARGING
        else:
            drive = DriveState.PARKED
        on_wifi = self.trace.day(index).on_wifi(second / 60)
        return VehicleState(
            drive=drive,
            soc=segment.soc(second, self.drain_per_s, self.charge_per_s),
            network=Network.WIFI if on_wifi else self.off_wifi_network,
            plugged_in=segment.mode is Mode.PLUGGED,
            at=t,
        )

    def read_state(self) -> VehicleState:
        return self.state_at(self.clock.now())

    def next_change(self) -> float | None:
        """Clock time after now when drive, network or plug status next changes; None if they never do."""
        now = self.clock.now()
        current = _discrete(self.state_at(now))
        index, _ = self._locate(now)
        # The trace repeats, so a change, if any, shows within one full cycle after today.
        for day in range(index, index + len(self.trace.days) + 2):
            day_start = self.day0 + day * SECONDS_PER_DAY
            for second in self._change_seconds(day):
                t = day_start + second
                if t > now and _discrete(self.state_at(t)) != current:
                    return t
        return None


def _discrete(state: VehicleState) -> tuple[DriveState, Network, bool]:
    return state.drive, state.network, state.plugged_in


def _positive(name: str, value: Any, *, allow_zero: bool = False, allow_negative: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if ok and not allow_negative:
        ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = "a finite number" if allow_negative else ("a number >= 0" if allow_zero else "a number > 0")
        raise InvalidInput(f"simulated vehicle bus {name} must be {bound}, got {value!r}")


_BUS_SPECS = "'trace:FILE#VEHICLE_ID', 'trace:FILE' (a file of one vehicle), 'synthetic:SEED' or 'manual'"


def load_bus(spec: str, clock: Clock) -> VehicleBus:
    """A bus from a short spec: ``trace:FILE#VEHICLE_ID``, ``trace:FILE``, ``synthetic:SEED`` (a week of
    :func:`synthetic_trace` days for vehicle ``synthetic-SEED``) or ``manual``."""
    kind, _, rest = str(spec).partition(":")
    if kind == "manual" and not rest:
        return ManualVehicleBus(clock=clock)
    if kind == "synthetic" and rest:
        try:
            seed = int(rest)
        except ValueError:
            raise InvalidInput(f"vehicle bus spec {spec!r}: SEED must be an integer; accepted: {_BUS_SPECS}") from None
        return SimulatedVehicleBus(synthetic_trace(f"synthetic-{seed}", seed, days=7), clock)
    if kind == "trace" and rest:
        path, _, vehicle_id = rest.partition("#")
        try:
            traces = load_traces(path)
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"vehicle bus spec {spec!r}: cannot read traces from {path!r}: {exc}") from exc
        if vehicle_id:
            matches = [t for t in traces if t.vehicle_id == vehicle_id]
        else:
            matches = traces if len(traces) == 1 else []
        if not matches:
            ids = [t.vehicle_id for t in traces]
            shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            wanted = f"no vehicle {vehicle_id!r}" if vehicle_id else f"{len(ids)} vehicles, name one with #VEHICLE_ID"
            raise InvalidInput(f"vehicle bus spec {spec!r}: {path} holds {wanted}; vehicles there: {shown or 'none'}")
        return SimulatedVehicleBus(matches[0], clock)
    raise InvalidInput(f"vehicle bus spec {spec!r} is not understood; accepted: {_BUS_SPECS}")
