"""What a registered model is: one small frozen bundle (`ModelSpec`) and the callable it loads (`Runner`).

Kept apart from the registry and free of torch so that input parsing and the coordinator can talk about models
without importing any model code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

__all__ = ["ModelSpec", "Runner", "refine_spec"]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model the fleet can run, as the coordinator and the agent both see it."""

    name: str
    """Registered name, e.g. ``"mnist1d-cnn"``; the only way anything outside ``models/`` refers to a model."""
    description: str
    input_kind: Literal["array", "text"]
    """``"array"``: inputs are one float32 ``.npy`` array; ``"text"``: inputs are strings sent as JSON Lines."""
    item_shape: tuple[int, ...] | None
    """Shape of one input item, e.g. ``(40,)``; ``None`` when it comes from the user's model file or inputs."""
    input_dtype: str | None
    """``"float32"`` for array models; ``None`` for text models."""
    output_shape: tuple[int, ...] | None
    """Shape of one output item, e.g. ``(10,)`` logits; ``None`` when only the user's model knows it."""
    default_batch_size: int
    """Items per forward pass on a car."""
    default_unit_items: int
    """Items per work unit, sized so one unit takes a car minutes, not hours. A multiple of the batch size, so
    that a unit's batches start where a local run's would and the two results agree bit for bit where the
    model's arithmetic allows."""
    needs_model_file: bool
    """True for user-supplied models (TorchScript or torch.export files); False for built-ins."""
    extra: str | None
    """The pip extra that provides the model's dependencies (``pip install 'fleetgrid[<extra>]'``), if any."""
    loader: Callable[[Path | None], Runner]
    """Builds a runner; called with the model file's path (``None`` for built-ins)."""
    ops_per_item: float = 0.0
    """Arithmetic operations one item's forward pass takes at the least (multiply and add counted apart, as
    ``torch.utils.flop_counter`` counts them); 0 when not known (a user's model). The coordinator holds a car's
    reported compute-seconds to what its hardware needs for that many (:mod:`fleetgrid.coordinator.throughput`)."""

    def __post_init__(self) -> None:
        if self.input_kind not in ("array", "text"):
            raise ValueError(f"model {self.name!r}: input_kind {self.input_kind!r}; expected 'array' or 'text'")
        if not self.ops_per_item >= 0.0:
            raise ValueError(f"model {self.name!r}: ops_per_item {self.ops_per_item!r}; expected a number >= 0")
        if self.default_batch_size < 1 or self.default_unit_items < self.default_batch_size:
            raise ValueError(
                f"model {self.name!r}: default_batch_size {self.default_batch_size} and default_unit_items "
                f"{self.default_unit_items}; expected 1 <= batch size <= unit items"
            )


class Runner(Protocol):
    """A loaded model: maps one batch of items to one float32 output row per item."""

    spec: ModelSpec

    def __call__(self, batch: np.ndarray | list[str]) -> np.ndarray:
        """``batch``: ``(B, *item_shape)`` float32 array or ``B`` strings; returns float32 ``(B, *output_shape)``."""
        ...


def refine_spec(spec: ModelSpec, model_info: dict[str, Any]) -> ModelSpec:
    """``spec`` with the per-item shapes an uploaded model file declares (from `inspect_model_file`) filled in,
    so inputs can be checked against the user's model before any car runs it. Shapes the file leaves open stay
    as the spec had them."""

    def declared(key: str, current: tuple[int, ...] | None) -> tuple[int, ...] | None:
        value = model_info.get(key)
        return current if value is None else tuple(int(d) for d in value)

    return replace(
        spec,
        item_shape=declared("item_shape", spec.item_shape),
        output_shape=declared("output_shape", spec.output_shape),
    )
