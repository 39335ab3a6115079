import io
import itertools
import json

import numpy as np
import pytest

from fleetgrid.errors import InputShapeError, InvalidInput
from fleetgrid.models.spec import ModelSpec
from fleetgrid.workloads.inputs import (
    assemble,
    decode_items,
    decode_result,
    encode_items,
    encode_result,
    parse_inputs,
    shard,
)


def _spec(kind="array", item_shape=(40,)) -> ModelSpec:
    return ModelSpec(
        name="m",
        description="",
        input_kind=kind,
        item_shape=item_shape if kind == "array" else None,
        input_dtype="float32" if kind == "array" else None,
        output_shape=(3,),
        default_batch_size=2,
        default_unit_items=4,
        needs_model_file=False,
        extra=None,
        loader=lambda _: None,
    )


ARRAY, TEXT = _spec(), _spec("text")


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def jsonl(*lines: str) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


def test_npy_float32_is_accepted_as_is():
    x = np.random.default_rng(0).normal(size=(5, 40)).astype(np.float32)
    got = parse_inputs(npy(x), "npy", ARRAY)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, x)
    big_endian = parse_inputs(npy(x.astype(">f4")), "npy", ARRAY)
    assert big_endian.dtype == np.dtype("=f4")
    np.testing.assert_array_equal(big_endian, x)


def test_open_item_shape_accepts_any_items():
    assert parse_inputs(npy(np.zeros((2, 3, 4), np.float32)), "npy", _spec(item_shape=None)).shape == (2, 3, 4)


@pytest.mark.parametrize(
    "arr,message",
    [
        (np.zeros((5, 40), np.float64), r"dtype float64; expected float32 \(convert with x.astype"),
        (np.zeros((5, 40), np.int32), "dtype int32; expected float32"),
        (np.zeros((5, 41), np.float32), r"shape \(5, 41\); expected \(N, 40\)"),
        (np.zeros(40, np.float32), r"shape \(40,\); expected \(N, 40\)"),
        (np.zeros((0, 40), np.float32), "hold no items"),
        (np.array([[0.0] * 40, [np.nan] * 40], np.float32), "item 1 holds NaN or infinity"),
    ],
    ids=["float64", "int32", "wrong-shape", "no-batch-dim", "empty", "nan"],
)
def test_npy_that_does_not_fit_the_model_is_rejected(arr, message):
    with pytest.raises(InvalidInput, match=message):
        parse_inputs(npy(arr), "npy", ARRAY)


def test_dtype_and_shape_errors_are_input_shape_errors():
    with pytest.raises(InputShapeError):
        parse_inputs(npy(np.zeros((5, 40))), "npy", ARRAY)


@pytest.mark.parametrize(
    "data",
    [b"not npy", npy(np.array([{"a": 1}], dtype=object)), npy(np.zeros((2, 40), np.float32))[:-8]],
    ids=["garbage", "pickled-objects", "truncated"],
)
def test_unreadable_npy_is_rejected(data):
    with pytest.raises(InvalidInput, match="is not a readable .npy array"):
        parse_inputs(data, "npy", ARRAY)


def test_npz_archives_are_not_mistaken_for_an_array():
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((2, 40), np.float32))
    with pytest.raises(InvalidInput, match="not a readable .npy array"):
        parse_inputs(buf.getvalue(), "npy", ARRAY)


def test_jsonl_accepts_strings_and_text_objects():
    data = jsonl('"plain"', '{"text": "wrapped", "id": 7}', json.dumps("ünïcode ✓", ensure_ascii=False))
    assert parse_inputs(data, "jsonl", TEXT) == ["plain", "wrapped", "ünïcode ✓"]
    assert parse_inputs(b'"no trailing newline"', "jsonl", TEXT) == ["no trailing newline"]


@pytest.mark.parametrize(
    "data,message",
    [
        (jsonl('"ok"', "{oops"), "JSONL line 2 is not JSON"),
        (jsonl('"ok"', '"ok"', "42"), "JSONL line 3 holds 42; expected a non-empty JSON string"),
        (jsonl('{"txt": "x"}'), "JSONL line 1 holds"),
        (jsonl('"ok"', '"  "'), "JSONL line 2 holds"),
        (jsonl('"ok"', "", '"ok"'), "JSONL line 2 is not JSON"),
        (b"", "hold no lines"),
        (b'"\xff"', "not UTF-8"),
    ],
    ids=["bad-json", "number", "no-text-key", "blank-string", "blank-line", "empty", "not-utf8"],
)
def test_bad_jsonl_names_the_line(data, message):
    with pytest.raises(InvalidInput, match=message):
        parse_inputs(data, "jsonl", TEXT)


def test_wrong_kind_of_input_names_what_the_model_takes():
    with pytest.raises(InputShapeError, match="model 'm' takes text, one string per line: expected format 'jsonl'"):
        parse_inputs(npy(np.zeros((1, 40), np.float32)), "npy", TEXT)
    with pytest.raises(InputShapeError, match="model 'm' takes a float32 array: expected format 'npy'"):
        parse_inputs(jsonl('"x"'), "jsonl", ARRAY)
    with pytest.raises(InvalidInput, match="input format 'csv' is not supported; expected one of npy, jsonl"):
        parse_inputs(b"1,2", "csv", ARRAY)


def test_items_round_trip_through_shard_artifacts():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    data, fmt = encode_items(x)
    assert fmt == "npy"
    np.testing.assert_array_equal(decode_items(data, fmt), x)
    texts = ["a", 'quote " and \n newline', "ü"]
    data, fmt = encode_items(texts)
    assert fmt == "jsonl" and decode_items(data, fmt) == texts
    with pytest.raises(InvalidInput, match="expected a numpy array or strings"):
        encode_items("just one string")
    with pytest.raises(InvalidInput, match="shard format 'csv'"):
        decode_items(b"", "csv")


@pytest.mark.parametrize("n,unit", [(1, 1), (10, 3), (12, 4), (5, 100)])
def test_shard_covers_every_item_once_in_order(n, unit):
    ranges = shard(list(range(n)), unit)
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all(0 < end - start <= unit for start, end in ranges)
    assert shard(n, unit) == ranges


def test_shard_rejects_nonsense():
    with pytest.raises(InvalidInput, match="unit_items 0; expected a positive integer"):
        shard(10, 0)
    with pytest.raises(InvalidInput, match="cannot shard 0 items"):
        shard([], 4)


def test_results_round_trip_as_float32():
    y = np.random.default_rng(1).normal(size=(4, 3))
    back = decode_result(encode_result(y))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, y.astype(np.float32))
    with pytest.raises(InvalidInput, match="dtype int64; expected a float32 array"):
        decode_result(npy(np.zeros((2, 3), np.int64)))
    with pytest.raises(InvalidInput, match="expected a float array"):
        encode_result(np.array(1.0))


def test_assemble_concatenates_in_unit_order_and_checks_shapes():
    parts = [np.full((2, 3), i, np.float32) for i in range(3)]
    out = assemble(parts, expected_items=6)
    np.testing.assert_array_equal(out[:, 0], [0, 0, 1, 1, 2, 2])
    with pytest.raises(InvalidInput, match=r"unit result 1 has shape \(2, 4\); expected \(n, 3\) like unit 0"):
        assemble([parts[0], np.zeros((2, 4), np.float32)])
    with pytest.raises(InvalidInput, match="assembled 6 result rows; expected 7"):
        assemble(parts, expected_items=7)
    with pytest.raises(InvalidInput, match="no unit results"):
        assemble([])
