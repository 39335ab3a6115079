"""Batch-inference inputs and results as bytes (on the wire and on disk), their validation against a model, and
how a job's items are cut into work units and put back together.

Arrays travel as ``.npy`` (never pickled); text travels as JSON Lines, one string per line. Results are float32
``.npy`` with one row per input item.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence, Sized
from typing import BinaryIO

import numpy as np

from fleetgrid.errors import InputShapeError, InvalidInput
from fleetgrid.models.spec import ModelSpec

__all__ = [
    "INPUT_FORMATS",
    "assemble",
    "check_result",
    "decode_items",
    "decode_result",
    "encode_items",
    "encode_result",
    "parse_inputs",
    "shard",
]

INPUT_FORMATS = ("npy", "jsonl")
_FORMAT_FOR_KIND = {"array": "npy", "text": "jsonl"}

Items = np.ndarray | list[str]


def _shape(lead: str, tail: tuple[int, ...] | None) -> str:
    """``(N, 40)``-style text for error messages; ``(N, ...)`` when the item shape is open."""
    return f"({lead}, ...)" if tail is None else str((lead, *tail)).replace("'", "")


def _read_npy(data: bytes, what: str) -> np.ndarray:
    # read_array, not np.load: np.load would also open .npz archives and we accept exactly one array.
    try:
        arr = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # ValueError for pickled objects or a bad header, EOFError/OSError for truncation
        raise InvalidInput(
            f"{what} ({len(data)} bytes) is not a readable .npy array ({exc}); expected "
            "the bytes numpy.save writes, without pickled objects"
        ) from exc
    return arr


def _write_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _read_jsonl(data: bytes) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"JSONL inputs are not UTF-8 (byte {exc.start}); expected UTF-8 text") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    items: list[str] = []
    for number, line in enumerate(lines, start=1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(
                f'JSONL line {number} is not JSON ({exc.msg}); expected a JSON string or {{"text": "..."}}'
            ) from None
        if isinstance(value, dict) and "text" in value:
            value = value["text"]
        if not isinstance(value, str) or not value.strip():
            raise InvalidInput(
                f"JSONL line {number} holds {json.dumps(value)[:80]}; expected a non-empty JSON string "
                'or {"text": "<non-empty string>"}'
            )
        items.append(value)
    return items


def _check_array(arr: np.ndarray, spec: ModelSpec) -> np.ndarray:
    name = spec.name
    if arr.dtype.kind != "f" or arr.dtype.itemsize != 4:
        raise InputShapeError(
            f"inputs for model {name!r} have dtype {arr.dtype}; expected float32 "
            "(convert with x.astype(numpy.float32): fleetgrid does not cast, so no precision is lost silently)"
        )
    want = _shape("N", spec.item_shape)
    if arr.ndim < 1 or (spec.item_shape is not None and arr.shape[1:] != spec.item_shape):
        raise InputShapeError(f"inputs for model {name!r} have shape {arr.shape}; expected {want}")
    if arr.shape[0] == 0:
        raise InputShapeError(f"inputs for model {name!r} hold no items (shape {arr.shape}); expected {want}, N >= 1")
    finite = np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)  # (N,)
    if not finite.all():
        first = int(np.argmin(finite))
        raise InvalidInput(f"inputs for model {name!r}: item {first} holds NaN or infinity; expected finite values")
    return np.ascontiguousarray(arr, dtype=np.float32)  # native byte order


def parse_inputs(data: bytes, fmt: str, spec: ModelSpec) -> Items:
    """Decode a tenant's upload and check it fits ``spec``: a float32 ``(N, *item_shape)`` array for array
    models (``fmt="npy"``), N >= 1 non-empty strings for text models (``fmt="jsonl"``)."""
    if fmt not in INPUT_FORMATS:
        raise InvalidInput(f"input format {fmt!r} is not supported; expected one of {', '.join(INPUT_FORMATS)}")
    want = _FORMAT_FOR_KIND[spec.input_kind]
    if fmt != want:
        what = "text, one string per line" if want == "jsonl" else "a float32 array"
        raise InputShapeError(f"model {spec.name!r} takes {what}: expected format {want!r}, got {fmt!r}")
    if fmt == "npy":
        return _check_array(_read_npy(data, f"inputs for model {spec.name!r}"), spec)
    items = _read_jsonl(data)
    if not items:
        raise InputShapeError(f"inputs for model {spec.name!r} hold no lines; expected at least one JSON string")
    return items


def encode_items(items: Items) -> tuple[bytes, str]:
    """Items as ``(bytes, format)``: a unit's shard artifact. Inverse of `decode_items`."""
    if isinstance(items, np.ndarray):
        return _write_npy(items), "npy"
    if isinstance(items, Sequence) and not isinstance(items, str) and all(isinstance(s, str) for s in items):
        body = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in items)
        return body.encode("utf-8"), "jsonl"
    raise InvalidInput(f"cannot encode items of type {type(items).__name__}; expected a numpy array or strings")


