"""The data plane of a local DMS task: a PostgreSQL source replicated into S3 files, on a thread of its own.

A started task (:class:`Replication`) waits until its status is ``running`` on the virtual clock, loads the
selected tables when its migration type has a full load, then captures changes from the slot:

- each selected table's changes collect in a file buffer that is written to S3 when it is CdcMaxBatchInterval
  virtual seconds old or CdcMinFileSize large (CHAP_Target.S3, "Endpoint settings"), and at once when the
  table's columns change (a column added or dropped), so that every file has one schema;
- the slot is acknowledged (moved) only up to the last transaction whose every change is in a file that S3
  accepted: a failed PUT is retried and nothing after it is acknowledged, so a restart replays from there
  (at-least-once, as DMS);
- a lost source connection (the server restarted) is retried every few seconds without losing what was decoded,
  as DMS retries recoverable errors (CHAP_Tasks.CustomizingTasks.TaskSettings.ErrorHandling:
  RecoverableErrorInterval, RecoverableErrorCount -1); anything else fails the task with its message;
- Stop writes what is buffered and acknowledges it before the thread ends.

Memory stays bounded: no more is decoded while MAX_BUFFERED_ROWS rows or MAX_BUFFERED_BYTES bytes wait for S3.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
import pyarrow as pa

from localaws.clock import VirtualClock
from localaws.dms_decoding import UNCHANGED, ColumnType, RowChange, Transaction
from localaws.dms_mappings import ChangeSequence, ChangeSequenceColumns, SelectionRules
from localaws.dms_postgres import (
    DecodingSession,
    PostgresSource,
    SourceError,
    TableInfo,
    column_types,
    copy_table,
    create_slot,
    list_tables,
    table_info,
)
from localaws.dms_s3_target import S3TargetSettings, S3Writer, encode, lead_columns, timestamp_text

log = logging.getLogger(__name__)

FETCH_CHANGES = 20_000  # rows asked of the slot per call (PostgreSQL returns whole transactions)
MAX_BUFFERED_ROWS = 1_000_000
MAX_BUFFERED_BYTES = 512 * 1024 * 1024
IDLE_POLL_SECONDS = 0.1  # real seconds between polls of an idle slot or a frozen clock
RETRY_SECONDS = 2.0  # real seconds before a recoverable error is retried
LOAD_BATCH_ROWS = 65_536

BEFORE_LOAD, FULL_LOAD, TABLE_COMPLETED = "Before load", "Full load", "Table completed"


class TaskStopped(Exception):
    """StopReplicationTask (or the server stopping) ended the thread's work."""


@dataclass
class TableCounters:
    """What DescribeTableStatistics reports for one table, counted as files are written."""

    inserts: int = 0
    updates: int = 0
    deletes: int = 0
    full_load_rows: int = 0
    full_load_start: datetime | None = None
    full_load_end: datetime | None = None
    state: str = TABLE_COMPLETED
    last_update: datetime | None = None


@dataclass
class TaskProgress:
    """What a task keeps between runs of its thread: counters, the acknowledged position, its own slot."""

    counters: dict[tuple[str, str], TableCounters] = field(default_factory=dict)
    checkpoint_lsn: int | None = None
    checkpoints: int = 0
    own_slot: str | None = None  # the slot DMS created for a task without SlotName
    ever_ran: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def table(self, schema: str, table: str) -> TableCounters:
        return self.counters.setdefault((schema, table), TableCounters())

    def __getstate__(self) -> dict:
        # A state snapshot may be taken while the thread counts: copy under the lock.
        with self.lock:
            counters = {key: TableCounters(**vars(value)) for key, value in self.counters.items()}
            return {**self.__dict__, "counters": counters}

    def checkpoint(self) -> str | None:
        """RecoveryCheckpoint in DMS's PostgreSQL form (CHAP_Task.CDC, "Determining a CDC native start point":
        ``checkpoint:V1#1#000004AF/B00000D0#0#0#*#0#0``, whose LSN part is a valid CdcStartPosition)."""
        if self.checkpoint_lsn is None:
            return None
        lsn = self.checkpoint_lsn
        return f"checkpoint:V1#{self.checkpoints}#{lsn >> 32:08X}/{lsn & 0xFFFFFFFF:08X}#0#0#*#0#0"


