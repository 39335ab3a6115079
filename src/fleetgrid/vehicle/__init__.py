"""Vehicle model: hardware, owner policy, live state, eligibility and the vehicle bus."""

from fleetgrid.vehicle.bus import ManualVehicleBus, SimulatedVehicleBus, VehicleBus, load_bus
from fleetgrid.vehicle.dataplan import DataPlan
from fleetgrid.vehicle.eligibility import Eligibility, check_eligibility, is_eligible
from fleetgrid.vehicle.hardware import CAR_AWAKE_OVERHEAD_WATTS, PRESETS, HardwareProfile, get_profile
from fleetgrid.vehicle.policy import OwnerPolicy
from fleetgrid.vehicle.schedule import DaySchedule, VehicleTrace, load_traces, save_traces
from fleetgrid.vehicle.state import DriveState, Network, VehicleState
from fleetgrid.vehicle.synthetic import synthetic_trace

__all__ = [
    "CAR_AWAKE_OVERHEAD_WATTS",
    "DataPlan",
    "DaySchedule",
    "DriveState",
    "Eligibility",
    "HardwareProfile",
    "ManualVehicleBus",
    "Network",
    "OwnerPolicy",
    "PRESETS",
    "SimulatedVehicleBus",
    "VehicleBus",
    "VehicleState",
    "VehicleTrace",
    "check_eligibility",
    "get_profile",
    "is_eligible",
    "load_bus",
    "load_traces",
    "save_traces",
    "synthetic_trace",
]
