"""What crosses the coordinator boundary in a secure-aggregation round, phase by phase (dataclasses inside; wire
models should carry exactly these fields, bytes as base64).

    coordinator -> cars   RoundPlan                      the cohort, the graph seed, the grid, max_dropout
    car -> coordinator    KeyAdvertisement               two X25519 public keys + a commitment to its seed
    coordinator -> car    NeighbourKeys                  its neighbours' advertisements
    car -> coordinator    ShareBundle                    Shamir shares of its two secrets, sealed per neighbour
    coordinator -> car    SharesForCar                   the sealed shares its neighbours sent it
    car -> coordinator    MaskedInput                    its quantized update plus masks, bit-packed
    coordinator -> car    UnmaskRequest                  which neighbours dropped, which survived
    car -> coordinator    UnmaskResponse                 mask-key shares of the dropped, seed shares of the rest

``nbytes`` is each message's size in a compact binary encoding (raw bytes, each id with a 2-byte length): what
the benchmark counts.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.secagg.encoding import Quantization, modulus_bits, packed_nbytes
from fleetgrid.workloads.training.secagg.graph import choose_degree, neighbour_graph
from fleetgrid.workloads.training.secagg.keys import COMMITMENT_NBYTES, frame
from fleetgrid.workloads.training.secagg.shamir import SHARE_NBYTES

__all__ = [
    "EncryptedShare",
    "KeyAdvertisement",
    "MaskedInput",
    "NeighbourKeys",
    "RoundPlan",
    "ShareBundle",
    "SharesForCar",
    "UnmaskRequest",
    "UnmaskResponse",
]


def _id_nbytes(*ids: str) -> int:
    return sum(2 + len(i.encode()) for i in ids)


@dataclass(frozen=True, kw_only=True)
class RoundPlan:
    """One round of secure aggregation over one cohort (or one group of it), as the coordinator publishes it."""

    round_id: str
    cohort: tuple[str, ...]
    """The cars asked, sorted; a car's share point is its position + 1."""
    vector_length: int
    quantization: Quantization
    max_dropout: float = 0.3
    """The fraction of the cohort that may be lost after advertising with the sum still recovered."""
    seed: bytes
    """32 random bytes from the coordinator: orders the neighbour graph."""

    def __post_init__(self) -> None:
        if not self.round_id:
            raise InvalidInput("a secure-aggregation round needs a non-empty round_id")
        if list(self.cohort) != sorted(set(self.cohort)):
            raise InvalidInput("the cohort must be sorted with each car once, got "
                               f"{list(self.cohort)[:8]}{'...' if len(self.cohort) > 8 else ''}")
        if not (isinstance(self.vector_length, int) and self.vector_length >= 1):
            raise InvalidInput(f"vector_length must be an integer >= 1, got {self.vector_length!r}")
        if len(self.seed) != 32:
            raise InvalidInput(f"the round seed must be 32 bytes, got {len(self.seed)}")
        choose_degree(len(self.cohort), self.max_dropout)  # refuses cohorts that cannot survive max_dropout
        modulus_bits(self.quantization.bits, len(self.cohort))

    @functools.cached_property
    def degree(self) -> tuple[int, int]:
        """``(k, t)``: neighbours per car and the shares that rebuild a secret."""
        return choose_degree(len(self.cohort), self.max_dropout)

    @property
    def threshold(self) -> int:
        return self.degree[1]

    @functools.cached_property
    def graph(self) -> dict[str, frozenset[str]]:
        return neighbour_graph(self.cohort, self.degree[0], self.seed)

    @property
    def modulus_bits(self) -> int:
        return modulus_bits(self.quantization.bits, len(self.cohort))

    @functools.cached_property
    def context(self) -> bytes:
        """A digest of everything that defines the round; every key and commitment is bound to it."""
        q = self.quantization
        return hashlib.sha256(frame(self.round_id, self.seed, *self.cohort, str(self.vector_length),
                                    f"{q.clip!r}/{q.bound!r}/{q.bits}", q.rotation or b"",
                                    repr(self.max_dropout))).digest()

    def point(self, car: str) -> int:
        return self._points[car]

    @functools.cached_property
    def _points(self) -> dict[str, int]:
        return {c: i + 1 for i, c in enumerate(self.cohort)}

    def member(self, car: str) -> None:
        if car not in self._points:
            raise InvalidInput(f"car {car!r} is not in the cohort of round {self.round_id!r}")

    @property
    def nbytes(self) -> int:
        # the ids, then seed, vector_length, clip, bound, bits, rotation, max_dropout
        rotation = 32 if self.quantization.rotation is not None else 0
        return _id_nbytes(self.round_id, *self.cohort) + 32 + 4 + 8 + 8 + 1 + rotation + 8


