import numpy as np
import pytest
import torch

from fleetgrid.errors import InvalidInput
from fleetgrid.models.registry import get_model_spec, load_runner
from fleetgrid.workloads.inference import run_items, run_local
from fleetgrid.workloads.inputs import assemble, decode_result, encode_result, shard

torch.set_num_threads(1)

X = np.random.default_rng(0).normal(size=(300, 40)).astype(np.float32)


@pytest.fixture(scope="module")
def cnn():
    return load_runner("mnist1d-cnn", threads=1)


class Recording:
    """A fake model that remembers its batches: output row i is (item index, batch size)."""

    spec = get_model_spec("mnist1d-cnn")

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []

    def __call__(self, batch):
        first = int(batch[0, 0])
        self.batches.append((first, first + len(batch)))
        return np.stack([batch[:, 0], np.full(len(batch), len(batch), np.float32)], axis=1)


INDEXED = np.repeat(np.arange(10, dtype=np.float32)[:, None], 40, axis=1)  # item i is all i


@pytest.mark.parametrize("batch_size", [1, 7, 64, 300])
def test_batch_splits_agree_with_one_pass(cnn, batch_size):
    with torch.inference_mode():
        reference = cnn.model(torch.from_numpy(X)).numpy()
    out = run_items(cnn, X, batch_size)
    assert out.shape == (300, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)


def test_batches_start_on_fixed_multiples_whatever_the_start():
    model = Recording()
    run_items(model, INDEXED, batch_size=4, start=3)
    assert model.batches == [(3, 4), (4, 8), (8, 10)]


def test_on_batch_reports_items_done_and_the_rows_of_this_call():
    calls = []
    out = run_items(Recording(), INDEXED, 4, start=2, on_batch=lambda done, rows: calls.append((done, rows.copy())))
    assert [done for done, _ in calls] == [4, 8, 10]
    assert [len(rows) for _, rows in calls] == [2, 6, 8]
    np.testing.assert_array_equal(calls[-1][1], out)
    np.testing.assert_array_equal(out[:, 0], np.arange(2, 10))


def test_a_unit_resumed_from_its_checkpoint_equals_an_uninterrupted_one(cnn):
    whole = run_items(cnn, X, 32)
    checkpoint = {}

    class Stop(Exception):
        pass

    def on_batch(done, rows):
        checkpoint.update(done=done, rows=rows.copy())
        if done >= 100:
            raise Stop  # the car drove away

    with pytest.raises(Stop):
        run_items(cnn, X, 32, on_batch=on_batch)
    assert checkpoint["done"] == 128
    tail = run_items(cnn, X, 32, start=checkpoint["done"])
    np.testing.assert_array_equal(np.concatenate([checkpoint["rows"], tail]), whole)


def test_nothing_left_to_run_gives_no_rows(cnn):
    assert run_items(cnn, X, 32, start=300).shape == (0, 10)


def test_bad_arguments_and_bad_models_are_named(cnn):
    with pytest.raises(InvalidInput, match="batch_size 0"):
        run_items(cnn, X, 0)
    with pytest.raises(InvalidInput, match="start 301 is outside the 300 items"):
        run_items(cnn, X, 8, start=301)

    class Lossy(Recording):
        def __call__(self, batch):
            return super().__call__(batch)[:-1]

    with pytest.raises(InvalidInput, match="returned shape \\(3, 2\\) for 4 items; expected one row per item"):
        run_items(Lossy(), INDEXED, 4)


def test_fleet_sharding_reassembles_to_the_local_result():
    local = run_local("mnist1d-cnn", X, batch_size=32, threads=1)
    runner = load_runner("mnist1d-cnn")
    parts = [decode_result(encode_result(run_items(runner, X[a:b], 32))) for a, b in shard(X, 64)]
    np.testing.assert_array_equal(assemble(parts, expected_items=len(X)), local)
