"""The serving workload's wire models: a tenant's deployment, what a replica's car is granted (inside
``WorkGrant.spec``), and the long-poll exchange over which requests reach the car and answers come back."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DEPLOYMENT_NAME",
    "DeploymentStatus",
    "MAX_ANSWER_BYTES",
    "MAX_INPUTS",
    "MAX_INPUT_CHARS",
    "ServeAnswer",
    "ServeExchange",
    "ServeGrant",
    "ServeRequest",
    "ServeSubmit",
    "ServeWork",
]

DEPLOYMENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
MAX_INPUTS = 64
"""Texts one embeddings request may carry."""
MAX_INPUT_CHARS = 8192
"""Characters one text may have (the model reads its first 256 word pieces; a longer text is refused, not cut)."""
MAX_ANSWER_BYTES = 4 * 1024 * 1024
"""The most one exchange may carry back from a car: 64 requests of 64 texts of 384 float32s, with room."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServeSubmit(_Strict):
    """A deployment: ``POST /v1/jobs`` with ``kind: 'serve'`` (``fleetgrid deploy``). Its job runs until cancelled."""

    kind: Literal["serve"] = "serve"
    name: str = Field(default="", pattern=r"^$|" + DEPLOYMENT_NAME,
                      description="what clients call it (the OpenAI API's 'model'); default: the model's name")
    model: str = Field(description="a registered text-embedding model, e.g. 'minilm-l6-v2'")
    replicas: int = Field(default=1, ge=1, le=256, description="cars holding the model resident at once")


class ServeGrant(_Strict):
    """A replica: hold ``model`` loaded and answer the deployment's requests until preempted."""

    deployment: str
    model: str
    max_batch: int = Field(ge=1, description="texts the car runs in one forward pass at most")
    wait_s: float = Field(gt=0, description="how long one exchange waits for requests")


class ServeRequest(_Strict):
    request_id: str = Field(max_length=64)
    texts: list[str] = Field(min_length=1, max_length=MAX_INPUTS)


class ServeWork(_Strict):
    """What one exchange hands the car: requests to run, request ids no longer wanted, and whether the replica is
    over (its lease closed: stop serving)."""

    requests: list[ServeRequest] = Field(default_factory=list)
    cancelled: list[str] = Field(default_factory=list)
    closed: bool = False


class ServeAnswer(_Strict):
    """One request's answer: its texts' embeddings (row-major float32, little-endian, base64), or an error."""

    request_id: str = Field(max_length=64)
    vectors: str | None = Field(default=None, description="base64 of rows x dim float32s")
    rows: int = Field(default=0, ge=0, le=MAX_INPUTS)
    dim: int = Field(default=0, ge=0, le=65_536)
    error: str | None = Field(default=None, max_length=1000)


class ServeExchange(_Strict):
    """The car's long-poll: the answers it has, then wait up to ``wait_s`` for more requests. ``leaving`` says
    the car is about to hand the replica back (its driver is coming): the coordinator sends what it held
    elsewhere at once instead of waiting for the lease to close."""

    answers: list[ServeAnswer] = Field(default_factory=list, max_length=256)
    wait_s: float = Field(default=1.0, ge=0, le=30)
    leaving: bool = False


class DeploymentStatus(_Strict):
    """``GET /v1/deployments``: one live deployment as this coordinator sees it."""

    name: str
    model: str
    job_id: str
    replicas: int = Field(description="cars wanted")
    connected: int = Field(description="replicas polling this coordinator now")
    served: int = Field(description="requests answered since this coordinator started")
    in_flight: int
    hedged: int = Field(default=0, description="requests also sent to a second car for being slow")
    failovers: int = Field(default=0, description="requests re-sent because their car left")