@dataclass(frozen=True, kw_only=True)
class KeyAdvertisement:
    car_id: str
    cipher_pk: bytes
    """Encrypts the shares sent to this car."""
    mask_pk: bytes
    """Derives this car's pairwise masks; its private key is what survivors rebuild if this car drops."""
    seed_commitment: bytes
    """``commit('seed', ...)`` of the self-mask seed: what a rebuilt seed is checked against."""

    def __post_init__(self) -> None:
        if len(self.cipher_pk) != 32 or len(self.mask_pk) != 32:
            raise InvalidInput(f"car {self.car_id!r}: public keys are 32 bytes each")
        if len(self.seed_commitment) != COMMITMENT_NBYTES:
            raise InvalidInput(f"car {self.car_id!r}: a commitment is {COMMITMENT_NBYTES} bytes")

    @property
    def nbytes(self) -> int:
        return _id_nbytes(self.car_id) + 64 + COMMITMENT_NBYTES


@dataclass(frozen=True, kw_only=True)
class NeighbourKeys:
    recipient: str
    keys: Mapping[str, KeyAdvertisement]

    @property
    def nbytes(self) -> int:
        return _id_nbytes(self.recipient) + sum(a.nbytes for a in self.keys.values())


@dataclass(frozen=True, kw_only=True)
class EncryptedShare:
    """The dealer's shares of its mask key and its seed for one neighbour, sealed for that neighbour, with a
    commitment to each share that the coordinator keeps to check what the neighbour reveals later."""

    sender: str
    recipient: str
    sealed: bytes
    mask_key_commitment: bytes
    seed_commitment: bytes

    @property
    def nbytes(self) -> int:
        return _id_nbytes(self.sender, self.recipient) + len(self.sealed) + 2 * COMMITMENT_NBYTES


@dataclass(frozen=True, kw_only=True)
class ShareBundle:
    car_id: str
    shares: tuple[EncryptedShare, ...]

    @property
    def nbytes(self) -> int:
        return _id_nbytes(self.car_id) + sum(s.nbytes for s in self.shares)


@dataclass(frozen=True, kw_only=True)
class SharesForCar:
    recipient: str
    shares: tuple[EncryptedShare, ...]

    @property
    def nbytes(self) -> int:
        return _id_nbytes(self.recipient) + sum(s.nbytes for s in self.shares)


@dataclass(frozen=True, kw_only=True)
class MaskedInput:
    car_id: str
    payload: bytes
    """``pack(masked, modulus_bits)``."""

    def check(self, plan: RoundPlan) -> None:
        want = packed_nbytes(plan.vector_length, plan.modulus_bits)
        if len(self.payload) != want:
            raise InvalidInput(f"car {self.car_id!r}: a masked input of {plan.vector_length} values at "
                               f"{plan.modulus_bits} bits is {want} bytes, got {len(self.payload)}")

    @property
    def nbytes(self) -> int:
        return _id_nbytes(self.car_id) + len(self.payload)


@dataclass(frozen=True, kw_only=True)
class UnmaskRequest:
    recipient: str
    dropped: frozenset[str]
    """Neighbours whose mask key the recipient is asked to reveal a share of."""
    survivors: frozenset[str]
    """Neighbours whose self-mask seed the recipient is asked to reveal a share of."""

    @property
    def nbytes(self) -> int:
        return _id_nbytes(self.recipient, *self.dropped, *self.survivors)


@dataclass(frozen=True, kw_only=True)
class UnmaskResponse:
    car_id: str
    mask_key_shares: Mapping[str, bytes]
    """Dropped neighbour -> this car's share (``SHARE_NBYTES``) of its mask key."""
    seed_shares: Mapping[str, bytes]
    """Surviving neighbour -> this car's share of its self-mask seed."""

    @property
    def nbytes(self) -> int:
        ids = [*self.mask_key_shares, *self.seed_shares]
        return _id_nbytes(self.car_id, *ids) + SHARE_NBYTES * len(ids)
