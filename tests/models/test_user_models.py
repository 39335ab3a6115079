"""User model files: tiny TorchScript and torch.export files made here, inspected and run like an upload."""

import io
import zipfile

import numpy as np
import pytest
import torch

from fleetgrid.errors import InputShapeError, InvalidInput
from fleetgrid.models.registry import get_model_spec, inspect_model_file, load_runner, refine_spec

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x))  # (B, 6) -> (B, 3)


def torchscript_bytes() -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Tiny().eval()), buf)
    return buf.getvalue()


def export_bytes(dynamic: bool) -> bytes:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    program = torch.export.export(Tiny().eval(), (torch.zeros(4, 6),), dynamic_shapes=shapes)
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def expected(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return Tiny().eval()(torch.from_numpy(x)).numpy()


X = np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32)


def test_torchscript_round_trips_through_inspection_and_the_runner(tmp_path):
    data = torchscript_bytes()
    info = inspect_model_file(data)
    assert info == {
        "format": "torchscript",
        "size_bytes": len(data),
        "item_shape": None,
        "output_shape": None,
        "batch_size": None,
    }
    (tmp_path / "m.pt").write_bytes(data)
    runner = load_runner("torchscript", model_file=tmp_path / "m.pt", threads=1)
    np.testing.assert_allclose(runner(X), expected(X), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic-batch", "static-batch-4"])
def test_torch_export_round_trips_and_declares_its_shapes(tmp_path, dynamic):
    data = export_bytes(dynamic)
    info = inspect_model_file(data)
    assert info["format"] == "torch-export"
    assert (info["item_shape"], info["output_shape"], info["batch_size"]) == ([6], [3], None if dynamic else 4)
    (tmp_path / "m.pt2").write_bytes(data)
    runner = load_runner("torch-export", model_file=tmp_path / "m.pt2")
    assert runner.spec.item_shape == (6,) and runner.spec.output_shape == (3,)
    # 7 items: a static batch of 4 is fed as 4 + 3 padded with zeros, whose rows are dropped
    out = runner(X)
    assert out.shape == (7, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected(X), rtol=1e-6, atol=1e-6)
    with pytest.raises(InputShapeError, match=r"shape \(2, 5\); expected a float32 array \(B, 6\)"):
        runner(np.zeros((2, 5), np.float32))


def test_refine_spec_takes_the_shapes_an_upload_declares():
    spec = refine_spec(get_model_spec("torch-export"), inspect_model_file(export_bytes(dynamic=True)))
    assert (spec.item_shape, spec.output_shape) == ((6,), (3,))
    assert refine_spec(get_model_spec("torchscript"), inspect_model_file(torchscript_bytes())).item_shape is None


def test_a_file_run_under_the_other_format_name_is_refused(tmp_path):
    (tmp_path / "m.pt2").write_bytes(export_bytes(dynamic=True))
    with pytest.raises(InvalidInput, match="is a torch-export file; run it as model 'torch-export'"):
        load_runner("torchscript", model_file=tmp_path / "m.pt2")


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return buf.getvalue()


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"certainly not a model", "is not a zip archive"),
        (_zip({"hello.txt": b"hi"}), "holding neither format"),
        (_zip({"archive/archive_format": b"pt2", "archive/models/model.json": b"{"}), "could not be loaded"),
    ],
    ids=["garbage", "other-zip", "damaged-pt2"],
)
def test_anything_else_is_rejected_naming_both_formats(data, reason):
    with pytest.raises(InvalidInput, match=reason) as err:
        inspect_model_file(data)
    assert "torch.jit.save" in err.value.message and "torch.export.save" in err.value.message


def test_a_model_that_breaks_the_one_row_per_item_contract_is_reported(tmp_path):
    class Sum(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum(0, keepdim=True)  # (1, 6) whatever the batch

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Sum()), buf)
    (tmp_path / "sum.pt").write_bytes(buf.getvalue())
    runner = load_runner("torchscript", model_file=tmp_path / "sum.pt")
    with pytest.raises(InvalidInput, match=r"returned shape \(1, 6\) for a batch of 7; expected one tensor"):
        runner(X)
