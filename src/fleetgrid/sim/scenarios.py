"""Named scenarios, scenario files (TOML) and ``--set key=value`` overrides, all applied to one FleetConfig.

A scenario is a set of overrides on the sourced defaults. The optimistic and pessimistic ones take each knob to
the end of its range in ``shared/fleet-params.md``; :data:`RANGES` lists those ranges for the tornado chart.
Unknown keys are errors that name the key and the accepted ones, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleetgrid.errors import InvalidInput
from fleetgrid.sim.params import FleetConfig, HardwareParams

__all__ = [
    "HARDWARE_PRESETS",
    "RANGES",
    "RANGE_LABELS",
    "SCENARIOS",
    "apply_overrides",
    "hardware_mix",
    "load_scenario",
    "parse_assignments",
]

# Back-of-envelope ranges (fleet-params.md): home charging 0.7-0.9, plugged in 0.3-0.7, Wi-Fi 0.6-0.9, opt-in
# 0.2-0.8; thermal 0.85-0.95 and utilisation 0.4-0.8 (est). plug_in_prob 0.2 / 0.6 / 0.9 gives a share of time
# plugged in at home of ~0.3 / 0.5 / 0.7 in the time-structured model.
SCENARIOS: dict[str, dict[str, Any]] = {
    "central": {},
    "optimistic": {
        "charging": {"home_charging": 0.9, "plug_in_prob": 0.9, "plugged_share": 0.7},
        "connectivity": {"wifi_reach": 0.9},
        "owner": {"opt_in": 0.8},
        "operation": {"thermal_derate": 0.95, "utilisation": 0.8},
    },
    "pessimistic": {
        "charging": {"home_charging": 0.7, "plug_in_prob": 0.2, "plugged_share": 0.3},
        "connectivity": {"wifi_reach": 0.6},
        "owner": {"opt_in": 0.2},
        "operation": {"thermal_derate": 0.85, "utilisation": 0.4},
    },
}

# (low, high) for the tornado chart: each knob's range from fleet-params.md ("est" where it says so).
RANGES: dict[str, tuple[float, float]] = {
    "charging.home_charging": (0.7, 0.9),
    "charging.plug_in_prob": (0.2, 0.9),
    "connectivity.wifi_reach": (0.6, 0.9),
    "owner.opt_in": (0.2, 0.8),
    "operation.thermal_derate": (0.85, 0.95),
    "operation.utilisation": (0.4, 0.8),
    "driving.trips_per_day": (2.0, 3.0),
    "charging.soc_floor": (0.1, 0.3),
    "charging.charge_limit": (0.7, 0.9),
}
# Each range's knob in words, for the tornado chart's axis.
RANGE_LABELS: dict[str, str] = {
    "charging.home_charging": "share of cars with a home charger",
    "charging.plug_in_prob": "chance of plugging in after the last trip",
    "connectivity.wifi_reach": "share of cars within home Wi-Fi reach",
    "owner.opt_in": "share of owners who opt in",
    "operation.thermal_derate": "thermal derate (share of board power)",
    "operation.utilisation": "scheduler utilisation (share of available time at work)",
    "driving.trips_per_day": "trips a day",
    "charging.soc_floor": "battery floor below which cars do not compute",
    "charging.charge_limit": "charge limit (share of battery)",
}

HARDWARE_PRESETS: dict[str, dict[str, float]] = {
    "mix": {"hw3": 0.48, "ai4": 0.52},
    "hw3": {"hw3": 1.0},
    "ai4": {"ai4": 1.0},
    "ai5": {"ai5": 1.0},
    "future_1kw": {"future_1kw": 1.0},
}


def hardware_mix(spec: str) -> dict[str, float]:
    """``ai4``, ``future_1kw`` (a preset) or ``hw3:0.4,ai4:0.6`` (shares) -> the ``hardware.mix`` mapping."""
    if spec in HARDWARE_PRESETS:
        return dict(HARDWARE_PRESETS[spec])
    mix: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, share = part.partition(":")
        try:
            mix[name.strip()] = float(share) if sep else math.nan
        except ValueError:
            mix[name.strip()] = math.nan
        if math.isnan(mix[name.strip()]):
            raise InvalidInput(
                f"--hardware {spec!r}: {part!r} is not NAME:SHARE; accepted: one of "
                f"{', '.join(HARDWARE_PRESETS)} or shares like hw3:0.4,ai4:0.6 over "
                f"{', '.join(HardwareParams.class_names())}"
            )
    return mix


def _coerce(key: str, current: Any, value: Any) -> Any:
    """Turn a TOML or command-line value into the type of the field it replaces."""
    want = "true or false" if isinstance(current, bool) else type(current).__name__
    try:
        if isinstance(current, bool):
            if isinstance(value, bool):
                return value
            raise TypeError
        if isinstance(current, int) and not isinstance(value, bool):
            if float(value) != int(value):
                raise ValueError
            return int(value)
        if isinstance(current, float) and not isinstance(value, bool | str):
            return float(value)
        if isinstance(current, tuple) and isinstance(value, list | tuple):
            return tuple(float(v) for v in value)
        if isinstance(current, dict) and isinstance(value, Mapping):
            return {str(k): float(v) for k, v in value.items()}
    except (TypeError, ValueError):
        pass
    shape = {
        "tuple": "a list of numbers",
        "dict": "a table of name = number",
        "float": "a number",
    }
    raise InvalidInput(f"{key} = {value!r} has the wrong type; accepted: {shape.get(want, want)}")


def apply_overrides(config: Any, overrides: Mapping[str, Any], prefix: str = "") -> Any:
    """A copy of ``config`` (a dataclass) with ``overrides`` (nested mappings) applied and re-validated."""
    names = [f.name for f in dataclasses.fields(config)]
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise InvalidInput(f"unknown scenario key {dotted!r}; accepted keys here: {', '.join(names)}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise InvalidInput(f"{dotted} is a section; accepted: a table of {dotted}.<key> = value")
            changes[key] = apply_overrides(current, value, f"{dotted}.")
        else:
            changes[key] = _coerce(dotted, current, value)
    try:
        return dataclasses.replace(config, **changes)
    except InvalidInput as exc:
        if prefix == "" or "<class>" not in exc.message:
            raise
        raise InvalidInput(exc.message.replace("hardware.<class>", prefix.rstrip("."))) from exc


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``["owner.opt_in=0.3", "hardware.mix={ai4=1}"]`` -> nested mapping; values are TOML literals."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"--set {item!r} is not KEY=VALUE; accepted: e.g. --set owner.opt_in=0.3")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()  # a bare word; the field's type check will name what is accepted
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def load_scenario(name_or_path: str | Path) -> FleetConfig:
    """A named scenario (``central``, ``optimistic``, ``pessimistic``) or a TOML file of overrides, which may
    start from a named one with a top-level ``base = "pessimistic"``."""
    name = str(name_or_path)
    if name in SCENARIOS:
        return apply_overrides(FleetConfig(), SCENARIOS[name])
    path = Path(name)
    if not path.is_file():
        raise InvalidInput(
            f"scenario {name!r} is neither a named scenario nor a file; accepted: {', '.join(SCENARIOS)} or a "
            "path to a .toml file"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"scenario file {str(path)!r} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise InvalidInput(
            f"scenario file {str(path)!r} cannot be read ({exc.strerror or exc}); accepted: a readable .toml file"
        ) from exc
    base = data.pop("base", "central")
    if base not in SCENARIOS:
        raise InvalidInput(f"scenario file {str(path)!r}: base = {base!r}; accepted: {', '.join(SCENARIOS)}")
    return apply_overrides(load_scenario(base), data)
