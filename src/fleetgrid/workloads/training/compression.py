"""Update compression: per-chunk int8 / 4-bit / 2-bit quantization, top-k sparsification, error feedback, and a byte
format.

Everything here is a pure function of flat float32 arrays, except :class:`ErrorFeedback`, which a car (or the
coordinator, for the downlink) keeps between rounds. An encoded update is self-describing: a fixed little-endian
header names the codec, original dtype and shape, so the receiver needs no side channel to decode it, and
:func:`encoded_nbytes` predicts its exact length so byte accounting never has to encode anything.

Byte layout (all little-endian)::

    header   magic b"FGU1" | codec u8 | dtype u8 | ndim u8 | pad u8 | chunk u32 | numel u32 | kept u32 | dims u32*ndim
    sparse   indices u32 * kept                        (top-k codecs only, ascending)
    values   float32 * kept                            (bits=None)
             scales f32 * ceil(kept/chunk) | q i8 * kept              (bits=8)
             scales f32 * ceil(kept/chunk) | q u4 packed, ceil(kept/2) (bits=4)
             scales f32 * ceil(kept/chunk) | q u2 packed, ceil(kept/4) (bits=2)

The 2-bit codec is ternary: -1, 0 or +1 times half the chunk's absmax, so values under a quarter of the chunk's
largest are sent as 0 and those above three quarters are sent short. It is meant for a sender with error feedback,
which carries both into its next vectors; what is still owed then stays within about one vector's largest value (a
scale set from the chunk's mean instead would leave the few large values owed more and more).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import torch

from fleetgrid.errors import InvalidInput

__all__ = [
    "CompressionConfig",
    "ErrorFeedback",
    "decode",
    "densify",
    "dequantize_int4",
    "dequantize_int8",
    "encode",
    "encoded_nbytes",
    "header_nbytes",
    "pack_crumbs",
    "pack_nibbles",
    "quantize_int4",
    "quantize_int8",
    "read_header",
    "topk_sparsify",
    "unpack_crumbs",
    "unpack_nibbles",
]

_MAGIC = b"FGU1"
_HEADER = struct.Struct("<4sBBBxIII")  # magic, codec, dtype, ndim, pad, chunk, numel, kept
_DTYPES = {0: np.dtype(np.float32)}  # the only dtype updates travel in; the code leaves room for bf16 later
_INT4_LEVELS = 7  # symmetric levels -7..7, stored offset by 8 in a nibble (0 is never written)
_INT8_LEVELS = 127
_CODEC_OF_BITS = {None: 0, 8: 1, 4: 2, 2: 6}  # codec byte of a dense vector; +3 (+1 for 2-bit) when top-k


@dataclass(frozen=True, kw_only=True)
class CompressionConfig:
    """How a flat float32 vector is shrunk before it travels."""

    bits: int | None = None
    """None sends float32 values; 8 or 4 quantizes them with one absmax scale per ``chunk_size`` values; 2 sends
    each value as -1, 0 or +1 times a per-chunk scale (lossy enough to need error feedback)."""
    topk_fraction: float | None = None
    """None sends every value; a fraction in (0, 1] keeps only that share of largest-magnitude entries."""
    chunk_size: int = 1024
    """Values sharing one float32 scale; smaller chunks cost 4 bytes each but bound the error tighter."""
    error_feedback: bool = True
    """Carry what compression dropped into the next update (only matters for a lossy codec)."""

    def __post_init__(self) -> None:
        if self.bits is not None and self.bits not in (2, 4, 8):
            raise InvalidInput(f"compression bits must be 2, 4, 8 or None (float32), got {self.bits!r}")
        if self.topk_fraction is not None and not (0.0 < self.topk_fraction <= 1.0):
            raise InvalidInput(f"topk_fraction must be in (0, 1] or None (dense), got {self.topk_fraction!r}")
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise InvalidInput(f"chunk_size must be an integer >= 1, got {self.chunk_size!r}")

    @property
    def codec(self) -> int:
        """The codec byte written in the header: 3 * sparse + (0 float32 | 1 int8 | 2 int4); 6 + sparse for 2-bit
        (added after the first six, whose numbers stay)."""
        sparse = self.topk_fraction is not None
        return _CODEC_OF_BITS[self.bits] + (1 if self.bits == 2 else 3) * sparse

    @property
    def lossless(self) -> bool:
        return self.bits is None and self.topk_fraction is None

    def kept(self, numel: int) -> int:
        """How many entries survive sparsification (at least one of a non-empty vector)."""
        if self.topk_fraction is None:
            return numel
        return min(numel, max(1, math.ceil(self.topk_fraction * numel))) if numel else 0


def _config_from_codec(codec: int, chunk_size: int) -> CompressionConfig:
    if codec not in range(8):
        raise InvalidInput(f"unknown update codec {codec}; accepted are 0-7 (see fleetgrid compression docs)")
    bits, sparse = (2, codec == 7) if codec >= 6 else ((None, 8, 4)[codec % 3], codec >= 3)
    # The actual fraction is irrelevant on decode: the header carries the kept count.
    return CompressionConfig(bits=bits, topk_fraction=1.0 if sparse else None, chunk_size=max(chunk_size, 1))


# ----------------------------------------------------------------------------------------------- pure maths


def _as_flat_f32(x: np.ndarray | torch.Tensor, what: str = "update") -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise InvalidInput(f"{what} must be float32, got dtype {x.dtype}")
    return np.ascontiguousarray(x).reshape(-1)


def _chunk_absmax(x: np.ndarray, chunk: int) -> np.ndarray:
    n = x.size
    nchunks = -(-n // chunk)
    padded = np.zeros(nchunks * chunk, dtype=np.float32)
    padded[:n] = np.abs(x)
    return padded.reshape(nchunks, chunk).max(axis=1)  # (nchunks,)


def _quantize(x: np.ndarray, chunk: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    absmax = _chunk_absmax(x, chunk)
    scales = (absmax / levels).astype(np.float32)  # (nchunks,)
    safe = np.where(scales > 0, scales, np.float32(1.0))
    per_value = np.repeat(safe, chunk)[: x.size]  # (n,)
    q = np.clip(np.rint(x / per_value), -levels, levels).astype(np.int8)
    return q, scales


def quantize_int8(x: np.ndarray | torch.Tensor, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric absmax int8: ``q = round(x / s)`` with ``s = max|x_chunk| / 127``; error <= s / 2 per value."""
    return _quantize(_as_flat_f32(x), chunk_size, _INT8_LEVELS)


