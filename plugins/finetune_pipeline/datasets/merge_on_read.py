"""Merge on read: a delta that changes few of a bucket's rows appends those rows and masks the old ones.

Copy-on-write rewrites every row of a bucket the delta touches. For a bucket where the delta changes few
rows, this path instead reads only the key (and, when the replay rule needs them, ``_dms_ts``/``_dms_seq``)
of the bucket's data files, honouring their delete files; merges the delta against the matching rows and
the bucket's tombstones with :func:`.merge.merge_events`, so every ordering rule of merge.py holds as in a
rewrite; writes the winning new rows as a new data file; and masks the replaced or deleted rows' old
positions with position delete files (:mod:`.deletes`).

A bucket is rewritten instead (which also drops its delete files: that is the compaction) once the rows its
delete files mask would pass :data:`MAX_MASKED_SHARE` of its data files' rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from finetune_pipeline.datasets.deletes import deleted_positions
from finetune_pipeline.datasets.dms_format import OP, SEQ, TS
from finetune_pipeline.datasets.hashing import hash_columns
from finetune_pipeline.datasets.merge import MergeOutcome, merge_events

# The one owner of when a bucket is merged on read. A reader decodes every masked row and then drops it,
# and a rewrite costs every row of the bucket: masking up to a tenth of a bucket keeps reads within ~10% of
# a compacted table's cost, while a delta changing a tenth of a bucket costs about as much to merge on read
# (key columns of every file, one more data file) as to rewrite. Past it, the bucket is rewritten whole.
MAX_MASKED_SHARE = 0.10
# Marks the merge input rows that came from the data files: their row number in the base keys read.
_BASE_ROW = "__base_row"


def merges_on_read(data_rows: int, masked_rows: int, delta_events: int) -> bool:
    """Whether a bucket of ``data_rows`` rows in its data files, ``masked_rows`` of them masked by delete
    files, takes a delta of ``delta_events`` events on read (each event masks at most one row)."""
    return data_rows > 0 and masked_rows + delta_events <= MAX_MASKED_SHARE * data_rows


@dataclass
class FileKeys:
    """One data file of the bucket: what its delete files mask, and its rows the delta's keys match."""

    task: Any
    masked: np.ndarray
    matched: np.ndarray


@dataclass
class BaseKeys:
    """The keys of a bucket's live rows that the delta's keys match, with the order columns if read."""

    live_rows: int
    matched: pa.Table
    files: list[FileKeys] = field(default_factory=list)


def _key_match(batch: pa.Table, primary_key: list[str], delta: pa.Table) -> np.ndarray:
    """Rows of ``batch`` whose key is among the delta's (a hash match for a composite key: a row matched
    by a hash collision only meets no event of its own key in the merge, so it is kept as it is)."""
    if len(primary_key) == 1:
        key = primary_key[0]
        column = batch.column(key)
        if pa.types.is_integer(column.type) and not column.null_count and len(column):
            return _integer_match(column.to_numpy(), delta.column(key).to_numpy(zero_copy_only=False))
        values = delta.column(key).cast(column.type)
        return pc.is_in(column, value_set=pc.unique(values)).to_numpy(zero_copy_only=False)
    ours = hash_columns([batch.column(k) for k in primary_key])
    theirs = hash_columns([delta.column(k) for k in primary_key])
    return np.isin(ours, theirs)


