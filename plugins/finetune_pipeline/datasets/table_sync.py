"""One table's incremental sync: discover new DMS files, vet them, merge them into the previous state, write
the table's files for a new version and count its checks. Publishing is sync.py's job."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from finetune_pipeline.datasets.contracts import BadFilePolicy, TableContract
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
    coerce,
    event_schema,
    inspect_file,
    read_events,
)
from finetune_pipeline.datasets.merge import MergeOutcome, merge_events
from finetune_pipeline.datasets.partition import Layout, Spill, concat, split_bucket
from finetune_pipeline.datasets.prefetch import read_ahead
from finetune_pipeline.datasets.profile import Profile, profile_table
from finetune_pipeline.datasets.publish import TableState
from finetune_pipeline.datasets.quarantine import QuarantinedFile, quarantine_file
from finetune_pipeline.datasets.reconcile import OutsideCounts, reconcile
from finetune_pipeline.datasets.store import ObjectStore, join_key
from finetune_pipeline.datasets.validate import CheckCounts, CheckResult, count_batch, evaluate, schema_check

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableSettings:
    """The parts of the sync spec a table run needs."""

    landing_prefix: str
    quarantine_prefix: str
    snapshot_ts: datetime | None
    snapshot_seq: str | None
    csv: CsvSettings
    rows_per_bucket: int
    merge_memory_bytes: int
    late_file_grace: timedelta
    threads: int = 2

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


@dataclass
class TableOutcome:
    table: str
    state: TableState | None
    checks: list[CheckResult]
    quarantined: list[QuarantinedFile]
    profile: Profile | None
    events: dict[str, int] = field(default_factory=dict)
    applied_files: list[str] = field(default_factory=list)
    buckets_rewritten: int = 0
    buckets_copied: int = 0
    stopped: bool = False


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
    """List only what follows the watermark (ListObjectsV2 StartAfter), less a grace window for late files."""
    prefix = table_prefix(settings.landing_prefix, contract)
    start_after = None
    if prev is not None and prev.cdc_watermark:
        since = _grace_cutoff(prev.cdc_watermark, settings.late_file_grace)
        start_after = prefix + max(since, prev.recent_since or since)
    seen = set(prev.recent_files) if prev else set()
    if prev and prev.cdc_watermark:
        seen.add(prev.cdc_watermark)
    loads, cdc, new_loads = [], [], []
    for info in store.list_after(prefix, start_after):
        f = classify(info.key, prefix, info.size, info.etag)
        if f is None:
            continue
        if f.kind is FileKind.CDC:
            if f.name not in seen:
                cdc.append(f)
        elif prev is None:
            loads.append(f)
        elif f.name not in prev.load_files:
            new_loads.append(f)
    return Discovery(files=loads + cdc, new_load_files=new_loads, listed_from=start_after)


def _grace_cutoff(watermark: str, grace: timedelta) -> str:
    """The stem of a CDC file name ``grace`` before the watermark file's time."""
    return cdc_file_name(cdc_name_time(watermark) - grace).rsplit(".", 1)[0]


