"""Current state from change events: the last event per primary key by (_dms_ts, _dms_seq), deletes applied.

Works on one partition that fits in memory (see partition.py for how a table is split). The input is the
previous state (live rows as Op=I, tombstones as Op=D, each with the (_dms_ts, _dms_seq) of the event that
made it) followed by new events in arrival order. Ordering rules:
- full-load rows (no _dms_seq) come before every CDC event, whatever their _dms_ts (the transfer time);
- CDC events are ordered by (_dms_ts, _dms_seq); exact ties keep arrival order;
- a replayed event older than the stored state loses to it, so replays after a DMS restart change nothing;
- a delete leaves a tombstone so a later replay of an older insert cannot bring the row back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from finetune_pipeline.datasets.dms_format import OP, SEQ, SEQ_LENGTH, TS

_ZERO_SEQ = "0" * SEQ_LENGTH
# The commit time the merge gives a full-load row: before every CDC event's.
FULL_LOAD_TIME = int(np.iinfo(np.int64).min)


@dataclass
class MergeOutcome:
    """Merged state of one partition: live rows (table columns + _dms_ts, _dms_seq) and tombstones, and how
    the set of live keys changed against the previous state's rows given to the merge (``base_rows``)."""

    live: pa.Table
    tombstones: pa.Table
    keys_before: int = 0
    keys_added: int = 0
    keys_removed: int = 0


def _single(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _int_view(arr: pa.Array) -> np.ndarray | None:
    t = arr.type
    if pa.types.is_integer(t) and t.bit_width <= 64 and not (pa.types.is_uint64(t)):
        return arr.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if pa.types.is_timestamp(t) or pa.types.is_date64(t) or pa.types.is_duration(t):
        return pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False)
    if pa.types.is_date32(t):
        return pc.cast(arr, pa.int32()).to_numpy(zero_copy_only=False).astype(np.int64)
    return None


def _dense_codes(arr: pa.Array) -> np.ndarray:
    """Codes 0..u-1 that sort like the values (dictionary-encode, then rank the dictionary)."""
    enc = pc.dictionary_encode(arr)
    rank = np.empty(len(enc.dictionary), dtype=np.int64)
    rank[pc.array_sort_indices(enc.dictionary).to_numpy()] = np.arange(len(enc.dictionary), dtype=np.int64)
    return rank[enc.indices.to_numpy(zero_copy_only=False)]


def key_codes(columns: list[pa.ChunkedArray | pa.Array], max_bits: int) -> np.ndarray:
    """Non-negative int64 per row, equal iff keys are equal, ordered like the keys, below 2**max_bits."""
    arrays = [_single(c) for c in columns]
    if len(arrays) == 1:
        values = _int_view(arrays[0])
        if values is not None and len(values):
            lo, hi = int(values.min()), int(values.max())
            # Small-range integer keys (the usual case) need no hashing: shift them to start at zero.
            if hi - lo < (1 << max_bits):
                return values - lo
    codes = np.zeros(len(arrays[0]), dtype=np.int64)
    for arr in arrays:
        col = _dense_codes(arr)
        width = int(col.max()) + 1 if len(col) else 1
        codes = codes * width + col
        codes = _dense_codes(pa.array(codes))
    return codes


def seq_view(seq: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """_dms_seq as a numpy 'S35' array (zero-copy when possible); missing sequences compare lowest."""
    arr = _single(seq)
    if arr.null_count:
        arr = pc.fill_null(arr, _ZERO_SEQ)
    if len(arr) == 0:
        return np.zeros(0, dtype=f"S{SEQ_LENGTH}")
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=len(arr) + 1, offset=arr.offset * 4)
    if offsets[-1] - offsets[0] == SEQ_LENGTH * len(arr):
        return np.frombuffer(arr.buffers()[2], dtype=f"S{SEQ_LENGTH}", count=len(arr), offset=int(offsets[0]))
    return np.asarray(arr.to_pylist(), dtype=f"S{SEQ_LENGTH}")


def commit_times(events: pa.Table | pa.RecordBatch) -> np.ndarray:
    """Each event's _dms_ts in microseconds (int64) as the merge orders by it: rows without a sequence
    (full load) get the lowest, FULL_LOAD_TIME."""
    ts = pc.cast(events.column(TS), pa.int64())
    ts = pc.if_else(pc.is_valid(events.column(SEQ)), ts, pa.scalar(FULL_LOAD_TIME, pa.int64()))
    return pc.fill_null(ts, FULL_LOAD_TIME).to_numpy(zero_copy_only=False)


def order_keys(events: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(ts, seq) ordering arrays; rows without a sequence (full load) get the lowest ts."""
    return commit_times(events), seq_view(events.column(SEQ))


def _out_of_order(ts: np.ndarray, seq: np.ndarray, first: np.ndarray, second: np.ndarray) -> bool:
    """Is any `second` event ordered strictly before its `first` (compared pairwise)? The sequences, 35-byte
    strings, are compared only where the times tie."""
    t1, t2 = ts[first], ts[second]
    if bool((t2 < t1).any()):
        return True
    tied = np.flatnonzero(t2 == t1)
    return bool((seq[second[tied]] < seq[first[tied]]).any())


def merge_events(events: pa.Table, primary_key: list[str], base_rows: int = 0) -> MergeOutcome:
    """Keep the winning event per key; live rows drop Op, tombstones keep only key + ordering columns.

    ``base_rows``: the first rows are the previous state (live rows as Op=I, tombstones as Op=D); the
    outcome then counts the keys live before, and those the new events made live or removed."""
    n = events.num_rows
    data_columns = [c for c in events.column_names if c not in (OP, TS, SEQ)]
    if n == 0:
        live = events.select(data_columns + [TS, SEQ])
        return MergeOutcome(live, events.select(primary_key + [TS, SEQ]))
    shift = max(1, n.bit_length())
    codes = key_codes([events.column(c) for c in primary_key], max_bits=62 - shift)
    # One sort of (key, arrival position) packed in an int64 gives keys in order, arrivals stable.
    packed = (codes << shift) | np.arange(n, dtype=np.int64)
    packed.sort()
    order = packed & ((1 << shift) - 1)
    sorted_codes = packed >> shift
    same = sorted_codes[1:] == sorted_codes[:-1]
    if same.any():
        ts, seq = order_keys(events)
        if _out_of_order(ts, seq, order[:-1][same], order[1:][same]):
            # Some key saw events out of (ts, seq) order (late file, replay): sort by it, ties by arrival.
            order = np.lexsort((seq, ts, codes))
            sorted_codes = codes[order]
            same = sorted_codes[1:] == sorted_codes[:-1]
    last = order[np.append(~same, True)]
    # Split winners into live rows and tombstones by index first, so each output is copied exactly once.
    op = events.column(OP)
    deleted = pc.equal(op.take(pa.array(last)), "D").to_numpy(zero_copy_only=False)
    live = events.select(data_columns + [TS, SEQ]).take(pa.array(last[~deleted]))
    tombstones = events.select(primary_key + [TS, SEQ]).take(pa.array(last[deleted]))
    base_live = pc.equal(op.slice(0, base_rows), "I").to_numpy(zero_copy_only=False) if base_rows else []
    before = np.unique(codes[:base_rows][np.asarray(base_live, dtype=bool)]) if base_rows else codes[:0]
    after = codes[last[~deleted]]
    both = int(np.isin(after, before).sum())
    return MergeOutcome(live, tombstones, len(before), len(after) - both, len(before) - both)
