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

from collections.abc import Callable, Iterator
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


def _integer_keys(primary_key: list[str], delta: pa.Table) -> np.ndarray | None:
    """The delta's keys, sorted and unique, when the key is a single integer column."""
    if len(primary_key) != 1 or not pa.types.is_integer(delta.column(primary_key[0]).type):
        return None
    return np.unique(delta.column(primary_key[0]).drop_null().to_numpy())


def _key_matcher(
    primary_key: list[str], delta: pa.Table, wanted: np.ndarray | None
) -> Callable[[pa.Table], np.ndarray]:
    """A function giving the rows of a batch whose key is among the delta's (a hash match for a composite
    key: a row matched by a hash collision only meets no event of its own key in the merge, so it is kept
    as it is). The delta's side is prepared once, for every row group of the bucket; ``wanted``: its
    :func:`_integer_keys`."""
    if len(primary_key) == 1:
        key = primary_key[0]
        values = delta.column(key)
        value_sets: dict[pa.DataType, pa.Array] = {}  # the delta's keys as each file's key type, made once

        def match(batch: pa.Table) -> np.ndarray:
            column = batch.column(key)
            if wanted is not None and pa.types.is_integer(column.type) and not column.null_count and len(column):
                # One chunk (a row group) converts without a copy; ChunkedArray.to_numpy always copies.
                keys = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
                return _integer_match(keys.to_numpy(), wanted)
            if column.type not in value_sets:
                value_sets[column.type] = pc.unique(values.cast(column.type))
            return pc.is_in(column, value_set=value_sets[column.type]).to_numpy(zero_copy_only=False)

        return match
    theirs = hash_columns([delta.column(k) for k in primary_key])
    return lambda batch: np.isin(hash_columns([batch.column(k) for k in primary_key]), theirs)


def _integer_match(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``np.isin(keys, wanted)`` for integer keys and ``wanted`` sorted and unique, without hashing each key.
    Sorted keys (a merge writes each row group in key order): a binary search for each wanted key in their
    range, which are few. Otherwise a bitmap over the keys' range when it is dense (range buckets: a
    bucket's keys span about its row count)."""
    if len(keys) > 1 and bool((keys[1:] > keys[:-1]).all()):
        wanted = wanted[np.searchsorted(wanted, keys[0]):np.searchsorted(wanted, keys[-1], side="right")]
        found = np.searchsorted(keys, wanted)
        match = np.zeros(len(keys), dtype=bool)
        match[found[keys[found] == wanted]] = True
        return match
    low, high = int(keys.min()), int(keys.max())
    if high - low > 8 * len(keys):
        return np.isin(keys, wanted)
    wanted = wanted[(wanted >= low) & (wanted <= high)].astype(np.int64) - low
    bitmap = np.zeros(high - low + 1, dtype=bool)
    bitmap[wanted] = True
    return bitmap[np.subtract(keys, low, dtype=np.int64)]


def _groups_to_read(file: pq.ParquetFile, key: str, wanted: np.ndarray | None) -> list[int]:
    """The row groups whose key range holds one of the ``wanted`` keys (all of them without integer keys or
    statistics): a delta on the newest keys skips the row groups of older ones."""
    groups = list(range(file.num_row_groups))
    if wanted is None:
        return groups
    index = file.schema_arrow.get_field_index(key)
    kept = []
    for group in groups:
        stats = file.metadata.row_group(group).column(index).statistics
        if stats is None or not stats.has_min_max:
            kept.append(group)
            continue
        first = np.searchsorted(wanted, stats.min)
        if first < len(wanted) and wanted[first] <= stats.max:
            kept.append(group)
    return kept


def _row_groups(read: pa.Table | None, starts: np.ndarray, groups: list[int]) -> Iterator[pa.Table]:
    """The row groups of one ``read_row_groups`` result, as zero-copy slices."""
    offset = 0
    for group in groups:
        rows = int(starts[group + 1] - starts[group])
        yield read.slice(offset, rows)
        offset += rows


def read_base_keys(io, tasks: list[Any], primary_key: list[str], delta: pa.Table, with_order: bool) -> BaseKeys:
    """Read the key columns of each data file (and ``_dms_ts``/``_dms_seq`` when ``with_order``), skip the
    rows its delete files mask, and keep the rows whose key the delta has, with their positions.

    A row group at a time: its arrays stay small enough for the allocator to reuse them (one of 4M keys is
    32 MB, which glibc maps afresh, and faults in page by page, every time), and a row group without any of
    the delta's keys is not read at all."""
    columns = [*primary_key, *((TS, SEQ) if with_order else ())]
    wanted = _integer_keys(primary_key, delta)
    match_keys = _key_matcher(primary_key, delta, wanted)
    live_rows = 0
    pieces, files = [], []
    for task in tasks:
        masked = deleted_positions(io, task)
        hits = []
        with io.new_input(task.file.file_path).open() as stream:
            # ParquetFile, not read_table: that goes through the dataset scanner, whose set-up costs more than
            # decoding a key column. One thread per file: the buckets are already read on all threads.
            file = pq.ParquetFile(stream)
            starts = np.cumsum([0] + [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)])
            groups = _groups_to_read(file, primary_key[0], wanted)
            # One read of the row groups wanted (many small ones cost little more than one), then each is
            # matched on its own chunk: a row group's column is one chunk, used without a copy.
            read = file.read_row_groups(groups, columns=columns, use_threads=False) if groups else None
            for group, rows in zip(groups, _row_groups(read, starts, groups), strict=True):
                start = int(starts[group])
                match = match_keys(rows)
                low, high = np.searchsorted(masked, [start, start + rows.num_rows])
                match[masked[low:high] - start] = False
                hit = np.flatnonzero(match)
                if len(hit):
                    pieces.append(rows.take(pa.array(hit)))
                    hits.append(hit + start)
        live_rows += task.file.record_count - len(masked)  # positions are unique and within the file
        files.append(FileKeys(task, masked, np.concatenate(hits) if hits else np.zeros(0, np.int64)))
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
