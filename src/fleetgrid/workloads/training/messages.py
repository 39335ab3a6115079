"""What a round sends down to a car and what the car sends back: the data crossing the coordinator boundary.

These are plain dataclasses; the coordinator's wire models should carry exactly these fields.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from fleetgrid.errors import HashMismatch, InvalidInput
from fleetgrid.workloads.training.compression import decode
from fleetgrid.workloads.training.config import LocalTrainingConfig

__all__ = ["ClientUpdate", "ModelDownload", "TrainInstructions", "apply_download", "params_digest"]


def params_digest(params: torch.Tensor) -> str:
    """sha256 of a flat float32 vector's little-endian bytes: a global version's identity, for dedup and checks."""
    return hashlib.sha256(params.detach().cpu().numpy().astype("<f4").tobytes()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class TrainInstructions:
    """One car's work for one round (the payload of its lease)."""

    round: int
    """The round attempt this work belongs to; the update must quote it back."""
    base_version: int
    """The global version to train from."""
    model_digest: str
    """``params_digest`` of that version; a car already holding it downloads nothing."""
    local: LocalTrainingConfig
    seed: int
    """Seeds the car's batch order, so a rerun of the same lease is reproducible."""


@dataclass(frozen=True, kw_only=True)
class ClientUpdate:
    """A car's report: its compressed delta ``global - local`` and what it did to get it."""

    client_id: str
    round: int
    base_version: int
    payload: bytes
    """``compression.encode`` output."""
    num_examples: int
    """Size of the car's local dataset (FedAvg's weight)."""
    steps_done: int
    steps_planned: int
    examples_seen: int
    train_loss: float = float("nan")
    control: bytes | None = None
    """With drift correction on: the car's mean gradient over the lease (its ``c_i``), encoded."""

    @property
    def nbytes(self) -> int:
        return len(self.payload) + len(self.control or b"")


@dataclass(frozen=True, kw_only=True)
class ModelDownload:
    """How a car holding ``from_version`` (None: nothing) gets ``version``: one whole snapshot (float32, or the
    compact one of ``StrategyConfig.snapshot_bits``), or the chain of encoded deltas from its version, or nothing
    when it is already current; and ``c`` if asked for.

    ``exact`` says whether the car ends up with version ``version`` bit for bit. It does not after a compact
    snapshot (``digest`` is then that of the decoded compact params, which is what the car checks and holds), nor
    after a chain applied to a copy that was approximate already: such a result matches no digest the sender
    knows, so nothing but the chain's contiguity (the sender's, or the car's from the versions it lists) and each
    blob's own content address can be checked."""

    from_version: int | None
    version: int
    digest: str
    full: bytes | None
    deltas: tuple[bytes, ...] = ()
    exact: bool = True
    control: bytes | None = None
    """With drift correction on: the fleet's control variate ``c`` for ``version``, encoded (a car already holding
    ``version`` got it with it)."""

    @property
    def nbytes(self) -> int:
        return len(self.full or b"") + sum(len(d) for d in self.deltas) + len(self.control or b"")


def apply_download(held: torch.Tensor | None, download: ModelDownload) -> torch.Tensor:
    """The car side of :class:`ModelDownload`: the new flat global, checked against its digest (except a chain
    onto an approximate copy, which has none to match; see :class:`ModelDownload`)."""
    if download.full is not None:
        params = torch.from_numpy(decode(download.full).reshape(-1).copy())
    else:
        if held is None:
            raise InvalidInput(
                f"download of version {download.version} is a delta from version "
                f"{download.from_version}, but the car holds no model; ask for a full snapshot"
            )
        params = held.clone()
        for blob in download.deltas:
            params = params + torch.from_numpy(np.asarray(decode(blob)).reshape(-1))
        if not download.exact:
            return params
    got = params_digest(params)
    if got != download.digest:
        raise HashMismatch(
            f"model version {download.version} hashes to {got[:12]}..., expected "
            f"{download.digest[:12]}...; re-download the full snapshot"
        )
    return params
