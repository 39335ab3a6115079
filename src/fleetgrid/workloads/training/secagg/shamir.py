"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^256 + 297).

Why it is written here rather than taken from a library: the one well-kept Python implementation,
pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir``, shares 16-byte secrets over GF(2^128) and would be a new
dependency for ~60 lines of arithmetic; the ``cryptography`` package we already use has no secret sharing. A field
just above 2^256 takes an X25519 private key or a 32-byte seed whole, in one share of 33 bytes. The maths is the
textbook scheme (Shamir, 1979): a random polynomial of degree ``t - 1`` whose constant term is the secret, one
point per holder, Lagrange interpolation at 0 from any ``t`` points. ``2^256 + 297`` is the smallest prime above
2^256 (tests check it). Randomness comes from ``secrets``: coefficients must be unpredictable, or shares leak.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from fleetgrid.errors import InvalidInput

__all__ = ["PRIME", "SHARE_NBYTES", "Share", "evaluate", "interpolate", "reconstruct", "split"]

PRIME = 2**256 + 297
SHARE_NBYTES = 33
"""Bytes of a share's value on the wire (big-endian, < PRIME)."""


@dataclass(frozen=True, kw_only=True)
class Share:
    """The point ``(x, y)`` of a sharing polynomial held by one holder; ``x`` >= 1 names the holder."""

    x: int
    y: int

    def __post_init__(self) -> None:
        if not (isinstance(self.x, int) and 1 <= self.x < PRIME):
            raise InvalidInput(f"a share's x must be an integer in [1, PRIME), got {self.x!r}")
        if not (isinstance(self.y, int) and 0 <= self.y < PRIME):
            raise InvalidInput(f"a share's y must be an integer in [0, PRIME), got {self.y!r}")

    def y_bytes(self) -> bytes:
        return self.y.to_bytes(SHARE_NBYTES, "big")

    @classmethod
    def from_bytes(cls, x: int, y: bytes) -> Share:
        if len(y) != SHARE_NBYTES:
            raise InvalidInput(f"a share's value must be {SHARE_NBYTES} bytes, got {len(y)}")
        return cls(x=x, y=int.from_bytes(y, "big"))


def split(secret: bytes, xs: Sequence[int], threshold: int) -> list[Share]:
    """Shares of a 32-byte ``secret``, one at each of ``xs`` (distinct, >= 1); any ``threshold`` of them rebuild it."""
    if len(secret) != 32:
        raise InvalidInput(f"Shamir shares 32-byte secrets here, got {len(secret)} bytes")
    if len(set(xs)) != len(xs) or any(not 1 <= x < PRIME for x in xs):
        raise InvalidInput(f"share points must be distinct integers >= 1, got {list(xs)}")
    if not 1 <= threshold <= len(xs):
        raise InvalidInput(f"threshold must be in [1, {len(xs)}] (the number of holders), got {threshold}")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return [Share(x=x, y=evaluate(coeffs, x)) for x in xs]


def evaluate(coeffs: Sequence[int], x: int) -> int:
    """The polynomial ``sum(coeffs[i] * x^i)`` at ``x``, mod PRIME (Horner)."""
    y = 0
    for c in reversed(coeffs):
        y = (y * x + c) % PRIME
    return y


def interpolate(shares: Sequence[Share], at: int) -> int:
    """The value at ``at`` of the unique polynomial of degree < len(shares) through ``shares`` (Lagrange)."""
    xs = [s.x for s in shares]
    if len(set(xs)) != len(xs):
        raise InvalidInput(f"shares must have distinct x, got {xs}")
    total = 0
    for i, si in enumerate(shares):
        num = den = 1
        for j, sj in enumerate(shares):
            if i != j:
                num = num * (at - sj.x) % PRIME
                den = den * (si.x - sj.x) % PRIME
        total = (total + si.y * num * pow(den, -1, PRIME)) % PRIME
    return total


def reconstruct(shares: Sequence[Share], threshold: int) -> bytes:
    """The 32-byte secret from the first ``threshold`` of ``shares``; the caller checks it against a commitment."""
    if len(shares) < threshold:
        raise InvalidInput(f"{len(shares)} shares cannot rebuild a secret shared with threshold {threshold}")
    value = interpolate(shares[:threshold], 0)
    if value >= 2**256:
        raise InvalidInput("these shares interpolate to no 32-byte secret: at least one of them is wrong")
    return value.to_bytes(32, "big")
