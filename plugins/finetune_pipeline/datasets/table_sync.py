"""One table's incremental sync: discover new DMS files, vet them, merge them into the previous version's
touched buckets, write those buckets' new data files and tally their checks. Committing is sync.py's job.

Staging writes only new objects: data files under the table's location (referenced by nothing until the
commit), and the commit's own state folder beside the dataset. A run that stops before committing leaves
them unreferenced, for retention to remove later; the table itself is unchanged.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from finetune_pipeline.datasets import quarantine, sync_defaults
from finetune_pipeline.datasets.contracts import BadFilePolicy, ExtraColumnPolicy, TableContract
from finetune_pipeline.datasets.deletes import write_delete_file
from finetune_pipeline.datasets.dms_format import (
    OP,
    SEQ,
    TS,
    CsvSettings,
    DmsFile,
    DmsFileError,
    FileKind,
    cdc_file_name,
    cdc_name_time,
    classify,
    event_schema,
    footer_ranges,
    inspect_file,
    read_events,
)
from finetune_pipeline.datasets.iceberg_tables import BUCKET_COLUMN, TableHead, TableWrite
from finetune_pipeline.datasets.merge import MergeOutcome, merge_events
from finetune_pipeline.datasets.merge_on_read import masked_rows, merge_on_read, merges_on_read, read_base_keys
from finetune_pipeline.datasets.partition import Bucketing, Layout, Spill, concat, range_key_type, split_bucket
from finetune_pipeline.datasets.prefetch import read_ahead
from finetune_pipeline.datasets.profile import Profile, profile_table
from finetune_pipeline.datasets.reconcile import OutsideCounts, reconcile
from finetune_pipeline.datasets.state import BucketState, TableState, state_prefix
from finetune_pipeline.datasets.store import ObjectStore, join_key
from finetune_pipeline.datasets.supersede import LatestCommits, scan_latest_commits
from finetune_pipeline.datasets.validate import CheckCounts, CheckResult, count_batch, evaluate, schema_check

log = logging.getLogger(__name__)

# The spill drops the events that cannot win only when at most this share of the delta's CDC events are the
# last of their key (keys / events): past it, the scan of the keys costs more than the drop saves.
SCAN_MAX_LAST_EVENT_SHARE = 0.8
# The least memory the latest commit time of each key may take (8 bytes a key), whatever the merge memory.
LATEST_COMMITS_MIN_BYTES = 16 * 2**20


@dataclass(frozen=True)
class TableSettings:
    """The parts of the sync spec a table run needs."""

    landing_prefix: str
    quarantine_prefix: str
    dataset_prefix: str
    snapshot_ts: datetime | None
    snapshot_seq: str | None
    csv: CsvSettings
    rows_per_bucket: int
    merge_memory_bytes: int
    late_file_grace: timedelta
    target_file_bytes: int
    threads: int = 2
    merge_on_read_min_rows: int = sync_defaults.MERGE_ON_READ_MIN_ROWS
    late_file_audit: timedelta = sync_defaults.LATE_FILE_AUDIT

    @property
    def budget(self) -> int:
        """Input bytes for one in-memory merge; the memory target is shared by the merging threads."""
        return max(1, self.merge_memory_bytes // max(1, self.threads))


@dataclass
class Discovery:
    """New landing files for one table, in the order they are applied (full load, then CDC by key)."""

    files: list[DmsFile]
    new_load_files: list[DmsFile]
    listed_from: str | None
    # CDC files named before the grace window that landed after the last sync (among ``files``).
    late: list[DmsFile] = field(default_factory=list)
    # File-level completeness: the CDC file names listed, and those of them taken by earlier syncs.
    listed: set[str] = field(default_factory=set)
    taken_before: set[str] = field(default_factory=set)


@dataclass
class BadFile:
    """A landing file this run cannot apply, not moved yet; its check's detail gains where it went."""

    file: DmsFile
    error: DmsFileError
    policy: str
    check: CheckResult


@dataclass
class TableOutcome:
    table: str
    state: TableState | None
    checks: list[CheckResult]
    pending: list[BadFile]
    profile: Profile | None
    events: dict[str, int] = field(default_factory=dict)
    applied_files: list[str] = field(default_factory=list)
    buckets_rewritten: int = 0
    buckets_kept: int = 0
    stopped: bool = False
    write: TableWrite | None = None
    added: list[Any] = field(default_factory=list)
    deleted: list[Any] = field(default_factory=list)
    buckets_on_read: int = 0
    added_deletes: list[Any] = field(default_factory=list)
    removed_deletes: list[Any] = field(default_factory=list)


@dataclass
class BucketResult:
    """One bucket's part of the commit: kept as it was, rewritten whole, or merged on read."""

    bucket: int
    state: BucketState
    files: list[Any]
    mode: str
    added_deletes: list[Any] = field(default_factory=list)
    removed_deletes: list[Any] = field(default_factory=list)


def output_schema(contract: TableContract) -> pa.Schema:
    """Published columns: the table's, then the timestamp and sequence of the change that produced the row."""
    ev = event_schema(contract)
    return pa.schema([*contract.arrow_schema(), ev.field(TS), ev.field(SEQ)])


def tombstone_schema(contract: TableContract) -> pa.Schema:
    ev = event_schema(contract)
    return pa.schema([*(ev.field(k) for k in contract.primary_key), ev.field(TS), ev.field(SEQ)])


def table_prefix(landing_prefix: str, contract: TableContract) -> str:
    return join_key(landing_prefix, contract.schema_name, contract.table_name) + "/"


