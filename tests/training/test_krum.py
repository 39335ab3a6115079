"""(Multi-)Krum against hand-computed scores, its n >= 2f + 3 precondition, and the strategy using it."""

import pytest
import torch

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.aggregate import krum_selected
from fleetgrid.workloads.training.config import FedAvgConfig, RobustConfig, RoundConfig
from fleetgrid.workloads.training.robust import robust_combine

# Five 2-D points; with f = 1 each is scored by its n - f - 2 = 2 nearest neighbours' squared distances:
#   a (0,0): b 1, c 4            -> 5
#   b (1,0): a 1, c 1            -> 2
#   c (2,0): b 1, d 1            -> 2
#   d (3,0): c 1, b 4            -> 5
#   e (100,0): d 9409, c 9604    -> 19013
POINTS = [torch.tensor([float(x), 0.0]) for x in (0, 1, 2, 3, 100)]


def test_krum_picks_the_point_closest_to_its_neighbours():
    assert krum_selected(POINTS, f=1) == [1]  # b and c tie at 2; the lower index wins


def test_multi_krum_picks_the_m_best_scores_and_never_the_outlier():
    assert krum_selected(POINTS, f=1, m=3) == [1, 2, 0]
    assert krum_selected(POINTS, f=1, m=4) == [1, 2, 0, 3]


def test_robust_combine_averages_the_multi_krum_selection_counting_each_once():
    config = RobustConfig(aggregator="krum", byzantine=1, multi_krum=3, norm_bound="off")
    combined, metrics = robust_combine(POINTS, [1.0, 1.0, 1.0, 1.0, 1e9], config)
    torch.testing.assert_close(combined, torch.tensor([1.0, 0.0]))  # mean of a, b, c; weights do not buy votes
    assert metrics["clipped"] == 0


def test_krum_refuses_fewer_than_2f_plus_3_updates():
    with pytest.raises(InvalidInput, match=r"byzantine f=1 needs n >= 2f \+ 3 = 5 updates, got n=4"):
        krum_selected(POINTS[:4], f=1)
    with pytest.raises(InvalidInput, match=r"f=2 needs n >= 2f \+ 3 = 7"):
        krum_selected(POINTS, f=2)


def test_multi_krum_refuses_m_beyond_n_minus_f():
    with pytest.raises(InvalidInput, match=r"multi-Krum m must be an integer in \[1, n - f = 4\], got 5"):
        krum_selected(POINTS, f=1, m=5)


def test_a_krum_config_needs_rounds_that_can_hold_2f_plus_3_reports():
    with pytest.raises(InvalidInput, match=r"needs n >= 2f \+ 3 = 7 updates every round, but min_reports=5"):
        FedAvgConfig(robust=RobustConfig(aggregator="krum", byzantine=2),
                     rounds=RoundConfig(clients_per_round=8, min_reports=5))
    with pytest.raises(InvalidInput, match="multi_krum m=5 can exceed n - f"):
        FedAvgConfig(robust=RobustConfig(aggregator="krum", byzantine=1, multi_krum=5),
                     rounds=RoundConfig(clients_per_round=8, min_reports=5))
    ok = FedAvgConfig(robust=RobustConfig(aggregator="krum", byzantine=1, multi_krum=3),
                      rounds=RoundConfig(clients_per_round=8, min_reports=5))
    assert ok.robust.byzantine == 1
    with pytest.raises(InvalidInput, match="byzantine f must be an integer >= 0"):
        RobustConfig(aggregator="krum", byzantine=-1)