@dataclass(frozen=True)
class ReplicationPlan:
    """What StartReplicationTask decided the thread does."""

    task_arn: str
    task_id: str
    account_id: str
    region: str
    full_load: bool
    cdc: bool
    source: PostgresSource
    target: S3TargetSettings
    selection: SelectionRules
    sequences: ChangeSequenceColumns
    running_at: datetime  # when the task's status turns running, on the virtual clock
    task_start: datetime
    slot: str | None  # the endpoint's SlotName; None: DMS's own slot
    new_own_slot: bool = False  # create the task's own slot (a first start, a restart, a reload)
    start_lsn: int | None = None


class TableBuffer:
    """One CDC file being filled: the changes of one table, all with the same columns."""

    def __init__(self, schema: str, table: str, names: tuple[str, ...], types: list[ColumnType],
                 sequence_names: tuple[str, ...], opened_at: datetime):  # fmt: skip
        self.schema, self.table = schema, table
        self.names, self.types, self.sequence_names = names, types, sequence_names
        self.position = {name: index for index, name in enumerate(names)}
        self.opened_at = opened_at
        self.ops: list[str] = []
        self.timestamps: list[str] = []
        self.sequences: list[str] = []
        self.rows: list[list] = []  # one list of values per change, turned into columns when written
        self.nbytes = 0
        self.transactions: dict[int, int] = {}  # commit end LSN -> rows of it in this buffer
        self.counts = {"I": 0, "U": 0, "D": 0}
        self.key: str | None = None  # named when first written, so that a retried PUT keeps the name

    def __len__(self) -> int:
        return len(self.ops)

    def add(self, op: str, stamp: str, sequence: str, values: list, end_lsn: int, size: int) -> None:
        self.ops.append(op)
        self.timestamps.append(stamp)
        self.sequences.append(sequence)
        self.rows.append(values)
        self.nbytes += size
        self.transactions[end_lsn] = self.transactions.get(end_lsn, 0) + 1
        self.counts[op] += 1

    def to_table(self, target: S3TargetSettings) -> pa.Table:
        lead = lead_columns(
            target, target.cdc_has_op(), self.ops, self.timestamps,
            {name: self.sequences for name in self.sequence_names},
        )  # fmt: skip
        columns = [list(column) for column in zip(*self.rows, strict=True)] or [[] for _ in self.names]
        data = [(name, kind.to_arrow(values)) for name, kind, values in zip(self.names, self.types, columns,
                                                                          strict=True)]  # fmt: skip
        return pa.table(dict(lead + data))


