"""Signed car requests: a car's Ed25519 key, and the one canonical text both sides sign and verify.

A car makes its key pair at enrollment and sends the public half; from then on every request carries
``X-Fleetgrid-Signature: t=<unix time>,n=<nonce>,s=<signature>`` over (car, method, path and query, sha256 of the
body, t, n). The coordinator refuses a stale ``t`` and a nonce it has seen, so a request copied off the wire (or out
of a log) cannot be sent again, and the bearer secret alone no longer makes a car: the private key never leaves it.
The agent and the coordinator import these definitions, so the text signed is the text verified.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import AuthError, InvalidInput

__all__ = [
    "SIGNATURE_HEADER",
    "UNSIGNED_PAYLOAD",
    "CarKey",
    "Proof",
    "body_hash",
    "canonical",
    "load_public_key",
    "parse_proof",
    "verify",
]

SIGNATURE_HEADER = "X-Fleetgrid-Signature"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
"""The body hash of an artifact upload (``PUT /v1/artifacts/{sha256}``): its path already names the sha256 of its
bytes, which the coordinator checks as it stores them, so the coordinator need not read a 2 GiB body before it
knows who sent it."""
_VERSION = "fleetgrid-car-v1"
_MAX_HEADER = 256


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def canonical(vehicle_id: str, method: str, target: str, digest: str, t: str, nonce: str) -> bytes:
    """What is signed: one line per field, so no field can bleed into the next (none may hold a newline)."""
    return "\n".join((_VERSION, vehicle_id, method.upper(), target, digest, t, nonce)).encode()


class CarKey:
    """A car's private key, kept in its state directory (PKCS#8 PEM, mode 0600)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private

    @classmethod
    def generate(cls) -> CarKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> CarKey | None:
        """The key at ``path``; None if there is no file there."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InvalidInput(f"{path} cannot be read ({exc}); fix its permissions or enroll again") from exc
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"{path} is not a PEM Ed25519 private key ({exc}); delete the state directory's "
                               "enrollment.json and it, and enroll again") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidInput(f"{path} holds a {type(key).__name__}, not an Ed25519 key; enroll again")
        return cls(key)

    def save(self, path: Path) -> None:
        """Write the key owner-only, by atomic rename (a power cut never leaves half a key)."""
        pem = self._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a tmp file left by an earlier crash
        os.replace(tmp, path)

    @property
    def public_text(self) -> str:
        """The public key as enrollment sends it: the 32 raw bytes, base64url without padding."""
        raw = self._private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return _b64(raw)

    def sign(self, vehicle_id: str, method: str, target: str, digest: str, now: float) -> dict[str, str]:
        """The header that proves this request comes from the car now. ``target``: path and query as sent."""
        t, nonce = f"{now:.3f}", secrets.token_urlsafe(16)
        signature = self._private.sign(canonical(vehicle_id, method, target, digest, t, nonce))
        return {SIGNATURE_HEADER: f"t={t},n={nonce},s={_b64(signature)}"}


def load_public_key(text: str) -> Ed25519PublicKey:
    """A public key as enrollment carries it; InvalidInput naming the form expected if it is not one."""
    try:
        raw = _unb64(text)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"public_key is not base64url ({exc}); send the 32 raw bytes of an Ed25519 public key, "
                           "base64url-encoded") from exc
    if len(raw) != 32:
        raise InvalidInput(f"public_key decodes to {len(raw)} bytes; an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True, slots=True)
class Proof:
    t: str
    nonce: str
    signature: bytes

    @property
    def at(self) -> float:
        return float(self.t)


def parse_proof(header: str | None) -> Proof:
    """The signature header's fields; AuthError naming the form expected if it is missing or malformed."""
    form = f"expected '{SIGNATURE_HEADER}: t=<unix time>,n=<nonce>,s=<base64url Ed25519 signature>'"
    if not header:
        raise AuthError(f"this car enrolled with a key, so its requests must be signed; {form}")
    fields = dict(part.partition("=")[::2] for part in header[:_MAX_HEADER].split(","))
    try:
        t, nonce, sig = fields["t"], fields["n"], _unb64(fields["s"])
        finite = math.isfinite(float(t))
    except (KeyError, ValueError, binascii.Error):
        raise AuthError(f"malformed request signature; {form}") from None
    if not finite or not (8 <= len(nonce) <= 64) or "\n" in nonce or "\n" in t or len(sig) != 64:
        raise AuthError(f"malformed request signature; {form}")
    return Proof(t, nonce, sig)


def verify(key: Ed25519PublicKey, proof: Proof, vehicle_id: str, method: str, target: str, digest: str) -> bool:
    try:
        key.verify(proof.signature, canonical(vehicle_id, method, target, digest, proof.t, proof.nonce))
    except InvalidSignature:
        return False
    return True
