"""The trust policy and the report cross-checks, as pure functions, against hand-worked cases."""

from __future__ import annotations

import pytest

from fleetgrid.coordinator.metering import Seen, cross_check
from fleetgrid.coordinator.reports import fastest_s
from fleetgrid.coordinator.reputation import Reputation, TrustPolicy, Verdict
from fleetgrid.coordinator.throughput import Work, min_seconds, work_of
from fleetgrid.core import Usage
from fleetgrid.errors import InvalidInput
from fleetgrid.vehicle.hardware import get_profile

POLICY = TrustPolicy(trust_after=5, floor_rate=0.05, max_faults=2)


def _after(*verdicts: Verdict) -> Reputation:
    rep = Reputation("v")
    for i, verdict in enumerate(verdicts):
        rep = rep.after(verdict, float(i))
    return rep


def test_every_result_of_an_untrusted_car_is_checked():
    for streak in range(5):
        rep = Reputation("v", agreed=streak, streak=streak)
        assert not POLICY.trusted(rep) and POLICY.check_rate(rep) == 1.0
        assert POLICY.needs_check(rep, 0.999999)


def test_the_check_rate_falls_with_the_streak_to_the_floor():
    rates = [POLICY.check_rate(Reputation("v", agreed=s, streak=s)) for s in (5, 10, 20, 50, 1000)]
    assert rates == pytest.approx([1.0, 0.25, 0.0625, 0.05, 0.05])
    rep = Reputation("v", agreed=10, streak=10)
    assert POLICY.needs_check(rep, 0.2) and not POLICY.needs_check(rep, 0.3)


def test_a_fault_resets_the_streak_and_an_implausible_report_halves_it():
    rep = _after(*[Verdict.AGREED] * 9)
    assert (rep.agreed, rep.streak) == (9, 9) and POLICY.trusted(rep)
    rep = rep.after(Verdict.IMPLAUSIBLE, 10.0)
    assert (rep.streak, rep.implausible, rep.agreed) == (4, 1, 9) and not POLICY.trusted(rep)
    rep = rep.after(Verdict.FAULT, 11.0)
    assert (rep.streak, rep.faults, rep.agreed, rep.updated_at) == (0, 1, 9, 11.0)
    assert POLICY.check_rate(rep) == 1.0  # checked again on every result


def test_a_car_is_caught_by_a_first_wrong_result_or_a_second_fault():
    assert POLICY.should_suspend(_after(Verdict.FAULT))  # new car, first checked result wrong
    assert POLICY.should_suspend(_after(Verdict.AGREED, Verdict.FAULT, Verdict.FAULT))
    assert not POLICY.should_suspend(_after(*[Verdict.AGREED] * 8, Verdict.FAULT))  # one slip of a good record
    assert POLICY.should_suspend(_after(*[Verdict.AGREED] * 8, Verdict.FAULT, Verdict.FAULT))
    assert not POLICY.should_suspend(_after(*[Verdict.IMPLAUSIBLE] * 5))  # implausible reports only lower trust


@pytest.mark.parametrize("bad", [{"trust_after": 0}, {"floor_rate": 0.0}, {"floor_rate": 1.5}, {"max_faults": 0}])
def test_a_bad_policy_is_refused_naming_the_field(bad):
    with pytest.raises(InvalidInput, match=next(iter(bad))):
        TrustPolicy(**bad)


def test_a_report_within_what_was_seen_stands():
    usage = Usage(items=8, accelerator_s=9.5, cellular_bytes=1000, wifi_bytes=3000)
    assert cross_check(usage, Seen(held_s=9.0, payload_bytes=1000)) == (usage, [])  # within the 1 s grace


def test_compute_beyond_the_lease_is_clamped_to_it_and_named():
    usage, problems = cross_check(Usage(accelerator_s=30.0), Seen(held_s=10.0, payload_bytes=0))
    assert usage.accelerator_s == 10.0
    assert [p.reason for p in problems] == ["compute_s"] and "compute_s 30.0" in str(problems[0])


def test_bytes_beyond_what_the_lease_could_move_are_clamped_keeping_the_split():
    seen = Seen(held_s=10.0, payload_bytes=1000)
    assert seen.bytes_max == 4 * 1000 + (1 << 20)
    usage, problems = cross_check(Usage(cellular_bytes=1 << 30, wifi_bytes=3 << 30), seen)
    assert usage.cellular_bytes + usage.wifi_bytes == seen.bytes_max
    assert usage.cellular_bytes == seen.bytes_max // 4
    assert [p.reason for p in problems] == ["bytes"] and "bytes" in str(problems[0])


def test_the_hardware_floor_is_the_slower_of_arithmetic_and_memory_at_twice_the_peak():
    ai4 = get_profile("ai4")  # 243 TOPS, 384 GB/s
    assert min_seconds(Work(ops=486e12, bytes=0.0), ai4) == pytest.approx(1.0)
    assert min_seconds(Work(ops=0.0, bytes=768e9), ai4) == pytest.approx(1.0)
    assert min_seconds(Work(ops=486e12, bytes=7680e9), ai4) == pytest.approx(10.0)
    assert min_seconds(Work(ops=486e12, bytes=0.0), get_profile("hw3")) == pytest.approx(243 / 144)


def test_training_counts_a_forward_and_a_backward_pass_per_example():
    assert work_of(Usage(examples=10), ops_per_item=1e5, input_bytes=0, training=True).ops == pytest.approx(3e6)
    assert work_of(Usage(items=10), ops_per_item=1e5, input_bytes=64).ops == pytest.approx(1e6)


def test_work_claimed_faster_than_the_hardware_can_is_cut_to_what_it_could_do():
    usage = Usage(items=1_000_000, steps=40, tokens=500, accelerator_s=0.1)
    clamped, problems = cross_check(usage, Seen(held_s=1.0, payload_bytes=0, fastest_s=11.0))
    assert [p.reason for p in problems] == ["throughput"]
    assert (clamped.items, clamped.steps, clamped.tokens) == (10_000, 0, 5)  # (0.1 + 0.01) / 11 of each
    assert clamped.accelerator_s == 0.1
    assert cross_check(usage, Seen(held_s=1.0, payload_bytes=0, fastest_s=0.11)) == (usage, [])  # timer grace


def test_a_million_minilm_items_in_a_tenth_of_a_second_is_no_hw3s_but_may_be_an_ai5s():
    claim = Usage(items=1_000_000, accelerator_s=0.1)  # 4.2e13 operations at least
    on_hw3 = fastest_s("hw3", claim, model="minilm-l6-v2", input_bytes=0)
    assert on_hw3 == pytest.approx(4.2e13 / (144e12 * 2))  # 0.146 s: more than claimed
    clamped, problems = cross_check(claim, Seen(held_s=1.0, payload_bytes=0, fastest_s=on_hw3))
    assert [p.reason for p in problems] == ["throughput"] and clamped.items == int(1e6 * 0.11 / on_hw3)
    on_ai5 = fastest_s("ai5", claim, model="minilm-l6-v2", input_bytes=0)
    assert cross_check(claim, Seen(held_s=1.0, payload_bytes=0, fastest_s=on_ai5)) == (claim, [])
    assert fastest_s("no-such-board", claim, model="minilm-l6-v2", input_bytes=0) == 0.0  # nothing to hold it to
    assert fastest_s("ai4", claim, model="torchscript", input_bytes=768_000_000) == pytest.approx(1e-3)  # bytes only
