"""A model's floating-point state as one flat float32 vector, and back: the unit strategies and codecs work on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fleetgrid.errors import InvalidInput

__all__ = ["FlatLayout"]


@dataclass(frozen=True)
class FlatLayout:
    """Names and shapes of the floating-point entries of a state dict, in state-dict order.

    Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are not part of the vector: they never travel and
    each car keeps its own. Tied weights (one tensor under two names) appear once, under the first name.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, model: nn.Module) -> FlatLayout:
        seen: set[tuple[int, tuple[int, ...]]] = set()
        items = []
        for k, v in model.state_dict().items():
            key = (v.data_ptr(), tuple(v.shape))
            if v.is_floating_point() and key not in seen:
                seen.add(key)
                items.append((k, tuple(v.shape)))
        return cls(tuple(k for k, _ in items), tuple(s for _, s in items))

    @property
    def numel(self) -> int:
        return sum(int(torch.Size(s).numel()) for s in self.shapes)

    def flatten(self, model: nn.Module) -> torch.Tensor:
        sd = model.state_dict()
        return (
            torch.cat([sd[k].detach().reshape(-1).to(torch.float32) for k in self.names])
            if self.names
            else torch.zeros(0)
        )

    def load(self, model: nn.Module, vector: torch.Tensor) -> None:
        """Copy ``vector`` into the model's floating-point state, in place."""
        if vector.dtype != torch.float32 or vector.shape != (self.numel,):
            raise InvalidInput(
                f"model state must be float32 of shape ({self.numel},), got {vector.dtype} {tuple(vector.shape)}"
            )
        sd = model.state_dict()
        offset = 0
        with torch.no_grad():
            for name, shape in zip(self.names, self.shapes, strict=True):
                n = int(torch.Size(shape).numel())
                sd[name].copy_(vector[offset : offset + n].view(shape))
                offset += n