def decode_items(data: bytes, fmt: str) -> Items:
    """Bytes written by `encode_items` back to items (no model checks; `parse_inputs` did those at upload)."""
    if fmt == "npy":
        return _read_npy(data, "shard")
    if fmt == "jsonl":
        return _read_jsonl(data)
    raise InvalidInput(f"shard format {fmt!r} is not supported; expected one of {', '.join(INPUT_FORMATS)}")


def shard(items: Sized | int, unit_items: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of at most ``unit_items`` items covering ``items`` (or a count) in order."""
    n = items if isinstance(items, int) else len(items)
    if unit_items < 1:
        raise InvalidInput(f"unit_items {unit_items}; expected a positive integer")
    if n < 1:
        raise InvalidInput(f"cannot shard {n} items; expected at least one item")
    return [(start, min(start + unit_items, n)) for start in range(0, n, unit_items)]


def encode_result(arr: np.ndarray) -> bytes:
    """A unit's outputs as float32 ``.npy`` bytes, one row per item."""
    arr = np.asarray(arr)
    if arr.ndim < 1 or arr.dtype.kind != "f":
        raise InvalidInput(f"result of shape {arr.shape} and dtype {arr.dtype}; expected a float array (N, ...)")
    return _write_npy(arr.astype(np.float32, copy=False))


def decode_result(data: bytes) -> np.ndarray:
    """Result bytes from a car, checked to be a float32 array with a leading item dimension."""
    arr = _read_npy(data, "result")
    if arr.ndim < 1 or arr.dtype.kind != "f" or arr.dtype.itemsize != 4:
        raise InvalidInput(f"result has shape {arr.shape} and dtype {arr.dtype}; expected a float32 array (N, ...)")
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_result(source: bytes | BinaryIO, rows: int, tail: tuple[int, ...] | None,
                 what: str = "result") -> np.ndarray:
    """Read a unit's result (or the checkpoint of its first ``rows`` items) whole and check every byte of it:
    float32 of shape ``(rows, *tail)`` (``(rows, ...)`` when the model's output shape is open), exactly as many
    data bytes as the header promises, every value finite. The header is checked before the data is read, so a
    wrong shape costs no more than the header."""
    fh = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    want = _shape(str(rows), tail)
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"npy format version {version} (accepted: 1.0, 2.0)")
    except Exception as exc:  # numpy raises ValueError, SyntaxError and others on garbage
        raise InvalidInput(f"{what} is not a .npy array ({exc}); expected numpy.save output, float32 {want}") from exc
    fits = len(shape) >= 1 and shape[0] == rows and (tail is None or tuple(shape[1:]) == tuple(tail))
    if dtype.kind != "f" or dtype.itemsize != 4 or not fits:
        raise InvalidInput(f"{what} has shape {shape} and dtype {dtype}; expected float32 of shape {want}")
    nbytes = math.prod(shape) * 4
    data = fh.read(nbytes + 1)
    if len(data) != nbytes:
        problem = "is truncated" if len(data) < nbytes else "has bytes after its data"
        raise InvalidInput(f"{what} {problem}: its header promises {nbytes} data bytes for shape {shape}; expected "
                           "exactly the bytes numpy.save writes")
    arr = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise InvalidInput(f"{what} row {int(np.argwhere(bad)[0][0])} holds NaN or infinity; expected finite values "
                           "only")
    return np.ascontiguousarray(arr, dtype=np.float32)


def assemble(parts: list[np.ndarray], expected_items: int | None = None) -> np.ndarray:
    """Concatenate unit results in unit order into the job's result, ``(N, *output_shape)`` float32."""
    if not parts:
        raise InvalidInput("no unit results to assemble; expected one result per work unit")
    tail = parts[0].shape[1:] if parts[0].ndim >= 1 else None
    for i, part in enumerate(parts):
        if part.ndim < 1 or part.shape[1:] != tail:
            raise InvalidInput(f"unit result {i} has shape {part.shape}; expected {_shape('n', tail)} like unit 0")
    out = np.concatenate(parts).astype(np.float32, copy=False)
    if expected_items is not None and len(out) != expected_items:
        raise InvalidInput(f"assembled {len(out)} result rows; expected {expected_items}, one per input item")
    return out