def _quantize_ternary(x: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    q, scales = _quantize(x, chunk, 2)  # scale: half the chunk's absmax
    return np.clip(q, -1, 1), scales


def pack_crumbs(q: np.ndarray) -> np.ndarray:
    """Pack values in [-1, 1] four per byte, offset by 1: element 4i in the lowest two bits."""
    u = (q.astype(np.int16) + 1).astype(np.uint8)
    u = np.append(u, np.ones(-u.size % 4, dtype=np.uint8))  # padding zeros
    u = u.reshape(-1, 4)  # (ceil(n/4), 4)
    return (u[:, 0] | (u[:, 1] << 2) | (u[:, 2] << 4) | (u[:, 3] << 6)).astype(np.uint8)


def unpack_crumbs(packed: np.ndarray, n: int) -> np.ndarray:
    u = np.stack([(packed >> shift) & 0x03 for shift in (0, 2, 4, 6)], axis=1).reshape(-1)  # (4 * len(packed),)
    q = u[:n].astype(np.int16) - 1
    if (q > 1).any():
        raise InvalidInput("2-bit update holds the unused code 3; only -1, 0 and +1 are written")
    return q.astype(np.int8)


def dequantize_int8(q: np.ndarray, scales: np.ndarray, chunk_size: int) -> np.ndarray:
    return q.astype(np.float32) * np.repeat(scales.astype(np.float32), chunk_size)[: q.size]


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """Pack values in [-7, 7] two per byte, offset by 8: element 2i in the low nibble, 2i+1 in the high one."""
    u = (q.astype(np.int16) + 8).astype(np.uint8)
    if u.size % 2:
        u = np.append(u, np.uint8(8))  # a padding zero
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, n: int) -> np.ndarray:
    u = np.empty(packed.size * 2, dtype=np.int16)
    u[0::2] = packed & 0x0F
    u[1::2] = packed >> 4
    return (u[:n] - 8).astype(np.int8)


