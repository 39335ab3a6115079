"""The pure pieces of a training job's round loop (``coordinator/rounds.py``)."""

from __future__ import annotations

import pytest

from fleetgrid.coordinator.rounds import car_shards, partial_updates
from fleetgrid.errors import InvalidInput


@pytest.mark.parametrize(("rank", "cars", "shards", "owned"), [
    (0, 1, 8, [0, 1, 2, 3, 4, 5, 6, 7]),  # a lone car holds the whole split
    (1, 3, 8, [1, 4, 7]),
    (2, 3, 8, [2, 5]),
    (5, 8, 8, [5]),  # as many cars as shards: one each
    (9, 10, 8, [1]),  # more cars than shards: shared, by rank modulo the shards
    (0, 1, 1, [0]),
])
def test_each_shard_belongs_to_one_car_and_every_car_has_one(rank, cars, shards, owned):
    assert car_shards(rank, cars, shards) == owned


def test_the_shards_of_all_cars_cover_the_split_once_when_cars_are_fewer():
    for cars in range(1, 9):
        held = [s for rank in range(cars) for s in car_shards(rank, cars, 8)]
        assert sorted(held) == list(range(8)), cars


def test_a_split_needs_a_shard():
    with pytest.raises(InvalidInput, match="at least 1 shard"):
        car_shards(0, 1, 0)


def test_partial_updates_are_summed_over_the_versions():
    history = [{"version": 0}, {"version": 1, "partial": 2}, {"version": 2, "partial": 0}, {"version": 3}]
    assert partial_updates(history) == 2
