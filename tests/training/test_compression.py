import struct

import numpy as np
import pytest
import torch

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.compression import (
    CompressionConfig,
    ErrorFeedback,
    decode,
    dequantize_int4,
    dequantize_int8,
    encode,
    encoded_nbytes,
    pack_crumbs,
    pack_nibbles,
    quantize_int4,
    quantize_int8,
    topk_sparsify,
    unpack_crumbs,
    unpack_nibbles,
)

f32 = lambda *v: np.array(v, dtype=np.float32)


def test_int8_hand_computed():
    x = f32(127, -64, 10, 0, 2.54, -1.0)
    q, scales = quantize_int8(x, chunk_size=4)
    np.testing.assert_array_equal(scales, f32(1.0, 0.02))
    np.testing.assert_array_equal(q, np.array([127, -64, 10, 0, 127, -50], dtype=np.int8))
    np.testing.assert_allclose(dequantize_int8(q, scales, 4), x, atol=1e-6)
    blob = encode(x, CompressionConfig(bits=8, chunk_size=4))
    assert len(blob) == 24 + 2 * 4 + 6 == encoded_nbytes(6, CompressionConfig(bits=8, chunk_size=4))


def test_int4_hand_computed_and_packing():
    x = f32(7, -3, 1, 0, 0.7)
    packed, scales = quantize_int4(x, chunk_size=4)
    np.testing.assert_allclose(scales, f32(1.0, 0.1))
    # q = [7, -3, 1, 0, 7] -> nibbles q+8 = [15, 5, 9, 8, 15] (+ pad 8): low nibble first
    assert packed.tolist() == [15 | 5 << 4, 9 | 8 << 4, 15 | 8 << 4]
    np.testing.assert_allclose(dequantize_int4(packed, scales, 4, 5), x, atol=1e-6)
    assert len(encode(x, CompressionConfig(bits=4, chunk_size=4))) == 24 + 2 * 4 + 3


def test_nibbles_round_trip_every_level():
    q = np.arange(-7, 8, dtype=np.int8)
    np.testing.assert_array_equal(unpack_nibbles(pack_nibbles(q), q.size), q)


def test_ternary_hand_computed_and_packing():
    # chunk 1: absmax 4, scale 2: -1.2 -> -1 (-0.6 rounds to -1), 0.9 -> 0, 4 -> +1 (sent short), 1.0 -> 0 (half to
    # even); chunk 2: absmax 0.5, scale 0.25: -0.5 -> -1 (clipped from -2)
    x = f32(-1.2, 0.9, 4.0, 1.0, -0.5)
    blob = encode(x, CompressionConfig(bits=2, chunk_size=4))
    assert len(blob) == 24 + 2 * 4 + 2 == encoded_nbytes(5, CompressionConfig(bits=2, chunk_size=4))
    np.testing.assert_array_equal(decode(blob), f32(-2, 0, 2, 0, -0.25))
    q = np.array([-1, 0, 1, 1, -1], dtype=np.int8)  # crumbs q+1 = [0, 1, 2, 2 | 0 (+ pad 1 1 1)]: lowest bits first
    assert pack_crumbs(q).tolist() == [0 | 1 << 2 | 2 << 4 | 2 << 6, 0 | 1 << 2 | 1 << 4 | 1 << 6]
    np.testing.assert_array_equal(unpack_crumbs(pack_crumbs(q), 5), q)
    with pytest.raises(InvalidInput, match="unused code"):
        unpack_crumbs(np.array([3], dtype=np.uint8), 1)


def test_error_feedback_makes_ternary_catch_up():
    rng = np.random.default_rng(2)
    x = rng.laplace(size=4096).astype(np.float32)
    ef, total = ErrorFeedback(x.size), np.zeros(x.size, dtype=np.float32)
    for _ in range(100):
        total += ef.compress(x, CompressionConfig(bits=2))[1]
    # what is still owed stays within about one step's largest value, however many steps were sent
    assert np.abs(total - 100 * x).max() <= 1.01 * np.abs(x).max()
    assert np.abs(total - 100 * x).mean() < 3 * np.abs(x).mean()