def quantize_int4(x: np.ndarray | torch.Tensor, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric absmax 4-bit (levels -7..7), packed two per byte; error <= max|x_chunk| / 14 per value."""
    q, scales = _quantize(_as_flat_f32(x), chunk_size, _INT4_LEVELS)
    return pack_nibbles(q), scales


def dequantize_int4(packed: np.ndarray, scales: np.ndarray, chunk_size: int, n: int) -> np.ndarray:
    return dequantize_int8(unpack_nibbles(packed, n), scales, chunk_size)


def topk_sparsify(x: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ascending, uint32) and values of the ``k`` largest-magnitude entries; ties go to the lower index."""
    x = _as_flat_f32(x)
    if not 0 <= k <= x.size:
        raise InvalidInput(f"top-k needs 0 <= k <= {x.size} (the vector length), got k={k}")
    order = np.argsort(-np.abs(x), kind="stable")[:k]
    idx = np.sort(order).astype(np.uint32)
    return idx, x[idx]


def densify(indices: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.float32)
    out[indices.astype(np.int64)] = values
    return out


# ------------------------------------------------------------------------------------------------ byte format


def header_nbytes(ndim: int) -> int:
    return _HEADER.size + 4 * ndim


def _values_nbytes(kept: int, bits: int | None, chunk: int) -> int:
    if bits is None:
        return 4 * kept
    scales = 4 * (-(-kept // chunk))
    return scales + -(-kept * bits // 8)


def encoded_nbytes(shape: tuple[int, ...] | int, config: CompressionConfig) -> int:
    """Exact length of ``encode(x, config)`` for an ``x`` of this shape, without encoding anything."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    numel = math.prod(shape)
    kept = config.kept(numel)
    sparse = 4 * kept if config.topk_fraction is not None else 0
    return header_nbytes(len(shape)) + sparse + _values_nbytes(kept, config.bits, config.chunk_size)


def _encode_values(v: np.ndarray, bits: int | None, chunk: int) -> bytes:
    if bits is None:
        return v.astype("<f4").tobytes()
    if bits == 8:
        q, scales = _quantize(v, chunk, _INT8_LEVELS)
        return scales.astype("<f4").tobytes() + q.tobytes()
    if bits == 2:
        q, scales = _quantize_ternary(v, chunk)
        return scales.astype("<f4").tobytes() + pack_crumbs(q).tobytes()
    q, scales = _quantize(v, chunk, _INT4_LEVELS)
    return scales.astype("<f4").tobytes() + pack_nibbles(q).tobytes()


def _decode_values(buf: memoryview, kept: int, bits: int | None, chunk: int) -> np.ndarray:
    if bits is None:
        return np.frombuffer(buf, dtype="<f4", count=kept).astype(np.float32)
    nscales = -(-kept // chunk)
    scales = np.frombuffer(buf, dtype="<f4", count=nscales).astype(np.float32)
    body = buf[4 * nscales :]
    if bits == 8:
        return dequantize_int8(np.frombuffer(body, dtype=np.int8, count=kept), scales, chunk)
    if bits == 2:
        return dequantize_int8(unpack_crumbs(np.frombuffer(body, dtype=np.uint8, count=-(-kept // 4)), kept),
                               scales, chunk)
    return dequantize_int4(np.frombuffer(body, dtype=np.uint8, count=-(-kept // 2)), scales, chunk, kept)


def encode(x: np.ndarray | torch.Tensor, config: CompressionConfig) -> bytes:
    """Compress a float32 array (any shape) into self-describing bytes of length ``encoded_nbytes``."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    shape = tuple(int(d) for d in arr.shape)
    flat = _as_flat_f32(arr)
    if not np.isfinite(flat).all():
        raise InvalidInput("cannot encode an update with NaN or infinite values; only finite float32 is accepted")
    if len(shape) > 255 or any(d >= 2**32 for d in shape):
        raise InvalidInput(f"cannot encode shape {shape}: at most 255 dims of < 2**32 each are accepted")
    kept = config.kept(flat.size)
    header = _HEADER.pack(_MAGIC, config.codec, 0, len(shape), config.chunk_size, flat.size, kept)
    header += struct.pack(f"<{len(shape)}I", *shape)
    if config.topk_fraction is None:
        return header + _encode_values(flat, config.bits, config.chunk_size)
    idx, vals = topk_sparsify(flat, kept)
    return header + idx.astype("<u4").tobytes() + _encode_values(vals, config.bits, config.chunk_size)


def read_header(blob: bytes) -> tuple[CompressionConfig, tuple[int, ...], int]:
    """(codec config, shape, kept count) of an encoded update; raises InvalidInput on anything malformed."""
    if len(blob) < _HEADER.size:
        raise InvalidInput(f"update is {len(blob)} bytes, shorter than the {_HEADER.size}-byte header")
    magic, codec, dtype, ndim, chunk, numel, kept = _HEADER.unpack_from(blob)
    if magic != _MAGIC:
        raise InvalidInput(f"update does not start with magic {_MAGIC!r} (got {magic!r}); not a fleetgrid update")
    if dtype not in _DTYPES:
        raise InvalidInput(f"update dtype code {dtype} is not accepted; accepted: {sorted(_DTYPES)} (float32)")
    config = _config_from_codec(codec, chunk)
    if len(blob) < header_nbytes(ndim):
        raise InvalidInput(f"update header declares {ndim} dims but the blob ends after {len(blob)} bytes")
    shape = struct.unpack_from(f"<{ndim}I", blob, _HEADER.size)
    if math.prod(shape) != numel or kept > numel or (config.topk_fraction is None and kept != numel):
        raise InvalidInput(f"update header is inconsistent: shape {shape}, numel {numel}, kept {kept}")
    sparse = 4 * kept if config.topk_fraction is not None else 0
    expected = header_nbytes(ndim) + sparse + _values_nbytes(kept, config.bits, chunk)
    if len(blob) != expected:
        raise InvalidInput(f"update is {len(blob)} bytes but its header implies exactly {expected}")
    return config, tuple(shape), kept


def decode(blob: bytes) -> np.ndarray:
    """The float32 array an ``encode`` call produced (lossy codecs give back the dequantized values)."""
    config, shape, kept = read_header(blob)
    numel = math.prod(shape)
    body = memoryview(blob)[header_nbytes(len(shape)) :]
    if config.topk_fraction is None:
        flat = _decode_values(body, kept, config.bits, config.chunk_size)
    else:
        idx = np.frombuffer(body, dtype="<u4", count=kept)
        if kept and (idx.max() >= numel or (np.diff(idx.astype(np.int64)) <= 0).any()):
            raise InvalidInput(f"sparse update indices must be strictly ascending and < {numel}")
        vals = _decode_values(body[4 * kept :], kept, config.bits, config.chunk_size)
        flat = densify(idx, vals, numel)
    if not np.isfinite(flat).all():
        raise InvalidInput("update contains NaN or infinite values; only finite float32 is accepted")
    return flat.reshape(shape)


# ------------------------------------------------------------------------------------------- error feedback


class ErrorFeedback:
    """Residual memory for a lossy codec: what this sender's codec dropped is added to its next vector.

    Keep one per sender and per direction (a car's uplink, the coordinator's downlink); ``residual`` is the only
    state, and it should be checkpointed with the sender.
    """

    def __init__(self, numel: int) -> None:
        self.residual = np.zeros(numel, dtype=np.float32)

    def compress(self, x: np.ndarray | torch.Tensor, config: CompressionConfig) -> tuple[bytes, np.ndarray]:
        """Encode ``x + residual``; returns the bytes and exactly what the receiver will decode from them."""
        flat = _as_flat_f32(x)
        if flat.size != self.residual.size:
            raise InvalidInput(f"error feedback holds {self.residual.size} values, got a vector of {flat.size}")
        corrected = flat + self.residual if config.error_feedback else flat
        blob = encode(corrected, config)
        sent = decode(blob).reshape(-1)
        if config.error_feedback:
            self.residual = (corrected - sent).astype(np.float32)
        return blob, sent
