"""bench/trust_secagg.py on micro cases, so the benchmark cannot rot."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import trust_secagg as ts  # noqa: E402


def test_a_bytes_row_is_exact_and_counts_both_directions():
    row = ts.bytes_row(8, 0.3, 1000)
    assert row["exact"] is True
    assert (row["k"], row["t"], row["mod_bits"]) == (7, 4, 11)
    assert row["up_B"] > 1000 * 11 / 8 and row["down_B"] > 0
    assert row["plain_up_B"] == 1000 + 2 + len("car00")
    assert row["up_ratio"] == pytest.approx(row["up_B"] / row["plain_up_B"], abs=1e-3)


@pytest.fixture(scope="module")
def fleet():
    return ts.Fleet.build(8)


def test_training_through_secure_aggregation_equals_the_plain_sum(fleet):
    secagg = ts.train(fleet, 1, mode="secagg", dropout=0.25)
    plain = ts.train(fleet, 1, mode="plain", dropout=0.25)
    assert secagg["inexact_rounds"] == 0
    assert secagg["accuracy"] == plain["accuracy"]


def test_the_group_norm_check_drops_the_group_of_a_scaling_attacker(fleet):
    attacked = ts.train(fleet, 1, mode="secagg", attack="scale20", group_size=4, check_norms=True)
    clean = ts.train(fleet, 1, mode="secagg", group_size=4, check_norms=True)
    assert attacked["dropped_groups"] == 1  # one attacker in 8 cars, groups of 4
    assert clean["dropped_groups"] == 0
