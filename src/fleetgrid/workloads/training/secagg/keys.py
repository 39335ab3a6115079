"""The cryptographic primitives of a round, all from the ``cryptography`` package: X25519 key agreement, HKDF-SHA256
key derivation, AES-256-GCM for the shares cars send each other through the coordinator, and SHA-256 commitments.

Every derived key is bound to the round (its context digest) and to the pair of cars, so nothing carries over
between rounds or pairs; a share key is also bound to the direction, so each key seals one message and a fixed
nonce is safe.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from fleetgrid.errors import InvalidInput

__all__ = [
    "COMMITMENT_NBYTES",
    "KeyPair",
    "commit",
    "frame",
    "open_share",
    "pair_mask_seed",
    "private_key_from_bytes",
    "public_bytes",
    "seal_share",
]

COMMITMENT_NBYTES = 16
"""A truncated SHA-256: 128 bits bind a car to a 256-bit secret or share it cannot change afterwards."""
_NONCE = bytes(12)


def frame(*parts: bytes | str) -> bytes:
    """Length-prefixed concatenation, so that no two different tuples of parts give the same bytes."""
    out = bytearray()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        out += struct.pack(">I", len(b)) + b
    return bytes(out)


def commit(kind: str, context: bytes, owner: str, secret: bytes) -> bytes:
    """A hiding, binding commitment to a high-entropy ``secret`` (a seed, a share), tagged by what it is."""
    return hashlib.sha256(frame(b"fleetgrid-secagg-commit", kind, context, owner, secret)).digest()[:COMMITMENT_NBYTES]


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def private_key_from_bytes(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


class KeyPair:
    """One X25519 key pair; the private half never leaves the car except as Shamir shares of the mask key."""

    def __init__(self, private: X25519PrivateKey | None = None) -> None:
        self.private = private if private is not None else X25519PrivateKey.generate()
        self.public = public_bytes(self.private)

    def raw_private(self) -> bytes:
        return private_bytes(self.private)

    def agree(self, peer_public: bytes) -> bytes:
        if len(peer_public) != 32:
            raise InvalidInput(f"an X25519 public key is 32 bytes, got {len(peer_public)}")
        return self.private.exchange(X25519PublicKey.from_public_bytes(peer_public))


def _hkdf(shared: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def pair_mask_seed(mine: KeyPair, peer_public: bytes, context: bytes, a: str, b: str) -> bytes:
    """The seed of the pairwise mask between cars ``a`` and ``b``: both derive it, from either side."""
    lo, hi = sorted((a, b))
    return _hkdf(mine.agree(peer_public), frame(b"fleetgrid-secagg-mask", context, lo, hi))


def _share_key(mine: KeyPair, peer_public: bytes, context: bytes, sender: str, recipient: str) -> bytes:
    return _hkdf(mine.agree(peer_public), frame(b"fleetgrid-secagg-share", context, sender, recipient))


def seal_share(mine: KeyPair, peer_public: bytes, context: bytes, sender: str, recipient: str, plain: bytes) -> bytes:
    """AES-GCM under a key only ``sender`` and ``recipient`` can derive; the coordinator relays what it cannot read."""
    key = _share_key(mine, peer_public, context, sender, recipient)
    return AESGCM(key).encrypt(_NONCE, plain, frame(context, sender, recipient))


def open_share(mine: KeyPair, peer_public: bytes, context: bytes, sender: str, recipient: str, sealed: bytes) -> bytes:
    key = _share_key(mine, peer_public, context, sender, recipient)
    try:
        return AESGCM(key).decrypt(_NONCE, sealed, frame(context, sender, recipient))
    except InvalidTag as exc:
        raise InvalidInput(f"the shares {sender!r} sent to {recipient!r} do not decrypt: altered in transit, or "
                           "sealed for another round or car") from exc