def discover(
    store: ObjectStore, settings: TableSettings, contract: TableContract, prev: TableState | None
) -> Discovery:
    """List only what follows the watermark (ListObjectsV2 StartAfter), less a grace window for late files.

    DMS names a CDC file when it opens it and uploads it when it closes it; a file may land after a sync has
    moved the watermark past its name and the grace window. So that such a file is taken rather than
    skipped, the previous state names every file taken within ``late_file_audit`` of its watermark, and the
    listing starts that far back: a file there that it does not name is late, and taken now. Taking it late
    is right for ordering: the merge orders events by (commit time, sequence), never by file, so an older
    change loses to a newer one already applied, and a deleted row's tombstone keeps it deleted.
    """
    prefix = table_prefix(settings.landing_prefix, contract)
    start_after = audit_from = None
    seen = set(prev.recent_files) if prev else set()
    if prev is not None and prev.cdc_watermark:
        seen.add(prev.cdc_watermark)
        since = _grace_cutoff(prev.cdc_watermark, settings.late_file_grace)
        start_after = prefix + max(since, prev.recent_since or since)
        if prev.taken_files is not None:
            seen |= set(prev.taken_files)
            audit = _grace_cutoff(prev.cdc_watermark, settings.late_file_audit)
            audit_from = min(start_after, prefix + max(audit, prev.taken_since or audit))
    loads, cdc, new_loads, late, listed = [], [], [], [], set()
    infos = list(store.list_after(prefix, audit_from or start_after))
    # Files an operator released from quarantine are taken whatever the watermark says: it may have passed
    # them (a quarantine_and_continue file, or one discarded and released later). Taking one twice changes
    # nothing: the merge keeps the newest event per key, and a replay loses to it.
    again = quarantine.released(store, settings.quarantine_prefix, contract.table, prefix)
    again_keys = {f.key for f in again}
    taken: set[str] = set()
    for f in [*(classify(i.key, prefix, i.size, i.etag) for i in infos), *again]:
        if f is None or f.key in taken:
            continue
        taken.add(f.key)
        if f.kind is FileKind.CDC:
            listed.add(f.name)
            if f.key in again_keys:
                cdc.append(f)
            elif f.name in seen:
                continue
            else:
                cdc.append(f)
                if start_after is not None and f.key <= start_after:
                    late.append(f)
        elif prev is None:
            loads.append(f)
        elif f.name not in prev.load_files:
            new_loads.append(f)
    if late:
        log.warning("%s: %d change file(s) landed after the late-file window and are applied now: %s",
                    contract.table, len(late), [f.key for f in late[:10]])  # fmt: skip
    cdc.sort(key=lambda f: f.key)
    loads.sort(key=lambda f: f.key)
    return Discovery(files=loads + cdc, new_load_files=new_loads, listed_from=start_after, late=late,
                     listed=listed - {f.name for f in again}, taken_before=seen)  # fmt: skip


def _grace_cutoff(watermark: str, grace: timedelta) -> str:
    """The stem of a CDC file name ``grace`` before the watermark file's time."""
    return cdc_file_name(cdc_name_time(watermark) - grace).rsplit(".", 1)[0]


