"""The fastest a car's declared computer could have done the work a report claims: a floor on the compute-seconds,
from its hardware profile's peak INT8 throughput and memory bandwidth, below which the claim is implausible."""

from __future__ import annotations

from dataclasses import dataclass

from ..core import Usage
from ..vehicle.hardware import HardwareProfile

__all__ = ["HEADROOM", "TIMER_GRACE_S", "TRAIN_OPS_FACTOR", "Work", "min_seconds", "work_of"]

HEADROOM = 2.0
"""How much faster than its profile's peak a car may claim to be. The profiles' figures are the low ends of what is
reported (AI4: 243 of 243-500 TOPS; AI5: 2,000 of 2,000-2,500; /work/shared/fleet-params.md), so the fastest real
board is about 2x its preset; a claim beyond that is no board's."""
TIMER_GRACE_S = 0.01
"""Seconds a report may fall short of the floor: a car's timer resolution and rounding, so that small units of
cheap models are never judged on microseconds."""
TRAIN_OPS_FACTOR = 3.0
"""A training example costs at least a forward and a backward pass, the backward about twice the forward (Kaplan
et al. 2020, the usual 6N-per-token against 2N for the forward)."""


@dataclass(frozen=True, slots=True)
class Work:
    """The least a report's claimed work costs any computer."""

    ops: float
    """Arithmetic operations (a multiply and an add count as two, as FLOP counters count them)."""
    bytes: float
    """Bytes of memory it must read at least once: the inputs it was given."""


def work_of(usage: Usage, *, ops_per_item: float, input_bytes: int, training: bool = False) -> Work:
    """The work ``usage`` claims: its items and examples at ``ops_per_item`` each (the model's forward pass; times
    :data:`TRAIN_OPS_FACTOR` when ``training``), reading ``input_bytes``."""
    per = ops_per_item * (TRAIN_OPS_FACTOR if training else 1.0)
    return Work(ops=per * (usage.items + usage.examples), bytes=float(input_bytes))


def min_seconds(work: Work, profile: HardwareProfile) -> float:
    """Seconds ``profile``'s computer needs at the least for ``work``, running at :data:`HEADROOM` times its peak:
    whichever of its arithmetic (INT8 TOPS; no float op is cheaper) and its memory traffic (bandwidth) takes
    longer."""
    compute = work.ops / (profile.int8_tops * 1e12 * HEADROOM)
    memory = work.bytes / (profile.memory_bandwidth_gbs * 1e9 * HEADROOM)
    return max(compute, memory)