def _integer_match(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``np.isin`` for integer keys: a bitmap over the keys' range when it is dense (range buckets: a
    bucket's keys span about its row count), several times faster than hashing each key."""
    low, high = int(keys.min()), int(keys.max())
    if high - low > 8 * len(keys):
        return np.isin(keys, wanted)
    wanted = wanted[(wanted >= low) & (wanted <= high)].astype(np.int64) - low
    bitmap = np.zeros(high - low + 1, dtype=bool)
    bitmap[wanted] = True
    return bitmap[keys.astype(np.int64) - low]


def read_base_keys(io, tasks: list[Any], primary_key: list[str], delta: pa.Table, with_order: bool) -> BaseKeys:
    """Read the key columns of each data file (and ``_dms_ts``/``_dms_seq`` when ``with_order``), skip the
    rows its delete files mask, and keep the rows whose key the delta has, with their positions."""
    columns = [*primary_key, *((TS, SEQ) if with_order else ())]
    live_rows = 0
    pieces, files = [], []
    for task in tasks:
        with io.new_input(task.file.file_path).open() as stream:
            # One thread per file: the buckets are already read on all threads. ParquetFile, not read_table:
            # read_table goes through the dataset scanner, whose set-up costs more than decoding a key column.
            rows = pq.ParquetFile(stream).read(columns=columns, use_threads=False)
        masked = deleted_positions(io, task)
        match = _key_match(rows, primary_key, delta)
        match[masked] = False
        live_rows += rows.num_rows - len(masked)  # positions are unique and within the file
        hit = np.flatnonzero(match)
        files.append(FileKeys(task, masked, hit))
        if len(hit):
            pieces.append(rows.take(pa.array(hit)))
    matched = pa.concat_tables(pieces) if pieces else pa.table({k: delta.column(k).slice(0, 0) for k in columns})
    return BaseKeys(live_rows, matched, files)


def _as_base_events(matched: pa.Table, event_schema: pa.Schema) -> pa.Table:
    """Matched base rows as Op=I events: only key and order columns are known, the rest is null. Without
    the order columns they count as full-load rows, which lose to every CDC event (only done when every
    event of the delta is newer than anything in the bucket)."""
    n = matched.num_rows
    arrays = []
    for fld in event_schema:
        if fld.name == OP:
            arrays.append(pa.repeat(pa.scalar("I"), n))
        elif fld.name in matched.column_names:
            arrays.append(pc.cast(matched.column(fld.name), fld.type, safe=True))
        else:
            arrays.append(pa.nulls(n, fld.type))
    return pa.Table.from_arrays(arrays, schema=event_schema)


@dataclass
class BucketDelta:
    """A bucket's merge on read: new rows to append, all its tombstones, and the positions to mask."""

    merged: MergeOutcome
    masked: dict[str, np.ndarray]
    newly_masked: int


def merge_on_read(base: BaseKeys, tombstones: pa.Table, delta: pa.Table, primary_key: list[str]) -> BucketDelta:
    """Merge the delta against the matched base rows and the bucket's tombstones (events, Op=D).

    The merge sees the same winners as a rewrite would (a key without an event keeps its row in either
    case); the base rows that win are left where they are, those that lose are masked."""
    schema = delta.schema
    n_base = base.matched.num_rows
    rows = pa.concat_tables([_as_base_events(base.matched, schema), tombstones.cast(schema), delta])
    marker = np.concatenate([np.arange(n_base, dtype=np.int64), np.full(rows.num_rows - n_base, -1, np.int64)])
    merged = merge_events(rows.append_column(_BASE_ROW, pa.array(marker)), primary_key,
                          base_rows=n_base + tombstones.num_rows)  # fmt: skip
    origin = merged.live.column(_BASE_ROW).to_numpy()
    kept = np.zeros(n_base, dtype=bool)
    kept[origin[origin >= 0]] = True
    live = merged.live.filter(pa.array(origin < 0)).drop_columns([_BASE_ROW])
    merged.live = live
    merged.keys_before = base.live_rows
    masked: dict[str, np.ndarray] = {}
    newly = 0
    start = 0
    for f in base.files:
        end = start + len(f.matched)
        lost = f.matched[~kept[start:end]]
        start = end
        if len(lost):
            newly += len(lost)
            masked[f.task.file.file_path] = np.union1d(f.masked, lost).astype(np.int64)
    return BucketDelta(merged, masked, newly)


def masked_rows(io, base: BaseKeys, masked: dict[str, np.ndarray], columns: dict[str, pa.DataType]) -> pa.Table | None:
    """The values in ``columns`` (name: type) of the rows this merge masks (not those masked before), read
    from their data files (null where a file predates the column); None when no column is asked for."""
    if not columns:
        return None
    pieces = []
    for f in base.files:
        now = masked.get(f.task.file.file_path)
        if now is None:
            continue
        lost = np.setdiff1d(now, f.masked)
        with io.new_input(f.task.file.file_path).open() as stream:
            file = pq.ParquetFile(stream)
            names = [c for c in columns if c in file.schema_arrow.names]
            values = file.read(columns=names).take(pa.array(lost))
        for c, t in columns.items():
            values = values.append_column(c, pa.nulls(len(lost), t)) if c not in names else values
        pieces.append(values.select(list(columns)))
    return pa.concat_tables(pieces, promote_options="default") if pieces else None
