"""Wire models of a secure-aggregation round between a car and the coordinator
(``/v1/train/leases/{lease_id}/secagg/{phase}``), and their conversion to the protocol library's dataclasses
(:mod:`fleetgrid.workloads.training.secagg.messages`). Bytes travel as base64. No message names its sender: the
coordinator takes the car from the lease it authenticated, so a car can only ever speak for itself.

    POST advertise  KeyAdvertisementBody    GET share    -> SecAggDownlink(keys)
    POST share      ShareBundleBody         GET masked   -> SecAggDownlink(shares)
    POST masked     MaskedBody              GET unmask   -> SecAggDownlink(dropped, survivors)
    POST unmask     UnmaskBody
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fleetgrid.errors import InvalidInput
from fleetgrid.protocol import SecAggPlan, UpdateReport
from fleetgrid.workloads.training.secagg import (
    EncryptedShare,
    KeyAdvertisement,
    NeighbourKeys,
    Quantization,
    RoundPlan,
    ShareBundle,
    SharesForCar,
    UnmaskRequest,
    UnmaskResponse,
)

__all__ = [
    "POST_PHASES",
    "GET_PHASES",
    "EncryptedShareBody",
    "KeyAdvertisementBody",
    "MaskedBody",
    "SecAggAck",
    "SecAggDownlink",
    "ShareBundleBody",
    "UnmaskBody",
    "b64",
    "plan_from_wire",
    "plan_to_wire",
    "unb64",
]

POST_PHASES = ("advertise", "share", "masked", "unmask")
"""What a car sends, in order."""
GET_PHASES = ("share", "masked", "unmask")
"""What a car fetches before sending the phase of the same name."""
MAX_COHORT = 4096
_KEY = 44  # base64 of 32 bytes
_SHARE_B64 = 256  # generous for one Shamir share or commitment
_SEALED_B64 = 512


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{what} must be base64, got {text[:40]!r}") from exc


def plan_to_wire(plan: RoundPlan, member: str) -> SecAggPlan:
    q = plan.quantization
    return SecAggPlan(round_id=plan.round_id, cohort=list(plan.cohort), member=member,
                      vector_length=plan.vector_length, clip=q.clip, bound=q.bound, bits=q.bits,
                      rotation=None if q.rotation is None else b64(q.rotation), max_dropout=plan.max_dropout,
                      seed=b64(plan.seed))


def plan_from_wire(wire: SecAggPlan) -> RoundPlan:
    return RoundPlan(round_id=wire.round_id, cohort=tuple(wire.cohort), vector_length=wire.vector_length,
                     quantization=Quantization(
                         clip=wire.clip, bound=wire.bound, bits=wire.bits,
                         rotation=None if wire.rotation is None else unb64(wire.rotation, "the rotation seed")),
                     max_dropout=wire.max_dropout, seed=unb64(wire.seed, "the round seed"))


class KeyAdvertisementBody(_Wire):
    cipher_pk: str = Field(min_length=_KEY, max_length=_KEY)
    mask_pk: str = Field(min_length=_KEY, max_length=_KEY)
    seed_commitment: str = Field(min_length=1, max_length=_SHARE_B64)

    @classmethod
    def of(cls, adv: KeyAdvertisement) -> KeyAdvertisementBody:
        return cls(cipher_pk=b64(adv.cipher_pk), mask_pk=b64(adv.mask_pk), seed_commitment=b64(adv.seed_commitment))

    def to_message(self, car_id: str) -> KeyAdvertisement:
        return KeyAdvertisement(car_id=car_id, cipher_pk=unb64(self.cipher_pk, "cipher_pk"),
                                mask_pk=unb64(self.mask_pk, "mask_pk"),
                                seed_commitment=unb64(self.seed_commitment, "seed_commitment"))


class EncryptedShareBody(_Wire):
    sender: str = Field(min_length=1, max_length=200)
    recipient: str = Field(min_length=1, max_length=200)
    sealed: str = Field(min_length=1, max_length=_SEALED_B64)
    mask_key_commitment: str = Field(min_length=1, max_length=_SHARE_B64)
    seed_commitment: str = Field(min_length=1, max_length=_SHARE_B64)

    @classmethod
    def of(cls, s: EncryptedShare) -> EncryptedShareBody:
        return cls(sender=s.sender, recipient=s.recipient, sealed=b64(s.sealed),
                   mask_key_commitment=b64(s.mask_key_commitment), seed_commitment=b64(s.seed_commitment))

    def to_message(self) -> EncryptedShare:
        return EncryptedShare(sender=self.sender, recipient=self.recipient, sealed=unb64(self.sealed, "sealed"),
                              mask_key_commitment=unb64(self.mask_key_commitment, "mask_key_commitment"),
                              seed_commitment=unb64(self.seed_commitment, "seed_commitment"))


class ShareBundleBody(_Wire):
    """The car's sealed shares, one per neighbour that advertised; each names this car as its sender."""

    shares: list[EncryptedShareBody] = Field(max_length=MAX_COHORT)

    def to_message(self, car_id: str) -> ShareBundle:
        shares = tuple(s.to_message() for s in self.shares)
        strangers = sorted({s.sender for s in shares} - {car_id})
        if strangers:
            raise InvalidInput(f"car {car_id!r} may deal only its own shares; the bundle names senders {strangers}")
        return ShareBundle(car_id=car_id, shares=shares)


