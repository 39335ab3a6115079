import random

import numpy as np
import pytest
import torch

from fleetgrid.data.mnist1d import make_mnist1d
from fleetgrid.errors import InputShapeError, InvalidInput
from fleetgrid.models import train_mnist1d_cnn
from fleetgrid.models.mnist1d_cnn import MNIST1DCNN, CNNConfig, load_pretrained, read_metadata, save_weights


def test_forward_maps_signals_to_logits():
    model = MNIST1DCNN(CNNConfig(channels=8))
    assert model(torch.zeros(5, 40)).shape == (5, 10)
    assert MNIST1DCNN(CNNConfig(input_length=64, num_classes=3))(torch.zeros(2, 64)).shape == (2, 3)


@pytest.mark.parametrize("field,value", [("channels", 0), ("input_length", 2)])
def test_config_rejects_impossible_sizes(field, value):
    with pytest.raises(InvalidInput, match=f"CNNConfig.{field}"):
        CNNConfig(**{field: value})


def test_make_mnist1d_is_seeded_and_leaves_global_rngs_alone():
    np.random.seed(123)
    random.seed(123)
    a = make_mnist1d(seed=3, num_samples=200)
    assert (np.random.rand(), random.random()) == (np.random.RandomState(123).rand(), random.Random(123).random())
    b = make_mnist1d(seed=3, num_samples=200)
    c = make_mnist1d(seed=4, num_samples=200)
    assert a["x"].shape == (160, 40) and a["x"].dtype == np.float32
    assert a["y_test"].shape == (40,) and a["y_test"].dtype == np.int64
    np.testing.assert_array_equal(a["x"], b["x"])
    assert not np.array_equal(a["x"], c["x"])


def test_make_mnist1d_from_several_threads_at_once_gives_what_it_gives_alone():
    """The generator seeds and draws from the global RNGs; a coordinator generates from several threads (a report's
    example cap, the held-out set), and each must still get its seed's arrays."""
    from concurrent.futures import ThreadPoolExecutor

    alone = {seed: make_mnist1d(seed=seed, num_samples=1000) for seed in (3, 4)}
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda s: (s, make_mnist1d(seed=s, num_samples=1000)), [3, 4] * 8))
    for seed, data in together:
        assert all(np.array_equal(data[k], alone[seed][k]) for k in alone[seed]), seed


def test_shipped_weights_reach_their_recorded_test_accuracy():
    meta = read_metadata()
    data = make_mnist1d(seed=int(meta["data_seed"]), num_samples=int(meta["num_samples"]))
    model = load_pretrained()
    with torch.inference_mode():
        pred = model(torch.from_numpy(data["x_test"])).argmax(1).numpy()
    accuracy = float((pred == data["y_test"]).mean())
    assert accuracy == pytest.approx(float(meta["test_accuracy"]), abs=2e-3)
    assert accuracy > 0.92  # MNIST-1D's published CNN baseline is ~94%


def test_weights_round_trip_with_their_config(tmp_path):
    model = MNIST1DCNN(CNNConfig(channels=4))
    save_weights(model, tmp_path / "w.safetensors", note="x")
    again = load_pretrained(tmp_path / "w.safetensors")
    assert again.config == model.config and read_metadata(tmp_path / "w.safetensors")["note"] == "x"
    x = torch.randn(3, 40)
    torch.testing.assert_close(again(x), model.eval()(x))
    with pytest.raises(InvalidInput, match="weights not found"):
        load_pretrained(tmp_path / "absent.safetensors")


def test_training_script_writes_loadable_weights(tmp_path):
    train_mnist1d_cnn.main(["--steps", "3", "--num-samples", "200", "--out", str(tmp_path / "w.safetensors")])
    meta = read_metadata(tmp_path / "w.safetensors")
    assert meta["steps"] == "3" and 0.0 <= float(meta["test_accuracy"]) <= 1.0
    assert load_pretrained(tmp_path / "w.safetensors")(torch.zeros(1, 40)).shape == (1, 10)


def test_runner_rejects_a_batch_of_the_wrong_shape():
    from fleetgrid.models.registry import load_runner

    runner = load_runner("mnist1d-cnn")
    with pytest.raises(InputShapeError, match=r"shape \(2, 41\); expected a float32 array \(B, 40\)"):
        runner(np.zeros((2, 41), np.float32))
