"""The serving workload's wire models: a tenant's deployment, what a replica's car is granted (inside
``WorkGrant.spec``), and the long-poll exchange over which requests reach the car and answers come back."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleetgrid.protocol import ArtifactRef, Digest

__all__ = [
    "DEPLOYMENT_NAME",
    "DeploymentStatus",
    "MAX_ANSWER_BYTES",
    "MAX_INPUTS",
    "MAX_INPUT_CHARS",
    "MAX_PROMPT_CHARS",
    "MAX_NEW_TOKENS",
    "GenerateParams",
    "CHUNK_CHARS",
    "ReplicaStatus",
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
MAX_PROMPT_CHARS = 4096
"""Characters a generation prompt may have (the character model reads the last 64 of prompt and answer)."""
MAX_NEW_TOKENS = 2048
"""Characters one generation may add."""
CHUNK_CHARS = 256
"""Characters one streamed piece of an answer may carry."""
MAX_ANSWER_BYTES = 4 * 1024 * 1024
"""The most one exchange may carry back from a car: 64 requests of 64 texts of 384 float32s, with room."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServeSubmit(_Strict):
    """A deployment: ``POST /v1/jobs`` with ``kind: 'serve'`` (``fleetgrid deploy``). Its job runs until cancelled."""

    kind: Literal["serve"] = "serve"
    name: str = Field(default="", pattern=r"^$|" + DEPLOYMENT_NAME,
                      description="what clients call it (the OpenAI API's 'model'); default: the model's name")
    model: str = Field(description="a registered text-embedding model, e.g. 'minilm-l6-v2', or 'charlm' (text "
                       "generation)")
    replicas: int = Field(default=1, ge=1, le=256, description="cars holding the model resident at once: the floor")
    max_replicas: int | None = Field(default=None, ge=1, le=256, description="the ceiling the replica count scales "
                                     "up to with demand (default: replicas, a fixed count)")
    spares: int = Field(default=0, ge=0, le=64, description="warm replicas kept beyond what demand needs (within "
                        "the ceiling), so a car that drives away is replaced by one already holding the model")

    @model_validator(mode="after")
    def _ceiling(self) -> ServeSubmit:
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(f"max_replicas {self.max_replicas} is below replicas {self.replicas}; the ceiling must "
                             "be at least the floor")
        return self
    weights: Digest | None = Field(default=None, description="charlm: an artifact of yours holding its weights as "
                                   "safetensors (a training job's result, e.g.)")
    from_job: str | None = Field(default=None, max_length=64,
                                 description="charlm: serve the result of this finished training job of yours")


class ServeGrant(_Strict):
    """A replica: hold ``model`` loaded and answer the deployment's requests until preempted."""

    deployment: str
    model: str
    max_batch: int = Field(ge=1, description="texts (or sequences) the car runs in one forward pass at most")
    wait_s: float = Field(gt=0, description="how long one exchange waits for requests")
    weights: ArtifactRef | None = Field(default=None, description="a generative model's weights, to fetch")
    chunk_tokens: int = Field(default=16, ge=1, le=CHUNK_CHARS,
                              description="characters generated between two exchanges: the streaming grain")


class GenerateParams(_Strict):
    """One generation: ``prompt`` continued by up to ``max_tokens`` characters. ``prefix`` is what an earlier car
    already generated (and the client already has): the car continues after it."""

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    max_tokens: int = Field(ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list, max_length=4)
    seed: int | None = None
    prefix: str = Field(default="", max_length=MAX_NEW_TOKENS)


class ServeRequest(_Strict):
    """One request for a car: ``texts`` to embed, or a generation."""

    request_id: str = Field(max_length=64)
    texts: list[str] = Field(default_factory=list, max_length=MAX_INPUTS)
    generate: GenerateParams | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ServeRequest:
        if bool(self.texts) == (self.generate is not None):
            raise ValueError("a request holds either texts to embed or a generation, not both or neither")
        return self


class ServeWork(_Strict):
    """What one exchange hands the car: requests to run, request ids no longer wanted, and whether the replica is
    over (its lease closed: stop serving)."""

    requests: list[ServeRequest] = Field(default_factory=list)
    cancelled: list[str] = Field(default_factory=list)
    closed: bool = False


class ServeAnswer(_Strict):
    """One request's answer: its texts' embeddings (row-major float32, little-endian, base64); or the next piece of
    a generation (``text`` from character ``offset`` of the answer on, ``finish_reason`` on its last piece); or an
    error."""

    request_id: str = Field(max_length=64)
    vectors: str | None = Field(default=None, description="base64 of rows x dim float32s")
    rows: int = Field(default=0, ge=0, le=MAX_INPUTS)
    dim: int = Field(default=0, ge=0, le=65_536)
    text: str | None = Field(default=None, max_length=CHUNK_CHARS)
    offset: int = Field(default=0, ge=0, le=MAX_NEW_TOKENS)
    finish_reason: Literal["stop", "length"] | None = None
    error: str | None = Field(default=None, max_length=1000)


class ServeExchange(_Strict):
    """The car's long-poll: the answers it has, then wait up to ``wait_s`` for more requests. ``leaving`` says
    the car is about to hand the replica back (its driver is coming): the coordinator sends what it held
    elsewhere at once instead of waiting for the lease to close."""

    answers: list[ServeAnswer] = Field(default_factory=list, max_length=256)
    wait_s: float = Field(default=1.0, ge=0, le=30)
    leaving: bool = False


class ReplicaStatus(_Strict):
    vehicle_id: str
    in_flight: int
    served: int


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
    cars: list[ReplicaStatus] = Field(default_factory=list, description="the replicas connected now")
