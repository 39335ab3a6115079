"""The random rotation a car applies to its clipped update before quantizing it (the randomized Hadamard transform
of Suresh et al. 2017 and Kairouz, Liu, Steinke 2021): random signs from a seed public to the round, then a
normalized fast Walsh-Hadamard transform. It spreads the update's energy over every coordinate, so each lies near
``N(0, |x|^2 / block)`` and a narrow per-coordinate grid (8 bits) holds it; it is orthogonal, so norms, sums and
the coordinator's norm check are unchanged, and the coordinator undoes it on the decoded sum. Pure functions.

A length ``d`` that is no power of two is not padded (that would send up to twice the coordinates): with ``m`` the
largest power of two ``<= d``, one transform mixes coordinates ``[0, m)`` and a second ``[d - m, d)``. The two
blocks overlap and cover every coordinate, and each output coordinate is a signed average of ``m`` values whose
energy is at most ``|x|^2``, so its spread is at most ``|x| / sqrt(m)``, ``m > d / 2``.
"""

from __future__ import annotations

import math

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fleetgrid.errors import InvalidInput

__all__ = ["block_length", "fwht", "rotate", "unrotate"]


def block_length(d: int) -> int:
    """The Hadamard block of a ``d``-vector: the largest power of two ``<= d``."""
    if d < 1:
        raise InvalidInput(f"a rotated vector needs at least one coordinate, got {d}")
    return 1 << (d.bit_length() - 1)


def fwht(x: np.ndarray) -> np.ndarray:
    """The normalized Walsh-Hadamard transform of a vector of power-of-two length (float64): orthogonal and its
    own inverse. ``log2 n`` vectorised butterfly passes."""
    n = x.shape[0]
    if x.ndim != 1 or n & (n - 1):
        raise InvalidInput(f"the Walsh-Hadamard transform takes a vector of power-of-two length, got {x.shape}")
    y = np.asarray(x, dtype=np.float64)
    h = 1
    while h < n:
        pairs = y.reshape(n // (2 * h), 2, h)  # (blocks, halves, h): coordinate i pairs with i + h
        y = np.stack((pairs[:, 0] + pairs[:, 1], pairs[:, 0] - pairs[:, 1]), axis=1).reshape(n)
        h *= 2
    return y / math.sqrt(n)


def _signs(seed: bytes, m: int) -> np.ndarray:
    """(2, m) random signs +-1 of the two blocks, from an AES-256-CTR keystream of ``seed`` (so every party, on
    any platform, draws the same ones)."""
    if len(seed) != 32:
        raise InvalidInput(f"a rotation seed is 32 bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(b"rotation".ljust(16, b"\0"))).encryptor()
    stream = encryptor.update(bytes((2 * m + 7) // 8)) + encryptor.finalize()
    bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8), count=2 * m, bitorder="little")
    return (1.0 - 2.0 * bits.astype(np.float64)).reshape(2, m)


def _check(x: np.ndarray) -> np.ndarray:
    v = np.array(x, dtype=np.float64)  # a copy: the blocks are transformed in place
    if v.ndim != 1:
        raise InvalidInput(f"a rotated vector must be flat, got shape {v.shape}")
    return v


def rotate(x: np.ndarray, seed: bytes) -> np.ndarray:
    """``x`` rotated by the round's rotation: float64, same length and norm."""
    v = _check(x)
    d = v.shape[0]
    m = block_length(d)
    signs = _signs(seed, m)
    v[:m] = fwht(signs[0] * v[:m])
    if m < d:
        v[d - m:] = fwht(signs[1] * v[d - m:])
    return v


def unrotate(y: np.ndarray, seed: bytes) -> np.ndarray:
    """The inverse of :func:`rotate` (its transpose): the blocks undone in reverse order."""
    v = _check(y)
    d = v.shape[0]
    m = block_length(d)
    signs = _signs(seed, m)
    if m < d:
        v[d - m:] = signs[1] * fwht(v[d - m:])
    v[:m] = signs[0] * fwht(v[:m])
    return v
