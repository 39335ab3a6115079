import fleetgrid.vehicle as vehicle


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert vehicle.__all__ == sorted(vehicle.__all__)
    for name in vehicle.__all__:
        assert getattr(vehicle, name) is not None


def test_the_agreed_names_are_public() -> None:
    agreed = {
        "HardwareProfile",
        "PRESETS",
        "get_profile",
        "OwnerPolicy",
        "DriveState",
        "Network",
        "VehicleState",
        "Eligibility",
        "check_eligibility",
        "is_eligible",
        "DataPlan",
        "VehicleBus",
        "ManualVehicleBus",
        "SimulatedVehicleBus",
        "synthetic_trace",
        "load_bus",
    }
    assert agreed <= set(vehicle.__all__)
