"""Tenants' own models: a TorchScript file (`torch.jit.save`) or a torch.export program (`torch.export.save`, .pt2).

`inspect_model_file` vets an upload on the coordinator before any car sees it; the two specs below load the same
bytes on the car. Both formats are zip archives, told apart by their member names so that neither loader is ever
fed the other's file.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from fleetgrid.errors import InputShapeError, InvalidInput
from fleetgrid.models.catalog import TORCH_EXPORT as TORCH_EXPORT_SPEC
from fleetgrid.models.catalog import TORCHSCRIPT as TORCHSCRIPT_SPEC
from fleetgrid.models.spec import ModelSpec, refine_spec

__all__ = ["TORCHSCRIPT_SPEC", "TORCH_EXPORT_SPEC", "inspect_model_file", "load_torch_export", "load_torchscript"]

Format = Literal["torchscript", "torch-export"]
ACCEPTED = "a TorchScript file (torch.jit.save, usually .pt) or a torch.export program (torch.export.save, .pt2)"


def _sniff(data: bytes) -> Format:
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except zipfile.BadZipFile as exc:
        raise InvalidInput(f"model file ({len(data)} bytes) is not a zip archive; expected {ACCEPTED}") from exc
    leaves = {name.rsplit("/", 1)[-1] for name in names}
    if "archive_format" in leaves:
        return "torch-export"
    if "constants.pkl" in leaves and any("/code/" in name for name in names):
        return "torchscript"
    raise InvalidInput(f"model file is a zip archive holding neither format; expected {ACCEPTED}")


def _load(data: bytes) -> tuple[Format, Any]:
    """Returns the format and the loaded object: a ScriptModule or an ExportedProgram."""
    fmt = _sniff(data)
    try:
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated upstream, still served
                return fmt, torch.jit.load(io.BytesIO(data), map_location="cpu")
        return fmt, torch.export.load(io.BytesIO(data))
    except Exception as exc:  # torch raises RuntimeError, KeyError, ValueError... for a damaged archive
        raise InvalidInput(f"model file looks like {fmt} but could not be loaded ({exc}); expected {ACCEPTED}") from exc


def _fake_shape(node: Any, what: str) -> torch.Size:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise InvalidInput(f"torch.export program's {what} {node.name!r} is not a tensor; expected one tensor")
    return val.shape


def _describe_export(program: Any) -> dict[str, Any]:
    """Input item shape, output item shape and static batch size (None when dynamic) of an exported program."""
    sig = program.graph_signature
    if len(sig.user_inputs) != 1 or len(sig.user_outputs) != 1:
        raise InvalidInput(
            f"torch.export program takes {len(sig.user_inputs)} input(s) and returns {len(sig.user_outputs)} "
            "output(s); expected exactly one float32 tensor (B, ...) in and one tensor (B, ...) out"
        )
    nodes = {n.name: n for n in program.graph.nodes}
    x = nodes[sig.user_inputs[0]]
    in_shape = _fake_shape(x, "input")
    if x.meta["val"].dtype != torch.float32 or len(in_shape) < 1:
        raise InvalidInput(
            f"torch.export program's input is {x.meta['val'].dtype} of shape {tuple(in_shape)}; "
            "expected float32 with a leading batch dimension"
        )
    if not all(isinstance(d, int) for d in in_shape[1:]):
        raise InvalidInput(
            f"torch.export program's input shape {tuple(in_shape)} is dynamic beyond the batch dimension; "
            "expected only dimension 0 to be dynamic"
        )
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    outs = [a for a in output_node.args[0] if getattr(a, "name", None) == sig.user_outputs[0]]
    out_shape = _fake_shape(outs[0], "output") if outs else None
    output_item: list[int] | None = None  # None unless the export fixes every dimension past the batch
    if out_shape is not None and all(isinstance(d, int) for d in out_shape[1:]):
        output_item = [int(d) for d in out_shape[1:]]
    return {
        "item_shape": [int(d) for d in in_shape[1:]],
        "output_shape": output_item,
        "batch_size": int(in_shape[0]) if isinstance(in_shape[0], int) else None,
    }


def inspect_model_file(data: bytes) -> dict[str, Any]:
    """Validate an uploaded model file without running it.

    Returns ``{"format": "torchscript" | "torch-export", "size_bytes", "item_shape", "output_shape",
    "batch_size"}``; shapes are per item (lists, or None where the format does not say), ``batch_size`` is the
    export's static batch size or None when any batch size is accepted. Raises InvalidInput for anything else.
    """
    fmt, obj = _load(data)
    info: dict[str, Any] = {"format": fmt, "size_bytes": len(data)}
    if fmt == "torchscript":
        return info | {"item_shape": None, "output_shape": None, "batch_size": None}
    return info | _describe_export(obj)


class _UserRunner:
    """Runs a user's module on float32 batches. A program exported with a fixed batch size N is fed N items at a
    time, the last chunk padded with zeros whose outputs are dropped: inference models treat items independently."""

    def __init__(self, spec: ModelSpec, module: Any, static_batch: int | None) -> None:
        self.spec = spec
        self.module = module
        self.static_batch = static_batch

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        try:
            with torch.inference_mode():
                out = self.module(x)
        except Exception as exc:  # whatever the user's graph raises, reported as a bad model/input pair
            raise InvalidInput(
                f"{self.spec.name} model failed on a batch of shape {tuple(x.shape)}: {exc}; expected a model "
                f"that maps float32 (B, *item) to one tensor (B, ...)"
            ) from exc
        if not isinstance(out, torch.Tensor) or out.ndim < 1 or out.shape[0] != x.shape[0]:
            got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise InvalidInput(
                f"{self.spec.name} model returned {got} for a batch of {x.shape[0]}; "
                "expected one tensor with the batch as its first dimension"
            )
        return out.detach().to(torch.float32).numpy()

    def __call__(self, batch: np.ndarray | list[str]) -> np.ndarray:
        item_shape = self.spec.item_shape
        if (
            not isinstance(batch, np.ndarray)
            or batch.ndim < 1
            or (item_shape is not None and batch.shape[1:] != item_shape)
        ):
            got = f"shape {batch.shape}" if isinstance(batch, np.ndarray) else type(batch).__name__
            want = f"(B, {', '.join(map(str, item_shape))})" if item_shape is not None else "(B, ...)"
            raise InputShapeError(f"{self.spec.name} model got a batch of {got}; expected a float32 array {want}")
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        n = self.static_batch
        if n is None:
            return self._forward(x)
        outs = []
        for i in range(0, len(x), n):
            chunk = x[i : i + n]  # (k, *item), k <= n
            k = len(chunk)
            if k < n:
                chunk = torch.cat([chunk, chunk.new_zeros((n - k, *chunk.shape[1:]))])  # (n, *item)
            outs.append(self._forward(chunk)[:k])
        return np.concatenate(outs)


def _loader(spec_name: Format):
    def load(model_file: Path | None) -> _UserRunner:
        spec = TORCHSCRIPT_SPEC if spec_name == "torchscript" else TORCH_EXPORT_SPEC
        if model_file is None:
            raise InvalidInput(f"model {spec_name!r} needs a model file; expected {ACCEPTED}")
        fmt, obj = _load(Path(model_file).read_bytes())
        if fmt != spec_name:
            raise InvalidInput(f"model file {str(model_file)!r} is a {fmt} file; run it as model {fmt!r}")
        if fmt == "torchscript":
            return _UserRunner(spec, obj.eval(), None)
        info = _describe_export(obj)
        shaped = refine_spec(spec, info)
        return _UserRunner(shaped, obj.module(), info["batch_size"])

    return load


load_torchscript = _loader("torchscript")
load_torch_export = _loader("torch-export")
