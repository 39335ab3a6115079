"""The fleet simulator: what a fleet of parked cars' AI computers delivers hour by hour, and at what cost.

A vectorised, event-based model (:func:`simulate_fleet`) with a slow minute-stepped twin
(:func:`simulate_reference`) that a test holds it to; sourced defaults in :class:`FleetConfig`; scenarios, the
pitch table, trace export for the simulated vehicle bus, and the ``fleetgrid simulate`` command.
"""

from __future__ import annotations

from fleetgrid.sim.params import FleetConfig
from fleetgrid.sim.pitch import pitch_markdown, pitch_rows
from fleetgrid.sim.reference import simulate_reference
from fleetgrid.sim.runner import check_run, simulate_fleet
from fleetgrid.sim.scenarios import RANGES, SCENARIOS, apply_overrides, load_scenario
from fleetgrid.sim.summary import summarise, time_series
from fleetgrid.sim.tally import STATES, Tally
from fleetgrid.sim.traces import export_traces, iter_traces

__all__ = [
    "RANGES",
    "SCENARIOS",
    "STATES",
    "FleetConfig",
    "Tally",
    "apply_overrides",
    "check_run",
    "export_traces",
    "iter_traces",
    "load_scenario",
    "pitch_markdown",
    "pitch_rows",
    "simulate_fleet",
    "simulate_reference",
    "summarise",
    "time_series",
]
