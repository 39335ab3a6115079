"""The evaluation workload's own wire models: what a car is granted (inside ``WorkGrant.spec``), what it reports
(the unit's result, as JSON), and what a tenant submits."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleetgrid.protocol import ArtifactRef, Digest

__all__ = ["EvalGrant", "EvalReport", "EvalSubmit", "MAX_REPORT_BYTES"]

MAX_REPORT_BYTES = 4096
"""A report is four numbers; anything larger is refused before it is parsed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EvalGrant(_Strict):
    model: str = Field(description="built-in trainable model, e.g. 'mnist1d-cnn' or 'charlm'")
    weights: ArtifactRef = Field(description="safetensors state dict of the model to evaluate")
    data: dict = Field(description="DataSpec as JSON; the car derives its shard from it and sends none of it")
    shard: int = Field(ge=0)
    max_examples: int = Field(ge=1, description="evaluate at most this many of the shard's examples (or windows)")


class EvalReport(_Strict):
    """One car's metrics on its shard: the unit's result, sent as JSON."""

    examples: int = Field(ge=1, description="examples (classification) or windows (language model) scored")
    targets: int = Field(ge=1, description="predictions scored: examples, or examples x tokens per window")
    loss: float = Field(ge=0.0, description="mean cross-entropy per target, in nats")
    accuracy: float = Field(ge=0.0, le=1.0, description="fraction of targets predicted right")

    @field_validator("loss")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("loss must be finite")
        return value


class EvalSubmit(_Strict):
    """A federated evaluation job: ``POST /v1/jobs`` with ``kind: 'evaluate'``."""

    kind: Literal["evaluate"] = "evaluate"
    name: str = Field(default="", max_length=200)
    model: str = Field(description="built-in trainable model: 'mnist1d-cnn' or 'charlm'")
    weights: Digest | None = Field(
        default=None, description="an artifact of yours holding the weights as safetensors (a training job's "
        "result); None evaluates the weights the model ships with (mnist1d-cnn) or its initial weights")
    data: dict = Field(default_factory=dict, description="DataSpec: dataset, num_vehicles (shards), alpha, seed, ...")
    shards: int | None = Field(default=None, ge=1, le=100_000,
                               description="evaluate on this many shards (cars); default: every shard of the spec")
    max_examples: int = Field(default=1024, ge=1, le=1_000_000, description="per car")