class Replication(threading.Thread):
    """One started task's data plane. ``on_failed(message)`` and ``on_finished()`` report back to DMS's state."""

    def __init__(
        self,
        plan: ReplicationPlan,
        clock: VirtualClock,
        progress: TaskProgress,
        on_failed: Callable[[str], None],
        on_finished: Callable[[], None],
    ):
        super().__init__(name=f"localaws-dms-{plan.task_id}", daemon=True)
        self.plan = plan
        self.clock = clock
        self.progress = progress
        self.on_failed = on_failed
        self.on_finished = on_finished
        self.writer = S3Writer(plan.account_id, plan.region, plan.target)
        self._stop_event = threading.Event()
        self._graceful = True
        self.session: DecodingSession | None = None
        self.buffers: dict[tuple[str, str], TableBuffer] = {}
        self.pending: OrderedDict[int, int] = OrderedDict()  # commit end LSN -> rows not yet in S3, commit order
        self.decoded_upto = 0
        self.safe_lsn: int | None = None  # everything up to here is in S3 (or was not selected)
        self._slot = plan.slot
        self._next_heartbeat: datetime | None = None
        self._read_at: datetime | None = None
        self._selected: dict[tuple[str, str], bool] = {}
        self._warned_truncate: set[tuple[str, str]] = set()

    # Control

    def stop(self, graceful: bool = True) -> None:
        """Ask the thread to end; with ``graceful``, it first writes what it buffered and acknowledges it."""
        self._graceful = graceful
        self._stop_event.set()

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def _sleep(self, seconds: float) -> None:
        if self._stop_event.wait(seconds):
            raise TaskStopped

    def run(self) -> None:
        try:
            self._wait_until_running()
            if self.plan.full_load and not self.plan.cdc:
                self._full_load(snapshot=None)
                self.on_finished()
                return
            if self.plan.full_load:
                self._full_load_then_cdc()
            self._cdc()
        except TaskStopped:
            pass
        except SourceError as error:
            self.on_failed(str(error))
        except Exception as error:  # noqa: BLE001 - any bug must show as a failed task, not a silent thread
            log.exception("DMS task %s failed", self.plan.task_id)
            self.on_failed(f"{type(error).__name__}: {error}")
        finally:
            self._close()

    def _wait_until_running(self) -> None:
        while self.clock.now() < self.plan.running_at:
            self._sleep(IDLE_POLL_SECONDS)

    def _close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    # Full load

    def _full_load_then_cdc(self) -> None:
        """full-load-and-cdc: without SlotName, DMS's own slot is created with an exported snapshot, the tables
        are loaded at that snapshot, and CDC starts at the slot's consistent point; with SlotName, the load reads
        the current data and CDC starts at the slot's confirmed position (changes in between come twice)."""
        if self._slot is not None:
            self._full_load(snapshot=None)
            return
        name = self._create_own_slot()
        _, snapshot, replication = create_slot(self.plan.source, name, export_snapshot=True)
        try:
            self._full_load(snapshot=snapshot)
        finally:
            replication.close()

    def _create_own_slot(self) -> str:
        from localaws.dms_postgres import new_slot_name, slot_state

        with self.plan.source.connect() as conn:
            old = self.progress.own_slot
            if old and slot_state(conn, old) is not None:
                # "On restart (not resume) ... the replication slot gets recreated." (CHAP_Source.PostgreSQL)
                conn.execute("SELECT pg_drop_replication_slot(%s)", (old,))
        name = new_slot_name(self.plan.task_id)
        self.progress.own_slot = self._slot = name
        return name

    def _full_load(self, snapshot: str | None) -> None:
        conn = self.plan.source.connect()
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if snapshot:
                conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            tables = [t for t in list_tables(conn) if self.plan.selection.selects(*t)]
            for schema, table in tables:
                with self.progress.lock:
                    self.progress.table(schema, table).state = BEFORE_LOAD
            for schema, table in tables:
                self._load_table(conn, table_info(conn, schema, table))
            conn.execute("COMMIT")
        except psycopg.Error as error:
            raise SourceError(f"Full load failed: {str(error).strip().splitlines()[0]}") from None
        finally:
            conn.close()

    def _load_table(self, conn: psycopg.Connection, info: TableInfo) -> None:
        target = self.plan.target
        counters = self.progress.table(info.schema, info.table)
        with self.progress.lock:
            counters.state, counters.full_load_start = FULL_LOAD, self.clock.now()
        types = column_types(info.columns, self.plan.source, target.parquet_ms)
        sequence_names = self.plan.sequences.for_table(info.schema, info.table)
        limit = target.max_file_size_kb * 1024
        number, parts, size, rows = 1, [], 0, 0
        for batch in copy_table(conn, info, LOAD_BATCH_ROWS):
            if self.stopping:
                raise TaskStopped
            count = len(next(iter(batch.values())))
            moment = self.plan.task_start if target.use_task_start_time_for_full_load else self.clock.now()
            lead = lead_columns(target, target.include_op_for_full_load, ["I"] * count,
                                [timestamp_text(moment)] * count, {n: [None] * count for n in sequence_names})
            data = [(name, types[name].to_arrow(values)) for name, values in batch.items()]
            part = pa.table(dict(lead + data))
            row_bytes = max(1, part.nbytes // max(1, part.num_rows))
            while part.num_rows:
                # Split at MaxFileSize: a file takes the rows that fit, the rest opens the next file.
                fit = max(1, (limit - size) // row_bytes)
                piece, part = part.slice(0, fit), part.slice(fit)
                parts.append(piece)
                size += piece.num_rows * row_bytes
                rows += piece.num_rows
                if size >= limit:
                    self._put_load(info, number, parts, rows)
                    number, parts, size, rows = number + 1, [], 0, 0
        if parts:
            self._put_load(info, number, parts, rows)
        # An empty table gets no folder: DMS "creates a folder ... (if the source table is not empty)".
        with self.progress.lock:
            counters.state, counters.full_load_end = TABLE_COMPLETED, self.clock.now()
            counters.last_update = self.clock.now()

    def _put_load(self, info: TableInfo, number: int, parts: list[pa.Table], rows: int) -> None:
        key = self.plan.target.load_key(info.schema, info.table, number)
        self._put_retrying(key, encode(self.plan.target, pa.concat_tables(parts)))
        with self.progress.lock:
            counters = self.progress.table(info.schema, info.table)
            counters.full_load_rows += rows
            counters.last_update = self.clock.now()

    def _put_retrying(self, key: str, body: bytes) -> None:
        while True:
            try:
                self.writer.put(key, body)
                return
            except Exception as error:  # noqa: BLE001 - S3 refusing a PUT: retried, as DMS retries the target
                log.warning("DMS task %s: PUT s3://%s/%s failed (%s); retrying", self.plan.task_id,
                            self.plan.target.bucket, key, error)
                self._sleep(RETRY_SECONDS)

    # CDC

    def _cdc(self) -> None:
        plan = self.plan
        if self._slot is None:
            # A CDC task without SlotName: DMS creates its own slot when it starts, and resumes from it.
            if plan.new_own_slot or not self.progress.own_slot:
                name = self._create_own_slot()
                _, _, replication = create_slot(plan.source, name, export_snapshot=False)
                replication.close()
            self._slot = self.progress.own_slot
        self._register_tables()
        first = True
        while True:
            try:
                if self.session is None:
                    start = max(plan.start_lsn or 0, self.progress.checkpoint_lsn or 0) or None
                    self.session = DecodingSession(plan.source, self._slot, start)
                    first = False
                    with self.progress.lock:
                        # Where a resume starts if nothing is acknowledged before the task stops.
                        begin = max(start or 0, self.session.confirmed)
                        if (self.progress.checkpoint_lsn or 0) < begin:
                            self.progress.checkpoint_lsn = begin
                self._cycle()
            except TaskStopped:
                self._finish()
                raise
            except SourceError as error:
                if not error.recoverable or first:
                    raise
                log.warning("DMS task %s: %s; retrying in %.0f s", plan.task_id, error, RETRY_SECONDS)
                self._close()
                self._sleep(RETRY_SECONDS)

    def _register_tables(self) -> None:
        """DescribeTableStatistics lists every selected table from the start, with zero counts."""
        try:
            with self.plan.source.connect() as conn:
                tables = [t for t in list_tables(conn) if self.plan.selection.selects(*t)]
        except (SourceError, psycopg.Error):
            return  # the decoding session reports what is wrong with the source
        with self.progress.lock:
            for schema, table in tables:
                counters = self.progress.table(schema, table)
                counters.last_update = counters.last_update or self.clock.now()

    def _cycle(self) -> None:
        """Decode a batch (unless the buffers are full), write the files that are due, acknowledge."""
        if self.stopping:
            raise TaskStopped
        decoded = 0
        if not self._buffers_full():
            transactions = self.session.changes(FETCH_CHANGES, self.clock.now)
            # A file opens when its first change is read: the moment the slot was read (by the read-ahead, a
            # cycle earlier), not when it was parsed.
            self._read_at = self.session.read_at
            for transaction in transactions:
                if transaction.end_lsn <= self.decoded_upto:
                    continue  # decoded before the connection was lost; still buffered or already written
                self._apply(transaction)
                self.decoded_upto = transaction.end_lsn
                decoded += 1
        self._flush(due_only=True)
        self._acknowledge()
        self._heartbeat()
        if not decoded:
            self._sleep(IDLE_POLL_SECONDS)

    def _buffers_full(self) -> bool:
        rows = sum(len(b) for b in self.buffers.values())
        return rows >= MAX_BUFFERED_ROWS or sum(b.nbytes for b in self.buffers.values()) >= MAX_BUFFERED_BYTES

    def _apply(self, transaction: Transaction) -> None:
        target = self.plan.target
        stamp = timestamp_text(transaction.commit_time)
        end_lsn = transaction.end_lsn
        sequence = ChangeSequence(transaction.commit_time, end_lsn)
        # Every transaction takes its place in commit order, even with nothing selected: acknowledging past it
        # is what keeps an idle slot from holding WAL.
        self.pending.setdefault(end_lsn, 0)
        for index, change in enumerate(transaction.changes):
            if not self._selects(change.schema, change.table) or not target.keeps(change.op):
                continue
            buffer = self._buffer_for(change)
            values = self._values_for(buffer, change)
            buffer.add(change.op, stamp, sequence.of(index), values, end_lsn, change.size)
            self.pending[end_lsn] += 1
            if buffer.nbytes >= target.cdc_min_file_size_kb * 1024:
                self._write(buffer)
        for schema, table in transaction.truncated:
            if self._selects(schema, table) and (schema, table) not in self._warned_truncate:
                # "AWS DMS doesn't support change processing of TRUNCATE operations." (CHAP_Source.PostgreSQL)
                log.warning("DMS task %s: TRUNCATE of %s.%s is not replicated", self.plan.task_id, schema, table)
                self._warned_truncate.add((schema, table))

    def _selects(self, schema: str, table: str) -> bool:
        key = (schema, table)
        selected = self._selected.get(key)
        if selected is None:
            selected = self._selected[key] = self.plan.selection.selects(schema, table)
        return selected

    def _buffer_for(self, change: RowChange) -> TableBuffer:
        key = (change.schema, change.table)
        buffer = self.buffers.get(key)
        if change.op == "D" or not change.names:
            # A delete carries the key only (REPLICA IDENTITY DEFAULT): it fits the table's current columns.
            if buffer is not None and all(name in buffer.position for name in change.names):
                return buffer
            return self._new_buffer(change, from_catalog=True)
        if buffer is not None and buffer.names == change.names:
            return buffer
        if change.key_changed:
            # "AWS DMS ignores an attempt to update a primary key segment" (CHAP_Source.PostgreSQL, limitations):
            # an S3 target gets the new row as an update, and no delete of the old key.
            log.warning("DMS task %s: the primary key of a row of %s.%s changed", self.plan.task_id, *key)
        return self._new_buffer(change, from_catalog=False)

    def _new_buffer(self, change: RowChange, from_catalog: bool) -> TableBuffer:
        key = (change.schema, change.table)
        old = self.buffers.pop(key, None)
        if old is not None and len(old):
            self._write(old)  # the columns changed: close the file, so each file has one schema
        info = self.session.table(change.schema, change.table, refresh=True)
        catalog = dict(info.columns) if info else {}
        if from_catalog and info is not None:
            names = tuple(name for name, _ in info.columns)
            kinds = [catalog[name] for name in names]
        else:
            names = change.names
            kinds = [catalog.get(name, kind) for name, kind in zip(change.names, change.types, strict=True)]
        types = [ColumnType(kind, parquet_ms=self.plan.target.parquet_ms,
                            boolean_as_boolean=self.plan.source.map_boolean_as_boolean) for kind in kinds]
        buffer = TableBuffer(change.schema, change.table, names, types,
                             self.plan.sequences.for_table(*key), self._read_at or self.clock.now())  # fmt: skip
        self.buffers[key] = buffer
        return buffer

    def _values_for(self, buffer: TableBuffer, change: RowChange) -> list:
        if change.names == buffer.names:
            values = change.values
        else:
            values = [None] * len(buffer.names)
            for name, value in zip(change.names, change.values, strict=True):
                values[buffer.position[name]] = value
        if UNCHANGED in values:
            info = self.session.table(change.schema, change.table)
            keys = {name: values[buffer.position[name]] for name in (info.primary_key if info else [])}
            for index, value in enumerate(values):
                if value is UNCHANGED:
                    values[index] = self.session.lookup(change.schema, change.table, keys, buffer.names[index])
        return values

    def _flush(self, due_only: bool) -> None:
        now = self.clock.now()
        interval = timedelta(seconds=self.plan.target.cdc_max_batch_interval)
        for buffer in list(self.buffers.values()):
            if not len(buffer):
                continue
            if due_only and now - buffer.opened_at < interval:
                continue
            self._write(buffer)

    def _write(self, buffer: TableBuffer) -> None:
        """PUT the buffer as a CDC file; on success count it and release its transactions for acknowledgement.

        A refused PUT keeps the buffer (and everything after it unacknowledged) and is retried next cycle.
        """
        if buffer.key is None:
            buffer.key = self.writer.cdc_key(buffer.schema, buffer.table, buffer.opened_at)
        key = buffer.key
        try:
            self.writer.put(key, encode(self.plan.target, buffer.to_table(self.plan.target)))
        except Exception as error:  # noqa: BLE001 - S3 refusing a PUT
            log.warning("DMS task %s: PUT s3://%s/%s failed (%s); retrying", self.plan.task_id,
                        self.plan.target.bucket, key, error)
            return
        now = self.clock.now()
        with self.progress.lock:
            counters = self.progress.table(buffer.schema, buffer.table)
            counters.inserts += buffer.counts["I"]
            counters.updates += buffer.counts["U"]
            counters.deletes += buffer.counts["D"]
            counters.last_update = now
        for end_lsn, rows in buffer.transactions.items():
            self.pending[end_lsn] -= rows
        if self.buffers.get((buffer.schema, buffer.table)) is buffer:
            del self.buffers[(buffer.schema, buffer.table)]

    def _acknowledge(self) -> None:
        """Move the slot past every leading transaction whose changes are all in S3 (or none were selected)."""
        while self.pending:
            end_lsn, rows = next(iter(self.pending.items()))
            if rows > 0:
                break
            self.pending.popitem(last=False)
            self.safe_lsn = end_lsn
        if self.safe_lsn is None or self.safe_lsn <= self.session.confirmed:
            return
        self.session.acknowledge(self.safe_lsn)
        with self.progress.lock:
            self.progress.checkpoint_lsn = self.safe_lsn
            self.progress.checkpoints += 1

    def _heartbeat(self) -> None:
        source = self.plan.source
        if not source.heartbeat_enable:
            return
        now = self.clock.now()
        if self._next_heartbeat is None or now >= self._next_heartbeat:
            self.session.heartbeat(source.heartbeat_schema)
            self._next_heartbeat = now + timedelta(minutes=source.heartbeat_frequency_minutes)

    def _finish(self) -> None:
        """On Stop: write every buffer and acknowledge, unless the stop is not graceful (server shutdown)."""
        if not self._graceful or self.session is None:
            return
        try:
            self._flush(due_only=False)
            self._acknowledge()
        except SourceError as error:
            log.warning("DMS task %s: could not acknowledge on stop (%s); a resume replays", self.plan.task_id,
                        error)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` in real time until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
