"""The integer domain secure aggregation sums in: quantization of a car's clipped update, masks drawn from a seed,
tight bit packing of masked vectors, and decoding a sum back to a mean. Pure functions of arrays.

A car clips its update to L2 norm ``clip``, clamps each coordinate to ``[-bound, bound]`` (the range the
coordinator publishes for the round), and rounds ``(x + bound) / step`` stochastically to an integer in
``[0, 2^bits - 1]``, ``step = 2 bound / (2^bits - 1)``: unbiased, non-negative, and the same grid for the whole
cohort, so integers add. The sum of ``n`` such integers is below ``n 2^bits``, so arithmetic mod ``2^m`` with
``m = bits + ceil(log2 n)`` loses nothing; masks are uniform mod ``2^m``.

With a ``rotation`` seed, the grid lives in a randomly rotated basis (:mod:`.rotation`): the car rotates its
clipped update before clamping and rounding, and :func:`decode_sum` rotates the decoded sum back. Rotated, every
coordinate is about ``|x| / sqrt(d)``, so ``bound`` can be a few times that instead of the whole clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.secagg.rotation import rotate, unrotate

__all__ = [
    "Quantization",
    "clip_norm",
    "decode_sum",
    "modulus_bits",
    "pack",
    "packed_nbytes",
    "prg_mask",
    "quantize",
    "sum_norm_bound",
    "unpack",
]

MAX_MODULUS_BITS = 32


@dataclass(frozen=True, kw_only=True)
class Quantization:
    """The grid a round's updates are put on; the coordinator publishes one per round, common to the cohort."""

    clip: float
    """L2 norm every honest car clips its update to (the norm bound the coordinator checks sums against)."""
    bound: float
    """Each coordinate is clamped to ``[-bound, bound]`` before quantization; > 0."""
    bits: int = 8
    """Bits per quantized coordinate, 1..24."""
    rotation: bytes | None = None
    """32 bytes, public to the round: the seed of the random rotation (:func:`.rotation.rotate`) applied before
    quantizing and undone after decoding; None: coordinates are quantized as they are."""

    def __post_init__(self) -> None:
        for name in ("clip", "bound"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < math.inf):
                raise InvalidInput(f"quantization {name} must be a finite number > 0, got {v!r}")
        if not (isinstance(self.bits, int) and 1 <= self.bits <= 24):
            raise InvalidInput(f"quantization bits must be an integer in [1, 24], got {self.bits!r}")
        if self.rotation is not None and not (isinstance(self.rotation, bytes) and len(self.rotation) == 32):
            raise InvalidInput(f"a quantization's rotation seed must be 32 bytes or None, got {self.rotation!r:.60}")

    @property
    def levels(self) -> int:
        """The largest quantized value, ``2^bits - 1``."""
        return (1 << self.bits) - 1

    @property
    def step(self) -> float:
        return 2 * self.bound / self.levels


def modulus_bits(bits: int, n: int) -> int:
    """Bits of the modulus that holds the sum of ``n`` values of ``bits`` bits without wrapping."""
    m = bits + max(0, math.ceil(math.log2(n)))
    if m > MAX_MODULUS_BITS:
        raise InvalidInput(f"{n} inputs of {bits} bits need a {m}-bit modulus; at most {MAX_MODULUS_BITS} is "
                           "supported: use fewer bits or smaller groups")
    return m


def clip_norm(update: np.ndarray, clip: float) -> np.ndarray:
    """``update`` scaled down to L2 norm ``clip`` if it is longer (float64)."""
    x = np.asarray(update, dtype=np.float64)
    norm = float(np.linalg.norm(x))
    return x * (clip / norm) if norm > clip else x


def quantize(update: np.ndarray, q: Quantization, rng: np.random.Generator) -> np.ndarray:
    """The car's clipped (and rotated, if the grid is) update, clamped and stochastically rounded onto the round's
    grid: uint32 in [0, levels]."""
    x = np.asarray(update)
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
        raise InvalidInput(f"an update must be a flat float vector, got shape {x.shape} dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise InvalidInput(f"an update must be finite; {int((~np.isfinite(x)).sum())} values are NaN or infinite")
    clipped = clip_norm(x, q.clip)
    if q.rotation is not None:
        clipped = rotate(clipped, q.rotation)
    scaled = (np.clip(clipped, -q.bound, q.bound) + q.bound) / q.step  # in [0, levels]
    low = np.floor(scaled)
    up = rng.random(scaled.shape) < (scaled - low)
    return np.minimum(low + up, q.levels).astype(np.uint32)


def decode_sum(total: np.ndarray, count: int, q: Quantization) -> np.ndarray:
    """The float sum of ``count`` updates from the integer sum of their quantized values (offsets removed, and
    the grid's rotation undone: the sum of rotated updates is the rotated sum)."""
    decoded = np.asarray(total, dtype=np.float64) * q.step - count * q.bound
    return decoded if q.rotation is None else unrotate(decoded, q.rotation)


def sum_norm_bound(count: int, q: Quantization, numel: int) -> float:
    """The largest L2 norm the decoded sum of ``count`` honest updates can have: each is clipped to ``clip`` and
    moved by at most one grid step per coordinate by rounding, so ``count * (clip + step * sqrt(numel))``; clamping
    only shortens it, and the rotation changes no norm."""
    return count * (q.clip + q.step * math.sqrt(numel))


def prg_mask(seed: bytes, length: int, bits: int) -> np.ndarray:
    """``length`` uniform values mod ``2^bits`` (uint64) from a 32-byte seed: AES-256-CTR keystream, 4 bytes each."""
    if len(seed) != 32:
        raise InvalidInput(f"a mask seed is 32 bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(4 * length)) + encryptor.finalize()
    words = np.frombuffer(stream, dtype="<u4").astype(np.uint64)
    return words & np.uint64((1 << bits) - 1)


def packed_nbytes(length: int, bits: int) -> int:
    return (length * bits + 7) // 8


def pack(values: np.ndarray, bits: int) -> bytes:
    """Values in ``[0, 2^bits)`` packed at ``bits`` bits each, little-endian bit order, no padding between them."""
    v = np.asarray(values)
    if v.ndim != 1 or not np.issubdtype(v.dtype, np.integer):
        raise InvalidInput(f"pack takes a flat integer vector, got shape {v.shape} dtype {v.dtype}")
    if v.size and (int(v.min()) < 0 or int(v.max()) >= 1 << bits):
        raise InvalidInput(f"values to pack must be in [0, 2^{bits}), got [{int(v.min())}, {int(v.max())}]")
    v64 = v.astype(np.uint64)
    bit_planes = ((v64[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)  # (L, bits)
    return np.packbits(bit_planes.reshape(-1), bitorder="little").tobytes()


def unpack(blob: bytes, length: int, bits: int) -> np.ndarray:
    """The inverse of :func:`pack`: ``length`` uint64 values."""
    if len(blob) != packed_nbytes(length, bits):
        raise InvalidInput(f"a packed vector of {length} values at {bits} bits is {packed_nbytes(length, bits)} "
                           f"bytes, got {len(blob)}")
    flat = np.unpackbits(np.frombuffer(blob, dtype=np.uint8), count=length * bits, bitorder="little")
    planes = flat.reshape(length, bits).astype(np.uint64)  # (L, bits)
    return (planes << np.arange(bits, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