def test_topk_and_error_feedback_hand_computed():
    x = f32(0.1, -5, 3, 0.2, -4)
    idx, vals = topk_sparsify(x, 2)
    assert idx.tolist() == [1, 4] and vals.tolist() == [-5, -4]
    cfg = CompressionConfig(topk_fraction=0.4)
    ef = ErrorFeedback(5)
    blob, sent = ef.compress(x, cfg)
    np.testing.assert_array_equal(sent, f32(0, -5, 0, 0, -4))
    np.testing.assert_allclose(ef.residual, f32(0.1, 0, 3, 0.2, 0))
    assert len(blob) == 24 + 2 * 4 + 2 * 4
    _, sent2 = ef.compress(np.zeros(5, dtype=np.float32), cfg)  # the dropped mass is sent next time
    np.testing.assert_allclose(sent2, f32(0, 0, 3, 0.2, 0))
    np.testing.assert_allclose(ef.residual, f32(0.1, 0, 0, 0, 0))


def test_error_feedback_makes_int4_unbiased_over_time():
    rng = np.random.default_rng(0)
    x = rng.normal(size=300).astype(np.float32)
    ef, total = ErrorFeedback(300), np.zeros(300, dtype=np.float32)
    for _ in range(50):
        _, sent = ef.compress(x, CompressionConfig(bits=4, chunk_size=64))
        total += sent
    # the running sum of what was sent tracks 50 * x to within one step's quantization error
    assert np.abs(total - 50 * x).max() <= np.abs(x).max() / 7 + 1e-4


@pytest.mark.parametrize("bits,bound", [(8, 1 / 254), (4, 1 / 14)])
def test_quantization_error_bound(bits, bound):
    rng = np.random.default_rng(1)
    x = (rng.normal(size=5000) * rng.uniform(0.01, 10, size=5000)).astype(np.float32)
    chunk = 256
    y = decode(encode(x, CompressionConfig(bits=bits, chunk_size=chunk)))
    absmax = np.repeat(np.abs(np.pad(x, (0, -x.size % chunk))).reshape(-1, chunk).max(1), chunk)[: x.size]
    assert np.all(np.abs(y - x) <= absmax * bound * (1 + 1e-5) + 1e-7)


@pytest.mark.parametrize("n", [1, 7, 1025])
@pytest.mark.parametrize("bits", [None, 8, 4, 2])
@pytest.mark.parametrize("topk", [None, 0.1, 1.0])
def test_byte_count_exact_and_round_trip(n, bits, topk):
    cfg = CompressionConfig(bits=bits, topk_fraction=topk, chunk_size=64)
    x = np.random.default_rng(n).normal(size=n).astype(np.float32)
    blob = encode(x, cfg)
    assert len(blob) == encoded_nbytes(n, cfg)
    y = decode(blob)
    assert y.dtype == np.float32 and y.shape == (n,)
    if cfg.lossless:
        np.testing.assert_array_equal(y, x)


def test_shape_is_restored_and_torch_accepted():
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    blob = encode(x, CompressionConfig())
    assert len(blob) == 20 + 2 * 4 + 12 * 4
    np.testing.assert_array_equal(decode(blob), x.numpy())


def test_int8_is_4x_smaller_and_int4_8x_smaller_than_float32_at_scale():
    n = 100_000
    f = encoded_nbytes(n, CompressionConfig())
    assert f / encoded_nbytes(n, CompressionConfig(bits=8)) > 3.9
    assert f / encoded_nbytes(n, CompressionConfig(bits=4)) > 7.8
    assert f / encoded_nbytes(n, CompressionConfig(bits=2)) > 15.5


@pytest.mark.parametrize(
    "kwargs",
    [{"bits": 3}, {"bits": 1}, {"bits": 16}, {"topk_fraction": 0.0}, {"topk_fraction": 1.5}, {"chunk_size": 0}],
)
def test_invalid_config(kwargs):
    with pytest.raises(InvalidInput):
        CompressionConfig(**kwargs)


def test_encode_rejects_nan_and_wrong_dtype():
    with pytest.raises(InvalidInput, match="NaN"):
        encode(f32(1, np.nan), CompressionConfig())
    with pytest.raises(InvalidInput, match="float32"):
        encode(np.ones(3, dtype=np.float64), CompressionConfig())


def test_decode_rejects_malformed_blobs():
    good = encode(f32(1, 2, 3), CompressionConfig())
    bad = {
        "short": good[:10],
        "magic": b"XXXX" + good[4:],
        "length": good + b"\0",
        "codec": good[:4] + bytes([9]) + good[5:],
        "dtype": good[:5] + bytes([7]) + good[6:],
        "nan": good[:-4] + struct.pack("<f", float("nan")),
    }
    for name, blob in bad.items():
        with pytest.raises(InvalidInput):
            decode(blob)
            pytest.fail(f"{name} blob was accepted")
