import numpy as np
import pytest

from fleetgrid.errors import InvalidInput, UnknownModel
from fleetgrid.models.registry import get_model_spec, list_models, load_runner, register
from fleetgrid.models.spec import ModelSpec

BUILT_IN = {"mnist1d-cnn", "minilm-l6-v2", "torchscript", "torch-export"}


def test_list_models_holds_the_built_ins_sorted_by_name():
    names = [spec.name for spec in list_models()]
    assert BUILT_IN <= set(names)
    assert names == sorted(names)


def test_unknown_model_names_every_registered_model():
    with pytest.raises(UnknownModel, match=r"unknown model 'gpt-9'; registered models: .*minilm-l6-v2.*mnist1d-cnn"):
        get_model_spec("gpt-9")


@pytest.mark.parametrize("spec", list_models(), ids=lambda s: s.name)
def test_every_spec_is_consistent(spec):
    assert spec.default_unit_items % spec.default_batch_size == 0, "units must start on batch boundaries"
    assert (spec.input_dtype is None) == (spec.input_kind == "text")
    assert spec.needs_model_file == (spec.name in {"torchscript", "torch-export"})


def test_a_second_model_under_a_taken_name_is_refused():
    spec = get_model_spec("mnist1d-cnn")
    assert register(spec) is spec  # re-registering the same bundle is harmless
    clash = ModelSpec(**{f: getattr(spec, f) for f in ModelSpec.__slots__} | {"description": "impostor"})
    with pytest.raises(ValueError, match="already registered"):
        register(clash)


def test_mnist1d_cnn_loads_and_runs_through_the_registry():
    runner = load_runner("mnist1d-cnn", threads=1)
    out = runner(np.zeros((3, 40), np.float32))
    assert runner.spec.name == "mnist1d-cnn"
    assert out.shape == (3, 10) and out.dtype == np.float32


def test_built_in_models_refuse_a_model_file(tmp_path):
    with pytest.raises(InvalidInput, match="built in and takes no model file.*'torchscript' or 'torch-export'"):
        load_runner("mnist1d-cnn", model_file=tmp_path / "m.pt")


@pytest.mark.parametrize("name", ["torchscript", "torch-export"])
def test_user_models_need_a_model_file(name):
    with pytest.raises(InvalidInput, match=f"model '{name}' runs a user model file"):
        load_runner(name)


def test_missing_model_file_and_bad_threads_are_named(tmp_path):
    with pytest.raises(InvalidInput, match="does not exist"):
        load_runner("torchscript", model_file=tmp_path / "absent.pt")
    with pytest.raises(InvalidInput, match="threads 0; expected a positive integer"):
        load_runner("mnist1d-cnn", threads=0)
