from __future__ import annotations

import pytest

from fleetgrid.errors import InvalidInput
from fleetgrid.vehicle.hardware import CAR_AWAKE_OVERHEAD_WATTS, PRESETS, HardwareProfile, get_profile


def test_presets_carry_the_figures_from_fleet_params() -> None:
    assert sorted(PRESETS) == ["ai4", "ai5", "hw3"]
    hw3, ai4, ai5 = PRESETS["hw3"], PRESETS["ai4"], PRESETS["ai5"]
    assert (hw3.int8_tops, hw3.watts, hw3.memory_gib, hw3.memory_bandwidth_gbs) == (144, 72, 8, 68)
    assert (ai4.int8_tops, ai4.watts, ai4.memory_gib, ai4.memory_bandwidth_gbs) == (243, 100, 16, 384)
    # AI5 per Musk: ~8x compute, 9x memory, 5x bandwidth of AI4.
    assert ai5.int8_tops / ai4.int8_tops == pytest.approx(8, rel=0.05)
    assert ai5.memory_gib == 9 * ai4.memory_gib
    assert ai5.memory_bandwidth_gbs == 5 * ai4.memory_bandwidth_gbs
    assert 150 <= ai5.watts <= 250
    assert CAR_AWAKE_OVERHEAD_WATTS == 250


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_names_its_source_and_key(name: str) -> None:
    profile = PRESETS[name]
    assert profile.name == name
    assert len(profile.source) > 40


@pytest.mark.parametrize(("asked", "name"), [("ai4", "ai4"), ("AI5", "ai5"), (" hw3 ", "hw3"), ("HW4", "ai4")])
def test_get_profile(asked: str, name: str) -> None:
    assert get_profile(asked) is PRESETS[name]


def test_get_profile_names_the_accepted_profiles() -> None:
    with pytest.raises(InvalidInput, match=r"unknown hardware profile 'h100'; accepted: ai4, ai5, hw3"):
        get_profile("h100")


@pytest.mark.parametrize("field", ["int8_tops", "memory_gib", "memory_bandwidth_gbs", "watts"])
def test_profile_figures_must_be_positive(field: str) -> None:
    figures = {"int8_tops": 1.0, "memory_gib": 1.0, "memory_bandwidth_gbs": 1.0, "watts": 1.0, field: 0}
    with pytest.raises(InvalidInput, match=rf"{field} must be a finite number > 0, got 0"):
        HardwareProfile(name="x", source="test", **figures)