class MaskedBody(_Wire):
    """The masked input, uploaded first as an artifact (``PUT /v1/artifacts/{sha256}``) like a plain update, and
    the report of the work behind it; ``report.update`` names the artifact."""

    report: UpdateReport


class UnmaskBody(_Wire):
    mask_key_shares: dict[str, str] = Field(max_length=MAX_COHORT)
    seed_shares: dict[str, str] = Field(max_length=MAX_COHORT)

    @classmethod
    def of(cls, r: UnmaskResponse) -> UnmaskBody:
        return cls(mask_key_shares={c: b64(y) for c, y in r.mask_key_shares.items()},
                   seed_shares={c: b64(y) for c, y in r.seed_shares.items()})

    def to_message(self, car_id: str) -> UnmaskResponse:
        for share in [*self.mask_key_shares.values(), *self.seed_shares.values()]:
            if len(share) > _SHARE_B64:
                raise InvalidInput(f"a revealed share is at most {_SHARE_B64} base64 characters, got {len(share)}")
        keys = {c: unb64(y, "a mask-key share") for c, y in self.mask_key_shares.items()}
        seeds = {c: unb64(y, "a seed share") for c, y in self.seed_shares.items()}
        return UnmaskResponse(car_id=car_id, mask_key_shares=keys, seed_shares=seeds)


class SecAggAck(_Wire):
    """The answer to a car's message: taken into the round (200), or stored and not ruled on yet (202,
    ``pending``): a refusal then comes as the error of the car's next fetch."""

    round_id: str
    phase: str
    accepted: bool = True
    pending: bool = False


class SecAggDownlink(_Wire):
    """What the car fetches before a phase: not ready yet (ask again after ``retry_after_s``), or its part."""

    round_id: str
    phase: Literal["share", "masked", "unmask"]
    ready: bool
    retry_after_s: float = 0.0
    keys: dict[str, KeyAdvertisementBody] | None = Field(default=None, description="phase 'share': the "
                                                         "neighbours' advertised keys")
    shares: list[EncryptedShareBody] | None = Field(default=None, description="phase 'masked': the sealed shares "
                                                    "the neighbours dealt this car")
    dropped: list[str] | None = Field(default=None, description="phase 'unmask': neighbours to reveal mask-key "
                                      "shares of")
    survivors: list[str] | None = Field(default=None, description="phase 'unmask': neighbours to reveal seed "
                                        "shares of")

    def neighbour_keys(self, car_id: str) -> NeighbourKeys:
        return NeighbourKeys(recipient=car_id, keys={c: a.to_message(c) for c, a in (self.keys or {}).items()})

    def shares_for(self, car_id: str) -> SharesForCar:
        return SharesForCar(recipient=car_id, shares=tuple(s.to_message() for s in self.shares or []))

    def unmask_request(self, car_id: str) -> UnmaskRequest:
        return UnmaskRequest(recipient=car_id, dropped=frozenset(self.dropped or ()),
                             survivors=frozenset(self.survivors or ()))