def _as_events(batch: pa.RecordBatch, contract: TableContract, op: str) -> pa.RecordBatch:
    """Stored rows (a bucket's data files or its tombstones) as events in the contract's types; a column the
    contract added later is null. Values were written from those types, so narrowing back is exact."""
    schema = event_schema(contract)
    n = batch.num_rows
    arrays = []
    for fld in schema:
        if fld.name == OP:
            arrays.append(pa.repeat(pa.scalar(op), n))
        elif fld.name in batch.schema.names:
            arrays.append(pc.cast(batch.column(fld.name), fld.type, safe=True))
        else:
            arrays.append(pa.nulls(n, fld.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _done(value) -> Future:
    """A future already holding ``value``: a piece merged in the calling thread, queued like the others."""
    future: Future = Future()
    future.set_result(value)
    return future


def _table(batches, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_batches(list(batches), schema=schema)


def _spilled_bytes(shapes, latest: LatestCommits | None) -> int:
    """The delta's size in memory, less the share of its events that cannot win: an estimate, low where
    events tie on a key's latest commit time (all of them are kept). A piece that then passes the budget is
    split again as it merges (:meth:`TableSync._merge_bucket`), as is one after a retry without the scan."""
    data_bytes = sum(s.data_bytes for s in shapes)
    rows = [s.rows for s in shapes]
    if latest is None or None in rows or not sum(rows):
        return data_bytes
    return math.ceil(data_bytes * (1 - (latest.events - latest.keys) / sum(rows)))


def key_range(files: list[tuple[DmsFile, Path]], contract: TableContract, csv: CsvSettings) -> tuple[int, int] | None:
    """Lowest and highest key in the files: Parquet footers when they have statistics, else the rows."""
    key = contract.primary_key[0]
    low: int | None = None
    high: int | None = None

    def take(lo, hi) -> None:
        nonlocal low, high
        if lo is None:
            return
        low = int(lo) if low is None else min(low, int(lo))
        high = int(hi) if high is None else max(high, int(hi))

    for f, path in files:
        if f.fmt == "parquet" and (ranges := footer_ranges(path, key)) is not None:
            for lo, hi in ranges:
                take(lo, hi)
            continue
        with contextlib.suppress(DmsFileError):
            for batch in read_events(path, f, contract, csv):
                mm = pc.min_max(batch.column(key))
                take(mm["min"].as_py(), mm["max"].as_py())
    return None if low is None else (low, high)


class _ColumnVetting:
    """Missing and extra columns, judged file by file in the order files are applied.

    DMS writes every column of the table in every file, full load and CDC alike (a CSV without a header
    has them by position, so a different count fails to parse). A file that lacks a contract column was
    written while the source did not have it:

    - a column the table holds values of (or an earlier file of this run had): the source dropped or
      renamed it. Read as NULL, the file would overwrite the column's values, so it is a bad file;
    - a column the contract added that the table does not hold yet: files DMS wrote before the source
      gained it. Nothing to overwrite: it is read as NULL, and the report lists those files.

    Columns the contract does not name are left out of the dataset; the contract's ``extra_columns`` says
    whether that is a warning in the report or a bad file.
    """

    def __init__(self, contract: TableContract, held: set[str]) -> None:
        self.contract = contract
        self.held = set(held)
        self.filled: dict[str, list[str]] = {}
        self.extra: dict[str, list[str]] = {}

    def vet(self, f: DmsFile, shape) -> None:
        wiped = sorted(c for c in shape.filled_columns if c in self.held)
        if wiped:
            raise DmsFileError(
                "missing_column",
                f"column(s) {', '.join(repr(c) for c in wiped)} missing, which the table holds values of: the "
                "source dropped or renamed them? Applied, the file would overwrite those values with NULL",
            )
        if shape.extra_columns and self.contract.extra_columns is ExtraColumnPolicy.REJECT:
            raise DmsFileError(
                "extra_column",
                f"column(s) {shape.extra_columns} not in the contract (extra_columns: reject): add them to the "
                "contract, or set extra_columns: warn to publish without them",
            )
        for c in shape.filled_columns:
            self.filled.setdefault(c, []).append(f.key)
        for c in shape.extra_columns:
            self.extra.setdefault(c, []).append(f.key)
        self.held |= {c for c in self.contract.column_names if c not in shape.filled_columns}

    def checks(self) -> list[CheckResult]:
        out = []
        table = self.contract.table
        for kind, found, what in (
            ("missing_columns", self.filled, "read as NULL (the table holds no values of them yet)"),
            ("extra_columns", self.extra, "not in the contract, not published (extra_columns: warn)"),
        ):
            if not found:
                continue
            detail = "; ".join(
                f"{c!r} {what}: {len(keys)} file(s), e.g. {', '.join(keys[:3])}" for c, keys in sorted(found.items())
            )
            log.warning("%s: %s: %s", table, kind, detail)
            out.append(CheckResult(table, kind, "warning", False, detail))
        return out


@dataclass
class KeyTally:
    """Keys live in the previous version's rows as the merge read them, and those the changes made live or
    removed: what the ``row_count`` check expects the rows from."""

    before: int = 0
    added: int = 0
    removed: int = 0

    def add(self, merged: MergeOutcome | KeyTally) -> None:
        if isinstance(merged, MergeOutcome):
            merged = KeyTally(merged.keys_before, merged.keys_added, merged.keys_removed)
        self.before += merged.before
        self.added += merged.added
        self.removed += merged.removed


class _BucketWriter:
    """Writes one bucket's merged pieces as data files (and its tombstones), tallying checks and profile."""

    def __init__(self, write: TableWrite, workdir: Path, bucket: int, contract: TableContract, target: int) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.contract = contract
        self.bucket = bucket
        self.schema = output_schema(contract)
        self.tomb_schema = tombstone_schema(contract)
        self.file_schema = write.file_schema
        self.files = write.writer(bucket, target)
        self.tomb_path = workdir / f"tomb-{bucket:010d}.parquet"
        self.tomb_writer: pq.ParquetWriter | None = None
        self.counts, self.profile = CheckCounts(), Profile()
        self.rows = self.tombstones = self.nbytes = 0
        self.keys = KeyTally()
        self.newest: int | None = None

    def add(self, merged: MergeOutcome) -> None:
        self.keys.add(merged)
        live = merged.live.cast(self.schema)
        self.counts.add(count_batch(live, self.contract))
        self.profile.add(profile_table(live, self.contract))
        self.rows += live.num_rows
        self.tombstones += merged.tombstones.num_rows
        self.nbytes += live.nbytes + merged.tombstones.nbytes
        for t in (live, merged.tombstones):
            top = pc.max(t.column(TS)) if t.num_rows else None
            if top is not None and top.is_valid:
                value = top.cast(pa.int64()).as_py()
                self.newest = value if self.newest is None else max(self.newest, value)
        if live.num_rows:
            stored = live.append_column(BUCKET_COLUMN, pa.array(np.full(live.num_rows, self.bucket, np.int32)))
            self.files.add(stored.select(self.file_schema.names))
        if merged.tombstones.num_rows:
            if self.tomb_writer is None:
                self.tomb_writer = pq.ParquetWriter(self.tomb_path, self.tomb_schema)
            self.tomb_writer.write_table(merged.tombstones.cast(self.tomb_schema))

    def close(self) -> list[Any]:
        if self.tomb_writer is not None:
            self.tomb_writer.close()
        return self.files.close()

    def abort(self) -> None:
        self.files.abort()
        if self.tomb_writer is not None:
            self.tomb_writer.close()
        self.tomb_path.unlink(missing_ok=True)

    def state(self, tombstones_key: str | None, problems: list[str]) -> BucketState:
        return BucketState(
            rows=self.rows,
            tombstones=self.tombstones,
            bytes=self.nbytes,
            newest_change_us=self.newest,
            tombstones_key=tombstones_key,
            schema_problems=problems,
            counts=self.counts.to_json(),
            profile=self.profile.to_json(),
        )


class TableSync:
    """Stages one table for one version. Files are fetched once and kept on local disk for the run."""

    def __init__(
        self,
        store: ObjectStore,
        contract: TableContract,
        settings: TableSettings,
        head: TableHead,
        prev: TableState | None,
        discovery: Discovery,
        open_write: Callable[[Bucketing], TableWrite],
        version: str,
        workdir: Path,
        now: datetime,
    ) -> None:
        self.store = store
        self.contract = contract
        self.settings = settings
        self.head = head
        # None for a new table and for a full rebuild (which replaces every file of the table).
        self.prev = prev
        self.discovery = discovery
        self.open_write = open_write
        self.version = version
        self.workdir = workdir
        self.now = now
        self.pending: list[BadFile] = []
        self.bad_files: list[DmsFile] = []
        self.checks: list[CheckResult] = []
        self.stopped = False
        self.base: dict[int, list[Any]] = {}
        self.bucket_keys: dict[int, KeyTally] = {}
        # Merges the pieces of a bucket rewritten in pieces, while fewer buckets than threads are (run()).
        self._piece_pool: ThreadPoolExecutor | None = None
        self._piece_threads = 1

    def _quarantine(self, f: DmsFile, err: DmsFileError) -> None:
        """Set a bad file aside for this run. It is moved to quarantine/ only once the run has staged every
        table (sync.py), so a run that crashes before that (a contract that does not fit the table, the
        catalog gone) leaves every landing file where it was, to be read again."""
        policy = self.contract.bad_file_policy
        self.bad_files.append(f)
        stop = policy is BadFilePolicy.QUARANTINE_AND_STOP
        check = CheckResult(
            self.contract.table,
            "bad_file",
            "blocking" if stop else "warning",
            False,
            f"{f.key}: {err.reason}: {err.detail}",
            failing_rows=0,
        )
        self.checks.append(check)
        self.pending.append(BadFile(f, err, policy.value, check))
        self.stopped = self.stopped or stop

    def _snapshot_filter(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, int]:
        pos = self.settings.snapshot_ts
        if pos is None or batch.num_rows == 0:
            return batch, 0
        ts = batch.column(TS)
        bound = pa.scalar(pos, ts.type)
        keep = pc.greater(ts, bound)
        if self.settings.snapshot_seq:
            keep = pc.or_(
                keep, pc.and_(pc.equal(ts, bound), pc.greater(batch.column(SEQ), self.settings.snapshot_seq))
            )
        kept = batch.filter(keep)
        return kept, batch.num_rows - kept.num_rows

    def _file_batches(self, files: list[tuple[DmsFile, Path]]):
        """(file, batch, rows dropped as pre-snapshot, error) in file order; stops at the first bad file."""
        for f, path in files:
            try:
                for batch in read_events(path, f, self.contract, self.settings.csv):
                    skipped = 0
                    if f.kind is FileKind.CDC:
                        batch, skipped = self._snapshot_filter(batch)
                    yield f, batch, skipped, None
            except DmsFileError as err:
                yield f, None, 0, err
                return

    def _latest_commits(self, files: list[tuple[DmsFile, Path]], shapes) -> LatestCommits | None:
        """Each key's latest commit time in the delta, for the spill to drop the events that cannot win
        (:mod:`.supersede`); None when that cannot pay for its read of the keys: a delta that merges in one
        piece, keys it cannot hold, or one event per key or nearly."""
        key = self.contract.primary_key
        if len(key) != 1 or not range_key_type(self.contract.column(key[0]).arrow_type):
            return None
        cdc_bytes = sum(s.data_bytes for (f, _), s in zip(files, shapes, strict=True) if f.kind is FileKind.CDC)
        if cdc_bytes <= self.settings.budget:
            return None
        started = time.perf_counter()
        # The latest times live while the spill runs, before any merge: the whole merge memory, or a floor.
        room = max(self.settings.merge_memory_bytes, LATEST_COMMITS_MIN_BYTES)
        snapshot = self.settings.snapshot_ts
        after = None if snapshot is None else int(pa.scalar(snapshot, pa.timestamp("us", tz="UTC")).value)
        latest = scan_latest_commits(files, key[0], max_keys=room // 8, after=after, threads=self.settings.threads)
        if latest is None or latest.keys > SCAN_MAX_LAST_EVENT_SHARE * latest.events:
            return None
        log.info(
            "%s: %d change event(s) over %d key(s), read in %.1f s: up to %d cannot win and are not spilled",
            self.contract.table,
            latest.events,
            latest.keys,
            time.perf_counter() - started,
            latest.events - latest.keys,
        )
        return latest

    def _spill_delta(
        self, files: list[tuple[DmsFile, Path]], shapes, layout: Layout, latest: LatestCommits | None
    ) -> tuple[Spill, dict[str, int]]:
        """Read every good file into the partitions; a file failing mid-read is quarantined and we start over
        without it, so a partial file never reaches the merge."""
        attempt = 0
        while True:
            attempt += 1
            spill = Spill(
                self.workdir / f"delta-{attempt}",
                "delta",
                event_schema(self.contract),
                self.contract.primary_key,
                layout,
                expected_bytes=_spilled_bytes(shapes, latest),
                keep=latest.keep if latest is not None else None,
            )
            seen = {"dropped": 0, "load_rows": 0, "failed": None}

            def batches(files=files, seen=seen):
                for f, batch, skipped, err in read_ahead(self._file_batches(files)):
                    if err is not None:
                        seen["failed"] = (f, err)
                        return
                    seen["dropped"] += skipped
                    if f.kind is FileKind.LOAD:
                        seen["load_rows"] += batch.num_rows
                    yield batch

            try:
                spill.add_all(batches(), self.settings.threads)
            finally:
                spill.close()
                spill.keep = None  # the latest times are not needed past the spill
            if seen["failed"] is None:
                events = dict(spill.stats.ops)
                events["dropped_before_snapshot"] = seen["dropped"]
                events["load_rows"] = seen["load_rows"]
                events["superseded"] = spill.stats.superseded
                return spill, events
            f, err = seen["failed"]
            self._quarantine(f, err)
            shapes = [s for (g, _), s in zip(files, shapes, strict=True) if g.key != f.key]
            files = [(g, p) for g, p in files if g.key != f.key]
            spill.remove_all()
            if latest is not None:
                # The latest times counted the file left out: count them again without it.
                latest = self._latest_commits(files, shapes)
            if self.stopped:
                spill = Spill(
                    self.workdir / "delta-empty",
                    "delta",
                    event_schema(self.contract),
                    self.contract.primary_key,
                    layout,
                )
                spill.close()
                return spill, {"I": 0, "U": 0, "D": 0, "dropped_before_snapshot": 0, "load_rows": 0}

    # ------------------------------------------------------------------------------------------ state

    def _base_batches(self, bucket: int):
        """The previous version's rows of one bucket, as events (live rows, then tombstones)."""
        if self.prev is None:
            return
        for batch in self.write.read(self.base.get(bucket, [])):
            yield _as_events(batch, self.contract, "I")
        yield from self._tombstone_batches(bucket)

    def _tombstone_batches(self, bucket: int):
        """The previous version's tombstones of one bucket, as events (Op=D)."""
        previous = self.prev.buckets.get(bucket) if self.prev is not None else None
        if previous is not None and previous.tombstones_key:
            key = join_key(self.settings.dataset_prefix, previous.tombstones_key)
            with self.store.local_path(key) as path:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=131_072):
                    yield _as_events(batch, self.contract, "D")

    def _state_key(self, name: str) -> str:
        """A key in this commit's state folder, relative to the dataset prefix."""
        return join_key(state_prefix(self.contract.table, self.version, self.write.token), name)

    def _merge_bucket(self, bucket: int, layout: Layout, delta: Spill, base_bytes: int) -> tuple[BucketState, list]:
        """Merge one bucket into new data files, one memory-sized piece at a time; returns its tallies."""
        schema = event_schema(self.contract)
        pk = self.contract.primary_key
        work = self.workdir / f"bucket-{bucket:010d}"
        out = _BucketWriter(self.write, self.workdir, bucket, self.contract, self.settings.target_file_bytes)
        merging: collections.deque[Future] = collections.deque()
        try:
            if self.prev is None:
                # No previous rows; the delta's partitions hold disjoint keys, so each merges on its own.
                pieces = [(lambda: iter(()), 0, [p]) for p in delta.parts_of(bucket)]
            elif layout.split == 1:
                pieces = [(lambda: self._base_batches(bucket), base_bytes, delta.parts_of(bucket))]
            else:
                base = split_bucket(self._base_batches(bucket), work, "base", schema, pk, layout,
                                    expected_bytes=base_bytes)  # fmt: skip
                parts = sorted(set(delta.parts_of(bucket)) | set(base.parts_of(bucket)))
                pieces = [(lambda p=p: base.read_batches(p), base.nbytes(p), [p]) for p in parts]
            # Pieces that fit the budget merge on the piece pool, up to ``inner`` at once, and are written in
            # order: a bucket's files stay in key order, and memory holds ``inner`` merges, as it would
            # ``inner`` buckets. One that does not fit is split again, after those before it are written.
            inner = self._piece_threads
            for base_batches, size, delta_parts in pieces:
                total = size + sum(delta.nbytes(p) for p in delta_parts)
                if total <= self.settings.budget:
                    while len(merging) >= inner:
                        out.add(merging.popleft().result())
                    merge = functools.partial(self._merge_piece, base_batches, delta, delta_parts)
                    merging.append(self._piece_pool.submit(merge) if inner > 1 else _done(merge()))
                    continue
                while merging:
                    out.add(merging.popleft().result())
                # The estimate was low for this piece: split it again by a second hash until pieces fit.
                sub = Layout(Bucketing(kind="hash", buckets=math.ceil(total / self.settings.budget)))
                where = work / f"{delta_parts[0]}"
                sub_base = split_bucket(base_batches(), where, "base", schema, pk, sub, seed=1, expected_bytes=size)
                sub_delta = split_bucket((b for p in delta_parts for b in delta.read_batches(p)), where, "delta",
                                         schema, pk, sub, seed=1, expected_bytes=total - size)  # fmt: skip
                for i in sorted(set(sub_base.parts()) | set(sub_delta.parts())):
                    before = sub_base.read(i)
                    out.add(merge_events(concat([before, sub_delta.read(i)], schema), pk, base_rows=before.num_rows))
                    sub_base.remove(i)
                    sub_delta.remove(i)
                for p in delta_parts:
                    delta.remove(p)
            while merging:
                out.add(merging.popleft().result())
            files = out.close()
        except BaseException:
            for pending in merging:
                pending.cancel()
            wait(merging)
            out.abort()
            raise
        finally:
            for p in delta.parts_of(bucket):
                delta.remove(p)
            shutil.rmtree(work, ignore_errors=True)
        problems = [] if not files else self._schema_problems()
        tomb_key = self._put_tombstones(bucket, out)
        self.bucket_keys[bucket] = out.keys
        return out.state(tomb_key, problems), files

    def _merge_piece(self, base_batches, delta: Spill, delta_parts: list[int]) -> MergeOutcome:
        schema = event_schema(self.contract)
        tables = [_table(base_batches(), schema), *(delta.read(p) for p in delta_parts)]
        return merge_events(concat(tables, schema), self.contract.primary_key, base_rows=tables[0].num_rows)

    def _merges_on_read(self, bucket: int, delta: Spill) -> bool:
        """A bucket the delta changes little of is merged on read (see :mod:`.merge_on_read`)."""
        tasks = self.base.get(bucket, [])
        data_rows = sum(t.file.record_count for t in tasks)
        masked = sum(d.record_count for t in tasks for d in t.delete_files)
        if data_rows < self.settings.merge_on_read_min_rows:
            return False
        return merges_on_read(data_rows, masked, delta.rows_in(delta.parts_of(bucket)))

    def _order_needed(self, bucket: int, events: pa.Table, previous: BucketState) -> bool:
        """Whether the stored rows' (_dms_ts, _dms_seq) can decide a winner. Not when no stored row has a
        ``_dms_seq``, as the data files' null counts say: full-load rows, which the merge orders first, as
        it does rows read without their order columns. Nor when every event is a CDC event newer than
        anything the bucket holds (its newest change), which then wins outright."""
        if events.num_rows == 0:
            return True
        seq = self.write.schema.find_field(SEQ).field_id
        tasks = self.base.get(bucket, [])
        if tasks and all((t.file.null_value_counts or {}).get(seq) == t.file.record_count for t in tasks):
            return False
        if previous.newest_change_us is None:
            return True
        if events.column(SEQ).null_count:
            return True
        oldest = pc.min(events.column(TS)).cast(pa.int64()).as_py()
        return oldest is None or oldest <= previous.newest_change_us

    def _merge_bucket_on_read(self, bucket: int, delta: Spill) -> BucketResult:
        """Append the delta's winning rows to one bucket and mask the rows they replace or delete."""
        contract, pk = self.contract, self.contract.primary_key
        schema = event_schema(contract)
        previous = self.prev.buckets[bucket]
        io = self.write.io
        events = concat((delta.read(p) for p in delta.parts_of(bucket)), schema)
        tombstones = _table(self._tombstone_batches(bucket), schema)
        base = read_base_keys(io, self.base.get(bucket, []), pk, events, self._order_needed(bucket, events, previous))
        result = merge_on_read(base, tombstones, events, pk)
        for p in delta.parts_of(bucket):
            delta.remove(p)
        out = _BucketWriter(self.write, self.workdir, bucket, contract, self.settings.target_file_bytes)
        try:
            out.add(result.merged)
            files = out.close()
            deletes = [
                write_delete_file(io, self.write.location, self.write.token, bucket, self.write.spec_id, path,
                                  positions, self.write.properties)  # fmt: skip
                for path, positions in sorted(result.masked.items())
            ]
        except BaseException:
            out.abort()
            raise
        replaced = [d for f in base.files if f.task.file.file_path in result.masked for d in f.task.delete_files]
        # The bucket's tallies: the previous ones, less the rows masked now, plus the rows appended. The
        # masked rows' values are read only for columns the tallies count a null or a violation in: a
        # column clean before stays clean without them.
        counts = CheckCounts.from_json(previous.counts)
        suspect = sorted({c for c, n in counts.nulls.items() if n} | {k.split(":", 1)[1] for k, n in
                          counts.violations.items() if n and ":" in k} & set(contract.column_names))  # fmt: skip
        lost = masked_rows(io, base, result.masked, {c: contract.column(c).arrow_type for c in suspect})
        removed = count_batch(lost, contract, primary_key_check=False) if lost is not None else CheckCounts()
        removed.rows = result.newly_masked
        counts.subtract(removed).add(out.counts)
        rows = base.live_rows - result.newly_masked + out.rows
        counts.rows = rows
        lost_keys = self._lost_keys(base, result)
        profile = Profile.from_json(previous.profile).subtract(result.newly_masked, removed.nulls, lost_keys)
        profile.add(out.profile)
        profile.rows = rows
        tomb_key = self._put_tombstones(bucket, out)
        newest = [v for v in (previous.newest_change_us, out.newest) if v is not None]
        kept_share = (base.live_rows - result.newly_masked) / max(1, previous.rows)
        state = BucketState(
            rows=rows,
            tombstones=out.tombstones,
            bytes=int(previous.bytes * kept_share) + out.nbytes,
            newest_change_us=max(newest) if newest else None,
            tombstones_key=tomb_key,
            schema_problems=previous.schema_problems if not files else self._schema_problems(),
            counts=counts.to_json(),
            profile=profile.to_json(),
        )
        self.bucket_keys[bucket] = out.keys
        return BucketResult(bucket, state, files, "on_read", added_deletes=deletes, removed_deletes=replaced)

    def _lost_keys(self, base, result) -> list[pa.Array]:
        """The keys of the rows this merge masked (for the profile's sample)."""
        picks, start = [], 0
        for f in base.files:
            now = result.masked.get(f.task.file.file_path)
            if now is not None:
                picks.append(start + np.flatnonzero(np.isin(f.matched, now) & ~np.isin(f.matched, f.masked)))
            start += len(f.matched)
        if not picks:
            return []
        rows = base.matched.take(pa.array(np.concatenate(picks)))
        return [rows.column(k) for k in self.contract.primary_key]

    def _put_tombstones(self, bucket: int, out: _BucketWriter) -> str | None:
        """Upload a bucket's tombstones into this commit's state folder; the key, or None if it has none."""
        tomb_key = None
        if out.tombstones:
            tomb_key = self._state_key(f"tombstones-{bucket:010d}.parquet")
            self.store.put_file(join_key(self.settings.dataset_prefix, tomb_key), out.tomb_path)
        out.tomb_path.unlink(missing_ok=True)
        return tomb_key

    def _schema_problems(self) -> list[str]:
        # The types check looks at what the data files are written with: the table's own file schema.
        check = schema_check(self.write.file_schema, self.contract)
        return [] if check.passed else [check.detail]

    # ------------------------------------------------------------------------------------------ run

    def _layout(self, good: list[tuple[DmsFile, Path]], shapes, latest: LatestCommits | None) -> Layout:
        """The table's bucketing (a new table's is chosen from its first files), split to fit the budget."""
        settings = self.settings
        delta_bytes = _spilled_bytes(shapes, latest)
        delta_rows = sum(s.rows if s.rows is not None else s.data_bytes // 100 for s in shapes)
        existing = self.head.bucketing
        if existing is not None:
            # Split by the delta alone: a bucket merged on read reads all of its delta anyway, and a bucket
            # rewritten whole that does not fit the budget splits its rows and its delta itself
            # (_merge_bucket), so a small delta over a large table is not spilled into many small files.
            buckets = len(self.prev.buckets) if self.prev else 1
            return Layout.for_spill(existing, max(1, buckets), delta_bytes, settings.budget)
        key = self.contract.primary_key
        if len(key) == 1 and range_key_type(self.contract.column(key[0]).arrow_type):
            span = key_range(good, self.contract, settings.csv) or (0, 0)
            # Rows the table will hold: at most one per key in the span, at most one per event.
            rows = max(1, min(delta_rows, span[1] - span[0] + 1))
            bucketing = Bucketing.for_range(key[0], span[0], span[1], rows, settings.rows_per_bucket)
            buckets = max(1, math.ceil(rows / max(1, settings.rows_per_bucket)))
            return Layout.for_spill(bucketing, buckets, delta_bytes, settings.budget, key_high=span[1])
        return Layout.for_new_hash_table(delta_bytes, delta_rows, settings.budget, settings.rows_per_bucket)

    def run(self, outside: OutsideCounts | None = None) -> TableOutcome:
        contract = self.contract
        outcome_events: dict[str, int] = {"I": 0, "U": 0, "D": 0, "dropped_before_snapshot": 0, "load_rows": 0}
        if self.discovery.late:
            keys = [f.key for f in self.discovery.late]
            self.checks.append(
                CheckResult(
                    contract.table,
                    "late_file",
                    "warning",
                    False,
                    f"{len(keys)} change file(s) landed after the last sync, named more than the late-file "
                    f"window ({self.settings.late_file_grace}) behind its watermark; applied now, in commit "
                    f"order: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}. If this recurs, widen "
                    "late_file_grace",
                )
            )
        for f in self.discovery.new_load_files:
            self.checks.append(
                CheckResult(
                    contract.table,
                    "full_load_changed",
                    "warning",
                    False,
                    f"new full-load file {f.key} after the table was built; "
                    "run with full_rebuild to apply a reload",
                )
            )
        with contextlib.ExitStack() as stack:
            good: list[tuple[DmsFile, Path]] = []
            shapes = []
            columns = _ColumnVetting(self.contract, self._held_columns())
            for f in self.discovery.files:
                path = stack.enter_context(self.store.local_path(f.key))
                try:
                    shape = inspect_file(path, f, contract, self.settings.csv)
                    columns.vet(f, shape)
                    shapes.append(shape)
                    good.append((f, path))
                except DmsFileError as err:
                    self._quarantine(f, err)
                    if self.stopped:
                        break
            self.checks += columns.checks()
            if self.stopped:
                return self._stopped()
            latest = self._latest_commits(good, shapes)
            spill_layout = self._layout(good, shapes, latest)
            started = time.perf_counter()
            delta, outcome_events = self._spill_delta(good, shapes, spill_layout, latest)
            del latest  # its memory, up to the merge memory, is not needed past the spill
            # A new hash table: its bucket count follows the rows it will hold (inserts less deletes).
            layout = spill_layout.settle(
                outcome_events.get("I", 0) - outcome_events.get("D", 0), self.settings.rows_per_bucket
            ) if self.head.bucketing is None else spill_layout
            log.info(
                "%s: %d new file(s), %d event(s) read, %d of them spilled, in %.1f s into %d bucket(s), split "
                "%d way(s)",
                contract.table,
                len(good),
                delta.stats.rows,
                delta.stats.rows - delta.stats.superseded,
                time.perf_counter() - started,
                len(delta.buckets()),
                layout.split,
            )
            if self.stopped:
                return self._stopped()
            bad = {f.key for f in self.bad_files}
            applied = [f for f, _ in good if f.key not in bad]
        self.write = self.open_write(layout.output)
        self.base = self.write.base_files()
        prev = self.prev
        reusable = prev is not None and prev.contract_fingerprint == contract.fingerprint()
        touched = delta.buckets()
        buckets = sorted(touched | set(prev.buckets if prev else ()))

        def one_bucket(b: int) -> BucketResult:
            if reusable and b not in touched:
                return BucketResult(b, prev.buckets[b], [], "kept")
            if reusable and b in prev.buckets and self._merges_on_read(b, delta):
                return self._merge_bucket_on_read(b, delta)
            base_bytes = prev.buckets[b].bytes if prev and b in prev.buckets else 0
            state, files = self._merge_bucket(b, layout, delta, base_bytes)
            return BucketResult(b, state, files, "rewritten")

        # Buckets are independent (own keys, own files): merge them on all threads, in bucket order. When
        # fewer buckets than threads are merged (rewritten or on read), the pieces of a bucket rewritten in
        # pieces merge on the threads left over.
        started = time.perf_counter()
        merged = len([b for b in buckets if not (reusable and b not in touched)])
        self._piece_threads = max(1, self.settings.threads // max(1, min(self.settings.threads, merged)))
        with ThreadPoolExecutor(max_workers=self.settings.threads) as pool, \
                ThreadPoolExecutor(max_workers=self._piece_threads, thread_name_prefix="piece") as pieces:
            self._piece_pool = pieces
            done = list(pool.map(one_bucket, buckets))
        log.info("%s: %d bucket(s) done in %.1f s", contract.table, len(buckets), time.perf_counter() - started)
        states = {r.bucket: r.state for r in done if r.state.rows or r.state.tombstones}
        added = [f for r in done for f in r.files]
        # Buckets whose rows this run read back (whole, or their keys): the row count check counts them.
        rewritten = [r.bucket for r in done if r.mode != "kept"]
        replaced = [r.bucket for r in done if r.mode == "rewritten"]
        if prev is None:
            # New table, or a full rebuild: every file of the table is replaced.
            replaced = list(self.base)
        deleted = [task.file for b in replaced for task in self.base.get(b, [])]
        # A rewritten bucket's delete files go with its data files; a bucket merged on read replaces the
        # delete files of the data files it masks more rows of.
        added_deletes = [d for r in done for d in r.added_deletes]
        removed_deletes = list({d.file_path: d for b in replaced for task in self.base.get(b, [])
                                for d in task.delete_files}.values())  # fmt: skip
        removed_deletes += [d for r in done for d in r.removed_deletes]
        counts, profile = CheckCounts(), Profile()
        for summary in states.values():
            counts.add(CheckCounts.from_json(summary.counts))
            profile.add(Profile.from_json(summary.profile))
        newest_us = [s.newest_change_us for s in states.values() if s.newest_change_us is not None]
        newest = datetime.fromtimestamp(max(newest_us) / 1e6, UTC) if newest_us else None
        if prev is not None and prev.newest_change and (newest is None or prev.newest_change > newest):
            newest = prev.newest_change
        # The rows expected, from keys, not from events. DMS delivers at least once: a restarted task writes
        # the tail of its last file again, a row deleted while the full load ran brings a delete of a key
        # the load never had, and changes captured during the load repeat loaded rows. Counting events
        # (previous + inserts - deletes) is wrong on all three while the merged state is right. Keys are
        # exact: rows = previous rows + keys the changes made live - keys they removed, each key judged
        # against the previous version's rows as this run read them back. A previous row not read back
        # (a data file missed, a bucket dropped) is a row lost: the check fails. A change file DMS wrote
        # and the sync did not take is the ``files_complete`` check's to catch, file by file: no count can
        # see it, since its events are missing from both sides.
        keys = KeyTally()
        for tally in self.bucket_keys.values():
            keys.add(tally)
        prev_rows = prev.rows if prev else 0
        read_back = keys.before + sum(prev.buckets[b].rows for b in buckets if b not in rewritten) if prev else 0
        expected_rows = prev_rows + keys.added - keys.removed
        expected_from = (
            f"expected from keys: {prev_rows} rows at the previous version ({read_back} read back) + "
            f"{keys.added} keys the changes made live - {keys.removed} keys they removed (the events: "
            f"{outcome_events.get('I', 0)} inserts, {outcome_events.get('D', 0)} deletes, replays and "
            "overlaps with the full load included)"
        )
        snapshot_rows, cdc_events = self._applied_since_snapshot(outcome_events)
        problems = sorted({p for s in states.values() for p in s.schema_problems})
        checks = [
            CheckResult(
                contract.table,
                "schema",
                contract.severity_of("schema"),
                not problems,
                "; ".join(problems) or f"{len(contract.columns)} columns with contract types in every data file",
            )
        ]
        checks += evaluate(
            counts,
            contract,
            now=self.now,
            newest_change=newest,
            expected_rows=expected_rows,
            expected_from=expected_from,
        )
        checks.append(self._files_complete(applied))
        checks += reconcile(contract, counts.rows, snapshot_rows, cdc_events, outside)
        state = TableState(
            table=contract.table,
            contract_fingerprint=contract.fingerprint(),
            rows=counts.rows,
            tombstones=sum(s.tombstones for s in states.values()),
            data_bytes=sum(s.bytes for s in states.values()),
            **self._positions(applied),
            newest_change=newest,
            snapshot_rows=snapshot_rows,
            cdc_events=cdc_events,
            buckets=states,
            state_key=self._state_key("state.json"),
        )
        self.store.put_bytes(join_key(self.settings.dataset_prefix, state.state_key), state.sidecar())
        return TableOutcome(
            table=contract.table,
            state=state,
            checks=self.checks + checks,
            pending=self.pending,
            profile=profile,
            events=outcome_events,
            applied_files=[f.key for f in applied],
            buckets_rewritten=len([r for r in done if r.mode == "rewritten"]),
            buckets_kept=len(buckets) - len(rewritten),
            buckets_on_read=len([r for r in done if r.mode == "on_read"]),
            write=self.write,
            added=added,
            deleted=deleted,
            added_deletes=added_deletes,
            removed_deletes=removed_deletes,
        )

    def _applied_since_snapshot(self, events: dict[str, int]) -> tuple[int | None, dict[str, int]]:
        """Rows the full load brought and the CDC events applied since (a build starts both afresh)."""
        load_rows = events.get("load_rows", 0)
        this_run = {op: events.get(op, 0) - (load_rows if op == "I" else 0) for op in ("I", "U", "D")}
        if self.prev is None:
            return load_rows, this_run
        before = self.prev.cdc_events
        return self.prev.snapshot_rows, {op: before.get(op, 0) + n for op, n in this_run.items()}

    def _positions(self, applied: list[DmsFile]) -> dict:
        """Watermark: newest CDC file name taken (applied or quarantined); recent: names within the grace."""
        prev = self.prev
        names = [f.name for f in [*applied, *self.bad_files] if f.kind is FileKind.CDC]
        candidates = names + ([prev.cdc_watermark] if prev and prev.cdc_watermark else [])
        watermark = max(candidates) if candidates else None
        recent: list[str] = []
        cutoff = None
        if watermark:
            cutoff = _grace_cutoff(watermark, self.settings.late_file_grace)
            # Never further back than what the previous state's recent_files covered (see TableState).
            if prev and prev.recent_since:
                cutoff = max(cutoff, prev.recent_since)
            pool = set(candidates) | set(prev.recent_files if prev else [])
            recent = sorted(n for n in pool if n > cutoff and n != watermark)
        loads = sorted(f.name for f in applied if f.kind is FileKind.LOAD)
        taken, taken_since = None, None
        if watermark:
            taken_since = _grace_cutoff(watermark, self.settings.late_file_audit)
            if prev is not None and prev.taken_files is None:
                # An older state: only the files this run listed are known to be taken.
                listed_from = self.discovery.listed_from
                taken_since = max(taken_since, listed_from.rsplit("/", 1)[-1]) if listed_from else taken_since
            elif prev is not None and prev.taken_since:
                taken_since = max(taken_since, prev.taken_since)
            pool = set(candidates)
            if prev is not None:
                pool |= set(prev.recent_files) | set(prev.taken_files or [])
            taken = sorted(n for n in pool if n > taken_since)
        return {
            "cdc_watermark": watermark,
            "recent_files": recent,
            "recent_since": cutoff,
            "load_files": loads if prev is None else prev.load_files,
            "taken_files": taken,
            "taken_since": taken_since,
        }

    def _files_complete(self, applied: list[DmsFile]) -> CheckResult:
        """File-level completeness: every CDC file the listing showed was taken, by this run (applied or
        quarantined) or by an earlier one (named in the previous state). Judged on the listing and the
        states' records, not on what discovery chose, so a file any step dropped on its way is named."""
        consumed = {f.name for f in [*applied, *self.bad_files] if f.kind is FileKind.CDC}
        listed = self.discovery.listed
        prefix = table_prefix(self.settings.landing_prefix, self.contract)
        missing = [prefix + name for name in sorted(listed - self.discovery.taken_before - consumed)]
        if missing:
            detail = (f"{len(missing)} change file(s) listed in the landing folder but not taken: "
                      f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")  # fmt: skip
        else:
            detail = f"all {len(listed)} change file(s) listed were taken ({len(consumed)} by this sync)"
        return CheckResult(self.contract.table, "files_complete", self.contract.severity_of("files_complete"),
                           not missing, detail, failing_rows=0)  # fmt: skip

    def _held_columns(self) -> set[str]:
        """Columns the table holds values of: a file missing one would overwrite them with NULL. None for a
        new table or a full rebuild, which replace every row."""
        if self.prev is None or self.head.table is None:
            return set()
        return {f.name for f in self.head.table.schema().fields}

    def _stopped(self) -> TableOutcome:
        return TableOutcome(
            table=self.contract.table,
            state=None,
            checks=self.checks,
            pending=self.pending,
            profile=None,
            stopped=True,
        )
