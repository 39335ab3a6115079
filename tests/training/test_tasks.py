import pytest

from fleetgrid.errors import InvalidInput, UnknownModel
from fleetgrid.workloads.training.flat import FlatLayout
from fleetgrid.workloads.training.tasks import DataSpec, build_local_dataset, build_model


def test_unknown_model_and_same_seed_same_initial_weights():
    with pytest.raises(UnknownModel, match="accepted"):
        build_model("resnet-9000")
    a, b = build_model("charlm", seed=4), build_model("charlm", seed=4)
    assert FlatLayout.of(a).flatten(a).equal(FlatLayout.of(b).flatten(b))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dataset": "imagenet"}, "unknown dataset"),
        ({"alpha": 0}, "alpha"),
        ({"alpha": -2.0}, "alpha"),
        ({"num_vehicles": 0}, "num_vehicles"),
    ],
)
def test_impossible_data_specs(kwargs, match):
    with pytest.raises(InvalidInput, match=match):
        DataSpec(**kwargs)


def test_a_shard_the_car_cannot_build_is_refused():
    spec = DataSpec(dataset="stdlib_text", num_vehicles=50, max_files=5)
    with pytest.raises(InvalidInput, match="vehicles"):
        build_local_dataset(spec, 0)
    with pytest.raises(InvalidInput, match="vehicle_index"):
        build_local_dataset(DataSpec(dataset="stdlib_text", num_vehicles=2, max_files=8), 2)
    shard = build_local_dataset(DataSpec(dataset="stdlib_text", num_vehicles=2, max_files=8, block_size=16), 1)
    assert len(shard) > 1000
