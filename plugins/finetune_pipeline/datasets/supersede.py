"""Events of a delta that cannot win the merge, found before anything is spilled.

The merge keeps, per key, the event ordered last by (_dms_ts, _dms_seq), full-load rows first (merge.py).
An event whose commit time is below that of another event of its key in the same delta never wins, and the
merge takes nothing else from it: the spill may drop it. A first pass over the delta's CDC files reads only
the key and _dms_ts columns (about a sixth of the time of a full read of a ticket file) and keeps each key's
latest commit time; the spill then keeps an event only if its time is at least its key's latest. Ties stay:
the merge breaks them by _dms_seq and arrival. A delta of 10M events over 2M keys then spills, sorts and
merges 2M rows, not 10M. The event counts the sync reports are taken before the drop.

Knowing less is safe, knowing more is not: a file this pass skips (CSV, a key of another type) only lowers
the latest times, so fewer events are dropped. A file the spill leaves out (quarantined) must not count, so
the spill's retry without it scans again.

Single integer keys only, whose latest times fit a dense array over the keys' span, up to a bound.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from finetune_pipeline.datasets.dms_format import (
    TS,
    DmsFile,
    DmsFileError,
    FileKind,
    footer_ranges,
    parse_dms_timestamp,
)
from finetune_pipeline.datasets.merge import FULL_LOAD_TIME, commit_times
from finetune_pipeline.datasets.partition import range_key_type

# No CDC event for the key: every event of it stays, full-load rows included.
NO_EVENT = FULL_LOAD_TIME


@dataclass
class LatestCommits:
    """The latest CDC commit time (µs) of each key in ``low .. low + len(latest) - 1``."""

    column: str
    low: int
    latest: np.ndarray
    events: int

    @property
    def keys(self) -> int:
        """Keys with a CDC event: at most this many CDC events outlive the drop, ties aside."""
        return int(np.count_nonzero(self.latest != NO_EVENT))

    def keep(self, batch: pa.RecordBatch) -> np.ndarray | None:
        """Which of a batch's events may still win (bool per row); None when all of them may."""
        column = batch.column(self.column)
        where = pc.fill_null(column, 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False) - self.low
        inside = (where >= 0) & (where < len(self.latest))
        if column.null_count:
            inside &= pc.is_valid(column).to_numpy(zero_copy_only=False)
        times = commit_times(batch)
        if inside.all():
            keep = times >= self.latest[where]
        else:
            keep = ~inside
            keep[inside] = times[inside] >= self.latest[where[inside]]
        return None if keep.all() else keep


def scan_latest_commits(
    files: Iterable[tuple[DmsFile, Path]], column: str, max_keys: int, after: int | None = None, threads: int = 1
) -> LatestCommits | None:
    """Each key's latest commit time over the CDC Parquet files, counting only events after ``after`` (the
    snapshot's commit time, µs: the spill drops the events up to it, and a full-load row must not be dropped
    for one of them); None when a file cannot be read (the spill will quarantine it) or the keys span more
    than ``max_keys``. Files are read ``threads`` at a time (Arrow decodes and parses without the GIL)."""
    cdc = [(f, path) for f, path in files if f.kind is FileKind.CDC and f.fmt == "parquet"]
    # One array for the keys' whole span when the footers give it: growing one holds two.
    span = _footer_span([path for _, path in cdc], column)
    if span is not None and span[1] - span[0] + 1 > max_keys:
        return None
    scan = _cover(None, column, *span, max_keys) if span is not None else None
    cdc = iter(cdc)
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="supersede") as pool:
        reading: collections.deque[Future] = collections.deque()

        def read_next() -> None:
            if (item := next(cdc, None)) is not None:
                reading.append(pool.submit(_keys_and_times, item[1], column, after))

        try:
            for _ in range(max(1, threads)):
                read_next()
            while reading:
                keys, times = reading.popleft().result()
                read_next()
                if not len(keys):
                    continue
                scan = _cover(scan, column, int(keys.min()), int(keys.max()), max_keys)
                if scan is None:
                    return None
                np.maximum.at(scan.latest, keys - scan.low, times)
                scan.events += len(keys)
        except (DmsFileError, pa.ArrowException, OSError):
            return None
        finally:
            for pending in reading:
                pending.cancel()
    return scan


def _keys_and_times(path: Path, column: str, after: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A CDC file's keys and commit times (µs) after ``after``; none when it has not both columns as the
    scan reads them (then it only knows less)."""
    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    if column not in schema.names or TS not in schema.names or not range_key_type(schema.field(column).type):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    table = pf.read(columns=[column, TS])
    if table.column(0).null_count or table.column(1).null_count:
        table = table.filter(pc.and_(pc.is_valid(table.column(0)), pc.is_valid(table.column(1))))
    keys = table.column(0).to_numpy().astype(np.int64, copy=False)
    times = pc.cast(parse_dms_timestamp(table.column(1)), pa.int64()).to_numpy()
    if after is not None:
        newer = times > after
        keys, times = keys[newer], times[newer]
    return keys, times


def _footer_span(paths: list[Path], column: str) -> tuple[int, int] | None:
    """The lowest and highest key in the files' footer statistics; None unless every row group has them."""
    low = high = None
    try:
        for path in paths:
            ranges = footer_ranges(path, column)
            if ranges is None:
                return None
            for lo, hi in ranges:
                if not isinstance(lo, int) or not isinstance(hi, int):
                    return None
                low = lo if low is None else min(low, lo)
                high = hi if high is None else max(high, hi)
    except (pa.ArrowException, OSError):
        return None
    return None if low is None else (low, high)


def _cover(scan: LatestCommits | None, column: str, low: int, high: int, max_keys: int) -> LatestCommits | None:
    """``scan`` with its array grown to cover keys ``low..high``; None past ``max_keys`` keys."""
    if scan is not None:
        if low >= scan.low and high < scan.low + len(scan.latest):
            return scan
        low, high = min(low, scan.low), max(high, scan.low + len(scan.latest) - 1)
    if high - low + 1 > max_keys:
        return None
    latest = np.full(high - low + 1, NO_EVENT, dtype=np.int64)
    if scan is None:
        return LatestCommits(column, low, latest, 0)
    latest[scan.low - low : scan.low - low + len(scan.latest)] = scan.latest
    return LatestCommits(column, low, latest, scan.events)