def _to_events(batch: pa.RecordBatch, contract: TableContract, op: str) -> pa.RecordBatch:
    """Stored rows (live parts or tombstones) as events; a column added to the contract later is null."""
    schema = event_schema(contract)
    n = batch.num_rows
    arrays = []
    for fld in schema:
        if fld.name == OP:
            arrays.append(pa.repeat(pa.scalar(op), n))
        elif fld.name in batch.schema.names:
            arrays.append(coerce(batch.column(fld.name), fld.type, fld.name))
        else:
            arrays.append(pa.nulls(n, fld.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _table(batches, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_batches(list(batches), schema=schema)


class _BucketWriter:
    """Writes one bucket's merged pieces to a part file (and tombstones), tallying checks and profile."""

    def __init__(self, workdir: Path, bucket: int, contract: TableContract) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.contract = contract
        self.schema = output_schema(contract)
        self.tomb_schema = tombstone_schema(contract)
        self.part_path = workdir / f"part-{bucket:05d}.parquet"
        self.tomb_path = workdir / f"tomb-{bucket:05d}.parquet"
        self.writer = pq.ParquetWriter(self.part_path, self.schema)
        self.tomb_writer: pq.ParquetWriter | None = None
        self.counts, self.profile = CheckCounts(), Profile()
        self.rows = self.tombstones = self.nbytes = 0
        self.newest: int | None = None

    def add(self, merged: MergeOutcome) -> None:
        live = merged.live.cast(self.schema)
        self.writer.write_table(live)
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
        if merged.tombstones.num_rows:
            if self.tomb_writer is None:
                self.tomb_writer = pq.ParquetWriter(self.tomb_path, self.tomb_schema)
            self.tomb_writer.write_table(merged.tombstones.cast(self.tomb_schema))

    def close(self) -> None:
        self.writer.close()
        if self.tomb_writer is not None:
            self.tomb_writer.close()
        # The types check looks at what was actually written: the part file's own footer.
        check = schema_check(pq.read_schema(self.part_path), self.contract)
        self.schema_problems = [] if check.passed else [check.detail]

    def cleanup(self) -> None:
        self.part_path.unlink(missing_ok=True)
        self.tomb_path.unlink(missing_ok=True)

    def summary(self, part_key: str, tomb_key: str | None) -> dict:
        return {
            "part": part_key,
            "tombstones_part": tomb_key,
            "rows": self.rows,
            "tombstones": self.tombstones,
            "bytes": self.nbytes,
            "newest_change_us": self.newest,
            "schema_problems": self.schema_problems,
            "counts": self.counts.to_json(),
            "profile": self.profile.to_json(),
        }


class TableSync:
    """Runs one table for one version. Files are fetched once and kept on local disk for the run."""

    def __init__(
        self,
        store: ObjectStore,
        contract: TableContract,
        settings: TableSettings,
        prev: TableState | None,
        discovery: Discovery,
        version_prefix: str,
        workdir: Path,
        now: datetime,
    ) -> None:
        self.store = store
        self.contract = contract
        self.settings = settings
        self.prev = prev
        self.discovery = discovery
        self.version_prefix = version_prefix
        self.workdir = workdir
        self.now = now
        self.quarantined: list[QuarantinedFile] = []
        self.bad_files: list[DmsFile] = []
        self.checks: list[CheckResult] = []
        self.stopped = False

    # ------------------------------------------------------------------------------------------ files

    def _quarantine(self, f: DmsFile, err: DmsFileError) -> None:
        policy = self.contract.bad_file_policy
        self.bad_files.append(f)
        self.quarantined.append(
            quarantine_file(
                self.store,
                f,
                err,
                table=self.contract.table,
                quarantine_prefix=self.settings.quarantine_prefix,
                policy=policy.value,
                now=self.now,
            )
        )
        stop = policy is BadFilePolicy.QUARANTINE_AND_STOP
        self.checks.append(
            CheckResult(
                self.contract.table,
                "bad_file",
                "blocking" if stop else "warning",
                False,
                f"{f.key}: {err.reason}: {err.detail} (moved to {self.quarantined[-1].quarantine_key})",
                failing_rows=0,
            )
        )
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

    def _spill_delta(self, files: list[tuple[DmsFile, Path]], layout: Layout) -> tuple[Spill, dict[str, int]]:
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
            )
            dropped = load_rows = 0
            failed = None
            try:
                for f, batch, skipped, err in read_ahead(self._file_batches(files)):
                    if err is not None:
                        failed = (f, err)
                        break
                    dropped += skipped
                    if f.kind is FileKind.LOAD:
                        load_rows += batch.num_rows
                    spill.add(batch)
            finally:
                spill.close()
            if failed is None:
                events = dict(spill.stats.ops)
                events["dropped_before_snapshot"] = dropped
                events["load_rows"] = load_rows
                return spill, events
            f, err = failed
            self._quarantine(f, err)
            files = [(g, p) for g, p in files if g.key != f.key]
            for part in range(layout.partitions):
                spill.remove(part)
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
        """The previous version's rows for one bucket, as events (live rows then tombstones)."""
        if self.prev is None:
            return
        with self.store.local_path(self.prev.parts[bucket]) as path:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=131_072):
                yield _to_events(batch, self.contract, "I")
        tomb = self.prev.tombstone_parts[bucket]
        if tomb:
            with self.store.local_path(tomb) as path:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=131_072):
                    yield _to_events(batch, self.contract, "D")

    def _part_key(self, bucket: int) -> str:
        return join_key(self.version_prefix, self.contract.table, f"part-{bucket:05d}.parquet")

    def _state_key(self, name: str) -> str:
        return join_key(self.version_prefix, "_state", self.contract.table, name)

    def _merge_bucket(self, bucket: int, layout: Layout, delta: Spill, base_bytes: int) -> dict:
        """Merge one bucket into a new part file, one memory-sized piece at a time; returns its tallies."""
        schema = event_schema(self.contract)
        pk = self.contract.primary_key
        work = self.workdir / f"bucket-{bucket:05d}"
        out = _BucketWriter(self.workdir, bucket, self.contract)
        if layout.split == 1:
            pieces = [(lambda: self._base_batches(bucket), base_bytes, bucket)]
        else:
            base = split_bucket(self._base_batches(bucket), work, "base", schema, pk, layout)
            pieces = [(lambda p=p: base.read_batches(p), base.nbytes(p), p) for p in layout.members(bucket)]
        try:
            for base_batches, size, part in pieces:
                total = size + delta.nbytes(part)
                if total <= self.settings.budget:
                    out.add(
                        merge_events(concat([_table(base_batches(), schema), delta.read(part)], schema), pk)
                    )
                    continue
                # The estimate was low for this piece: split it again by a second hash until pieces fit.
                sub = Layout(buckets=math.ceil(total / self.settings.budget))
                sub_base = split_bucket(base_batches(), work / f"{part}", "base", schema, pk, sub, seed=1)
                sub_delta = split_bucket(
                    delta.read_batches(part), work / f"{part}", "delta", schema, pk, sub, seed=1
                )
                for i in range(sub.partitions):
                    out.add(merge_events(concat([sub_base.read(i), sub_delta.read(i)], schema), pk))
                    sub_base.remove(i)
                    sub_delta.remove(i)
                delta.remove(part)
        finally:
            out.close()
            for p in layout.members(bucket):
                delta.remove(p)
            shutil.rmtree(work, ignore_errors=True)
        part_key = self._part_key(bucket)
        self.store.put_file(part_key, out.part_path)
        tomb_key = None
        if out.tombstones:
            tomb_key = self._state_key(f"tombstones-{bucket:05d}.parquet")
            self.store.put_file(tomb_key, out.tomb_path)
        out.cleanup()
        return out.summary(part_key, tomb_key)

    def _copy_bucket(self, bucket: int, prev_summary: dict) -> dict:
        """An untouched bucket under an unchanged contract: server-side copy, tallies reused."""
        part_key = self._part_key(bucket)
        self.store.copy(self.prev.parts[bucket], part_key)
        tomb_key = None
        if self.prev.tombstone_parts[bucket]:
            tomb_key = self._state_key(f"tombstones-{bucket:05d}.parquet")
            self.store.copy(self.prev.tombstone_parts[bucket], tomb_key)
        return {**prev_summary, "part": part_key, "tombstones_part": tomb_key}

    def _prev_summary(self) -> dict | None:
        if self.prev is None:
            return None
        return json.loads(self.store.get_bytes(self.prev.summary_key))

    # ------------------------------------------------------------------------------------------ run

    def run(self, outside: OutsideCounts | None = None) -> TableOutcome:
        contract = self.contract
        outcome_events: dict[str, int] = {"I": 0, "U": 0, "D": 0, "dropped_before_snapshot": 0, "load_rows": 0}
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
            for f in self.discovery.files:
                path = stack.enter_context(self.store.local_path(f.key))
                try:
                    shapes.append(inspect_file(path, f, contract, self.settings.csv))
                    good.append((f, path))
                except DmsFileError as err:
                    self._quarantine(f, err)
                    if self.stopped:
                        break
            if self.stopped:
                return self._stopped()
            delta_bytes = sum(s.data_bytes for s in shapes)
            delta_rows = sum(s.rows if s.rows is not None else s.data_bytes // 100 for s in shapes)
            prev_bytes = self.prev.data_bytes if self.prev else 0
            spill_layout = Layout.for_spill(
                self.prev.buckets if self.prev else None,
                prev_bytes + delta_bytes,
                delta_rows,
                self.settings.budget,
                self.settings.rows_per_bucket,
            )
            started = time.perf_counter()
            delta, outcome_events = self._spill_delta(good, spill_layout)
            if self.prev is None:
                # A new table: size buckets by the rows it will hold (inserts less deletes), not by events.
                layout = spill_layout.settle(
                    outcome_events.get("I", 0) - outcome_events.get("D", 0), self.settings.rows_per_bucket
                )
            else:
                layout = spill_layout
            log.info(
                "%s: %d new file(s), %d event(s) spilled in %.1f s; %d bucket(s) split %d way(s)",
                contract.table,
                len(good),
                delta.stats.rows,
                time.perf_counter() - started,
                layout.buckets,
                layout.split,
            )
            if self.stopped:
                return self._stopped()
            bad = {f.key for f in self.bad_files}
            applied = [f for f, _ in good if f.key not in bad]
        prev_summary = self._prev_summary()
        reusable = (
            prev_summary is not None and prev_summary.get("contract_fingerprint") == contract.fingerprint()
        )

        def one_bucket(b: int) -> tuple[dict, bool]:
            if reusable and delta.rows_in(layout.members(b)) == 0:
                return self._copy_bucket(b, prev_summary["buckets"][b]), True
            base_bytes = prev_summary["buckets"][b]["bytes"] if prev_summary else 0
            return self._merge_bucket(b, layout, delta, base_bytes), False

        # Buckets are independent (own keys, own part file): merge them on all threads, in bucket order.
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.settings.threads) as pool:
            done = list(pool.map(one_bucket, range(layout.buckets)))
        log.info(
            "%s: %d bucket(s) done in %.1f s", contract.table, layout.buckets, time.perf_counter() - started
        )
        buckets_out = [summary for summary, _ in done]
        copied = sum(1 for _, was_copied in done if was_copied)
        counts, profile = CheckCounts(), Profile()
        for summary in buckets_out:
            counts.add(CheckCounts.from_json(summary["counts"]))
            profile.add(Profile.from_json(summary["profile"]))
        newest_us = [s["newest_change_us"] for s in buckets_out if s["newest_change_us"] is not None]
        newest = datetime.fromtimestamp(max(newest_us) / 1e6, UTC) if newest_us else None
        if (
            self.prev is not None
            and self.prev.newest_change
            and (newest is None or self.prev.newest_change > newest)
        ):
            newest = self.prev.newest_change
        # The events themselves: previous rows + inserts - deletes (full-load rows count as inserts).
        expected_rows = (
            (self.prev.rows if self.prev else 0) + outcome_events.get("I", 0) - outcome_events.get("D", 0)
        )
        snapshot_rows, cdc_events = self._applied_since_snapshot(outcome_events)
        problems = sorted({p for s in buckets_out for p in s["schema_problems"]})
        checks = [
            CheckResult(
                contract.table,
                "schema",
                contract.severity_of("schema"),
                not problems,
                "; ".join(problems) or f"{len(contract.columns)} columns with contract types in every part",
            )
        ]
        checks += [
            c
            for c in evaluate(
                counts,
                contract,
                now=self.now,
                newest_change=newest,
                expected_rows=expected_rows,
                expected_from="expected from events (previous + inserts - deletes)",
            )
        ]
        checks += reconcile(contract, counts.rows, snapshot_rows, cdc_events, outside)
        summary_key = self._state_key("buckets.json")
        self.store.put_bytes(
            summary_key,
            json.dumps(
                {
                    "contract_fingerprint": contract.fingerprint(),
                    "buckets": buckets_out,
                    "profile": profile.to_json(),
                }
            ).encode(),
        )
        state = TableState(
            table=contract.table,
            buckets=layout.buckets,
            contract_fingerprint=contract.fingerprint(),
            rows=counts.rows,
            tombstones=sum(s["tombstones"] for s in buckets_out),
            data_bytes=sum(s["bytes"] for s in buckets_out),
            parts=[s["part"] for s in buckets_out],
            tombstone_parts=[s["tombstones_part"] for s in buckets_out],
            summary_key=summary_key,
            **self._positions(applied),
            newest_change=newest,
            snapshot_rows=snapshot_rows,
            cdc_events=cdc_events,
        )
        return TableOutcome(
            table=contract.table,
            state=state,
            checks=self.checks + checks,
            quarantined=self.quarantined,
            profile=profile,
            events=outcome_events,
            applied_files=[f.key for f in applied],
            buckets_rewritten=layout.buckets - copied,
            buckets_copied=copied,
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
        return {
            "cdc_watermark": watermark,
            "recent_files": recent,
            "recent_since": cutoff,
            "load_files": loads if prev is None else prev.load_files,
        }

    def _stopped(self) -> TableOutcome:
        return TableOutcome(
            table=self.contract.table,
            state=None,
            checks=self.checks,
            quarantined=self.quarantined,
            profile=None,
            stopped=True,
        )
