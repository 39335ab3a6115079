"""The AI computers cars carry, as named profiles with sourced figures (see /work/shared/fleet-params.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fleetgrid.errors import InvalidInput

__all__ = ["CAR_AWAKE_OVERHEAD_WATTS", "PRESETS", "HardwareProfile", "get_profile"]

CAR_AWAKE_OVERHEAD_WATTS = 250.0
"""Power a parked car draws just to stay awake while its computer works, on top of the computer's own ``watts``.

Model 3 measured 263 W awake, 315 W with Sentry (electricvehiclewiki); TeslaMate issue #87 reports 200-230 W.
Range 200-320 W.
"""


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    """One car computer (the whole board): peak INT8 throughput, memory, and the power it draws at that peak.

    ``int8_tops`` and ``watts`` are board totals. ``memory_gib`` and ``memory_bandwidth_gbs`` are what the
    source reports; for AI4 that is per chip, which is also the most one model replica can count on.
    ``source`` says where each figure comes from and which are estimates.
    """

    name: str
    int8_tops: float
    memory_gib: float
    memory_bandwidth_gbs: float
    watts: float
    source: str

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidInput("hardware profile name is empty; give a short name such as 'ai4'")
        for field_name in ("int8_tops", "memory_gib", "memory_bandwidth_gbs", "watts"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise InvalidInput(
                    f"hardware profile {self.name!r}: {field_name} must be a finite number > 0, got {value!r}"
                )
            object.__setattr__(self, field_name, float(value))


PRESETS: dict[str, HardwareProfile] = {
    "hw3": HardwareProfile(
        name="hw3",
        int8_tops=144.0,
        memory_gib=8.0,
        memory_bandwidth_gbs=68.0,
        watts=72.0,
        source=(
            "144 TOPS INT8 / 72 W: Tesla Autonomy Day 2019 (reported by autonomousvehicletech.com); "
            "8 GiB LPDDR4 at ~68 GB/s: WikiChip 'FSD chip', guru3d"
        ),
    ),
    "ai4": HardwareProfile(
        name="ai4",
        int8_tops=243.0,
        memory_gib=16.0,
        memory_bandwidth_gbs=384.0,
        watts=100.0,
        source=(
            "~243 TOPS INT8 (est, 2 x 121.6; range 243-500) / ~100 W (range 80-160 W): teslanewsdaily, 42how (2023); "
            "16 GiB GDDR6 per chip at ~384 GB/s: tff-forum HW4 wiki, letsdatascience (2026)"
        ),
    ),
    "ai5": HardwareProfile(
        name="ai5",
        int8_tops=2000.0,
        memory_gib=144.0,
        memory_bandwidth_gbs=1920.0,
        watts=200.0,
        source=(
            "AI5-class, all estimates: 2,000 TOPS INT8 is the low end of the 2,000-2,500 leak (notebookcheck) and "
            "matches Musk's '8x AI4' (All-In Summit, Sept 2025); 144 GiB and 1,920 GB/s are his '9x memory, "
            "5x memory bandwidth' applied to AI4's 16 GiB and 384 GB/s; 200 W is the middle of the 150-250 W "
            "claimed (Musk's '~1 kW per car' is for later chips)"
        ),
    ),
}
"""The computers the fleet carries, keyed by short name. Figures and their sources: /work/shared/fleet-params.md."""

_ALIASES = {"hw4": "ai4"}


def get_profile(name: str) -> HardwareProfile:
    """The preset named ``name`` (case-insensitive; ``hw4`` is accepted for ``ai4``)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return PRESETS[key]
    except KeyError:
        raise InvalidInput(f"unknown hardware profile {name!r}; accepted: {', '.join(sorted(PRESETS))}") from None
