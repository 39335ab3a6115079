"""Pydantic bodies for the secure-aggregation messages, for the coordinator's routes and the agent's client (not
wired yet). Each body mirrors one dataclass of :mod:`.messages` field for field, bytes as standard base64 without
line breaks; ``of`` builds a body from a message and ``to_message`` gives the message back (its checks included).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from fleetgrid.workloads.training.secagg.encoding import Quantization
from fleetgrid.workloads.training.secagg.messages import (
    EncryptedShare,
    KeyAdvertisement,
    MaskedInput,
    NeighbourKeys,
    RoundPlan,
    ShareBundle,
    SharesForCar,
    UnmaskRequest,
    UnmaskResponse,
)

__all__ = [
    "EncryptedShareBody",
    "KeyAdvertisementBody",
    "MaskedInputBody",
    "NeighbourKeysBody",
    "RoundPlanBody",
    "ShareBundleBody",
    "SharesForCarBody",
    "UnmaskRequestBody",
    "UnmaskResponseBody",
]


def _b64(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError("expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not standard base64: {exc}") from exc


B64 = Annotated[bytes, BeforeValidator(_b64), PlainSerializer(lambda b: base64.b64encode(b).decode(), return_type=str)]
CarId = Annotated[str, Field(min_length=1, max_length=200)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoundPlanBody(_Body):
    round_id: CarId
    cohort: list[CarId] = Field(max_length=100_000)
    vector_length: int = Field(ge=1)
    clip: float = Field(gt=0)
    bound: float = Field(gt=0)
    bits: int = Field(ge=1, le=24)
    max_dropout: float = Field(ge=0, lt=0.5)
    seed: B64

    @classmethod
    def of(cls, p: RoundPlan) -> RoundPlanBody:
        q = p.quantization
        return cls(round_id=p.round_id, cohort=list(p.cohort), vector_length=p.vector_length, clip=q.clip,
                   bound=q.bound, bits=q.bits, max_dropout=p.max_dropout, seed=p.seed)

    def to_message(self) -> RoundPlan:
        return RoundPlan(round_id=self.round_id, cohort=tuple(self.cohort), vector_length=self.vector_length,
                         quantization=Quantization(clip=self.clip, bound=self.bound, bits=self.bits),
                         max_dropout=self.max_dropout, seed=self.seed)


class KeyAdvertisementBody(_Body):
    car_id: CarId
    cipher_pk: B64
    mask_pk: B64
    seed_commitment: B64

    @classmethod
    def of(cls, m: KeyAdvertisement) -> KeyAdvertisementBody:
        return cls(car_id=m.car_id, cipher_pk=m.cipher_pk, mask_pk=m.mask_pk, seed_commitment=m.seed_commitment)

    def to_message(self) -> KeyAdvertisement:
        return KeyAdvertisement(car_id=self.car_id, cipher_pk=self.cipher_pk, mask_pk=self.mask_pk,
                                seed_commitment=self.seed_commitment)


class NeighbourKeysBody(_Body):
    recipient: CarId
    keys: list[KeyAdvertisementBody]

    @classmethod
    def of(cls, m: NeighbourKeys) -> NeighbourKeysBody:
        return cls(recipient=m.recipient, keys=[KeyAdvertisementBody.of(a) for a in m.keys.values()])

    def to_message(self) -> NeighbourKeys:
        return NeighbourKeys(recipient=self.recipient, keys={a.car_id: a.to_message() for a in self.keys})


class EncryptedShareBody(_Body):
    sender: CarId
    recipient: CarId
    sealed: B64
    mask_key_commitment: B64
    seed_commitment: B64

    @classmethod
    def of(cls, m: EncryptedShare) -> EncryptedShareBody:
        return cls(sender=m.sender, recipient=m.recipient, sealed=m.sealed, mask_key_commitment=m.mask_key_commitment,
                   seed_commitment=m.seed_commitment)

    def to_message(self) -> EncryptedShare:
        return EncryptedShare(sender=self.sender, recipient=self.recipient, sealed=self.sealed,
                              mask_key_commitment=self.mask_key_commitment, seed_commitment=self.seed_commitment)


class ShareBundleBody(_Body):
    car_id: CarId
    shares: list[EncryptedShareBody]

    @classmethod
    def of(cls, m: ShareBundle) -> ShareBundleBody:
        return cls(car_id=m.car_id, shares=[EncryptedShareBody.of(s) for s in m.shares])

    def to_message(self) -> ShareBundle:
        return ShareBundle(car_id=self.car_id, shares=tuple(s.to_message() for s in self.shares))


class SharesForCarBody(_Body):
    recipient: CarId
    shares: list[EncryptedShareBody]

    @classmethod
    def of(cls, m: SharesForCar) -> SharesForCarBody:
        return cls(recipient=m.recipient, shares=[EncryptedShareBody.of(s) for s in m.shares])

    def to_message(self) -> SharesForCar:
        return SharesForCar(recipient=self.recipient, shares=tuple(s.to_message() for s in self.shares))


class MaskedInputBody(_Body):
    """Inline for small models; a large payload should travel as an artifact named by its digest, as updates do."""

    car_id: CarId
    payload: B64

    @classmethod
    def of(cls, m: MaskedInput) -> MaskedInputBody:
        return cls(car_id=m.car_id, payload=m.payload)

    def to_message(self) -> MaskedInput:
        return MaskedInput(car_id=self.car_id, payload=self.payload)


class UnmaskRequestBody(_Body):
    recipient: CarId
    dropped: list[CarId]
    survivors: list[CarId]

    @classmethod
    def of(cls, m: UnmaskRequest) -> UnmaskRequestBody:
        return cls(recipient=m.recipient, dropped=sorted(m.dropped), survivors=sorted(m.survivors))

    def to_message(self) -> UnmaskRequest:
        return UnmaskRequest(recipient=self.recipient, dropped=frozenset(self.dropped),
                             survivors=frozenset(self.survivors))


class UnmaskResponseBody(_Body):
    car_id: CarId
    mask_key_shares: dict[CarId, B64]
    seed_shares: dict[CarId, B64]

    @classmethod
    def of(cls, m: UnmaskResponse) -> UnmaskResponseBody:
        return cls(car_id=m.car_id, mask_key_shares=dict(m.mask_key_shares), seed_shares=dict(m.seed_shares))

    def to_message(self) -> UnmaskResponse:
        return UnmaskResponse(car_id=self.car_id, mask_key_shares=dict(self.mask_key_shares),
                              seed_shares=dict(self.seed_shares))
