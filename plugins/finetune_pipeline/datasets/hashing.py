"""Stable, vectorized 64-bit hashing of key columns, used to bucket rows by primary key across runs.

The hash is our own (splitmix64 finaliser over integers, FNV-1a over UTF-8 bytes) so bucket assignment never
changes with a library upgrade: a published version's part-N files stay valid inputs for the next run.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (in place on a uint64 array)."""
    h ^= h >> np.uint64(30)
    h *= _M1
    h ^= h >> np.uint64(27)
    h *= _M2
    h ^= h >> np.uint64(31)
    return h


def _as_array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return col


def _hash_strings(arr: pa.Array) -> np.ndarray:
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        arr = arr.cast(pa.string())
    n = len(arr)
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4)
    data = arr.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1].astype(np.int64)
    lengths = np.diff(offsets)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    alive = np.arange(n)
    j = 0
    # One pass per byte position over the strings still that long: keys are short, so few passes.
    while alive.size:
        alive = alive[lengths[alive] > j]
        if not alive.size:
            break
        h[alive] = (h[alive] ^ data[starts[alive] + j].astype(np.uint64)) * _FNV_PRIME
        j += 1
    h ^= lengths.astype(np.uint64)
    return h


def _hash_one(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    arr = _as_array(col)
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return _hash_strings(arr)
    if pa.types.is_temporal(t) or pa.types.is_integer(t) or pa.types.is_boolean(t):
        if pa.types.is_boolean(t):
            arr = arr.cast(pa.int8())
        elif pa.types.is_temporal(t):
            # Hash the stored integer (epoch units), never a converted value.
            arr = arr.view(pa.int64()) if t.bit_width == 64 else arr.view(pa.int32())
        if arr.null_count:
            arr = pc.fill_null(arr, 0)
        return arr.to_numpy(zero_copy_only=False).astype(np.uint64)
    raise TypeError(f"cannot hash key column of type {t}")


def hash_columns(columns: list[pa.Array | pa.ChunkedArray], seed: int = 0) -> np.ndarray:
    """64-bit hash per row over one or more key columns (stable across processes and versions)."""
    if not columns:
        raise ValueError("no key columns to hash")
    start = (seed * int(_GOLDEN) + int(_GOLDEN)) & 0xFFFFFFFFFFFFFFFF
    h = np.full(len(columns[0]), np.uint64(start), dtype=np.uint64)
    for col in columns:
        h = _mix(h ^ (_hash_one(col) + _GOLDEN + (h << np.uint64(6)) + (h >> np.uint64(2))))
    return h
