"""The bundles of the torch-backed models fleetgrid ships, declared without importing torch.

Listing models (``fleetgrid models``, ``GET /v1/models``) reads only these specs; each loader imports its model's
module, and with it torch, the first time a runner is loaded.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from fleetgrid.models.spec import ModelSpec, Runner

__all__ = ["MNIST1D_CNN", "TORCHSCRIPT", "TORCH_EXPORT", "LazyLoader"]


@dataclass(frozen=True, slots=True)
class LazyLoader:
    """A spec's loader named by module and function, imported on the first call (and picklable, being names)."""

    module: str
    function: str

    def __call__(self, model_file: Path | None) -> Runner:
        loader = getattr(importlib.import_module(self.module), self.function)
        runner: Runner = loader(model_file)
        return runner


MNIST1D_CNN = ModelSpec(
    name="mnist1d-cnn",
    description="1-D CNN classifier for MNIST-1D signals (40 samples) -> 10 class logits; trained weights shipped",
    input_kind="array",
    item_shape=(40,),
    input_dtype="float32",
    output_shape=(10,),
    default_batch_size=256,
    default_unit_items=4096,
    needs_model_file=False,
    extra=None,
    loader=LazyLoader("fleetgrid.models.mnist1d_cnn", "load_runner"),
    ops_per_item=1.0e5,  # 101,440 FLOPs for one item, by torch.utils.flop_counter
)

TORCHSCRIPT = ModelSpec(
    name="torchscript",
    description="your own TorchScript module (torch.jit.save): float32 (B, ...) -> one tensor (B, ...)",
    input_kind="array",
    item_shape=None,
    input_dtype="float32",
    output_shape=None,
    default_batch_size=64,
    default_unit_items=4096,
    needs_model_file=True,
    extra=None,
    loader=LazyLoader("fleetgrid.models.user_model", "load_torchscript"),
)

TORCH_EXPORT = ModelSpec(
    name="torch-export",
    description="your own torch.export program (torch.export.save, .pt2): float32 (B, ...) -> one tensor (B, ...)",
    input_kind="array",
    item_shape=None,
    input_dtype="float32",
    output_shape=None,
    default_batch_size=64,
    default_unit_items=4096,
    needs_model_file=True,
    extra=None,
    loader=LazyLoader("fleetgrid.models.user_model", "load_torch_export"),
)
