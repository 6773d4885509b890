"""A consistent PostgreSQL snapshot in DMS's full-load layout, and the slot CDC starts from.

1. Preflight (:func:`preflight`): every reason the export cannot be trusted is collected and reported at
   once, before anything is created.
2. On a replication connection, ``CREATE_REPLICATION_SLOT <slot> LOGICAL test_decoding (SNAPSHOT 'export')``
   creates the slot DMS will read (DMS reads ``test_decoding`` or ``pglogical`` slots, never ``pgoutput``)
   and exports the snapshot of its consistent point. The replication protocol refuses the extended query
   protocol, so that connection only ever runs parameterless text statements, which psycopg sends with the
   simple query protocol, and never prepares them (``prepare_threshold=None``).
3. While that connection stays open, ``workers`` sessions each ``SET TRANSACTION SNAPSHOT`` (REPEATABLE READ,
   READ ONLY) and stream a chunk of a table (a range of heap pages, by ``ctid``) into bounded Parquet row
   groups. A table of simple types (:data:`.binary_copy.BINARY_TYPES`) is read by ADBC's PostgreSQL driver
   from a binary COPY, decoded to Arrow in C++ (:mod:`.binary_copy`); any other table with ``COPY ... TO
   STDOUT (FORMAT csv)``, read in blocks of whole rows (:mod:`.copy_blocks`), each parsed by pyarrow's CSV
   reader. Nothing reads ahead: a session holds one batch or block and one row group, whatever the table's
   size.
4. Each file is checksummed by its session as soon as it closes; then the files get their DMS names
   (``LOAD00000001.parquet``...), and ``manifest.json`` is written last.

The slot then keeps every WAL segment from its consistent point until DMS confirms it: for the whole
Snowball trip, days to weeks. :func:`retained_wal` is what the pipeline logs while the device travels.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.csv as pcsv
from psycopg import sql

from finetune_pipeline.datasets.dms_format import load_file_name
from finetune_pipeline.export import binary_copy
from finetune_pipeline.export.copy_blocks import copy_blocks
from finetune_pipeline.export.errors import ExportError, PreflightError, SourceUnreachableError
from finetune_pipeline.export.load_files import DEFAULT_MAX_FILE_BYTES, DEFAULT_ROW_GROUP_BYTES, LoadFileWriter
from finetune_pipeline.export.manifest import (
    MANIFEST_NAME,
    S3_PART_SIZE,
    ExportedFile,
    ExportManifest,
    ExportManifestError,
    SlotInfo,
    SourceInfo,
    TableExport,
    file_checksums,
    read_manifest,
    write_manifest,
)

log = logging.getLogger(__name__)

PLUGIN = "test_decoding"
MIB = 1024 * 1024
GIB = 1024 * MIB
# Below this much heap a table is one range: splitting it would cost more sessions than it saves.
MIN_SPLIT_BYTES = 32 * MIB
# COPY rows are parsed a block at a time; the pieces of a block are parsed in parallel.
COPY_BLOCK_BYTES = 8 * MIB
PARSE_PIECE_BYTES = 1 * MIB
STAGING_DIR = ".export-partial"
# How long a session waits to connect when the connection string does not say.
CONNECT_TIMEOUT_SECONDS = 15
# Below this, a pg_stat_wal average says more about the last bulk load than about the steady write rate.
_MIN_WAL_STATS_SECONDS = 86_400
# max_slot_wal_keep_size must hold at least this many times the WAL expected over the trip.
WAL_HEADROOM = 2.0

# PostgreSQL type -> Arrow type of the exported column, as DMS maps them to Parquet for an S3 target
# (CHAP_Source.PostgreSQL "Source data types for PostgreSQL", CHAP_Target.S3 Parquet types). Anything else
# (json, uuid, arrays, intervals, ...) is exported as its PostgreSQL text form, as DMS writes a string.
_ARROW_TYPES = {
    "int2": pa.int16(), "int4": pa.int32(), "int8": pa.int64(), "oid": pa.int64(),
    "float4": pa.float32(), "float8": pa.float64(), "bool": pa.bool_(),
    "text": pa.string(), "varchar": pa.string(), "bpchar": pa.string(), "name": pa.string(),
    "date": pa.date32(), "timestamp": pa.timestamp("us"), "timestamptz": pa.timestamp("us", tz="UTC"),
}


@dataclass(frozen=True)
class TableSpec:
    """A table to export; ``primary_key`` (when given) must be the table's real primary key."""

    schema: str
    name: str
    primary_key: tuple[str, ...] | None = None

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @classmethod
    def parse(cls, text: str) -> TableSpec:
        """``schema.table`` or ``schema.table=key1,key2``."""
        name, _, keys = text.partition("=")
        schema, dot, table = name.strip().partition(".")
        if not (dot and schema and table) or "." in table:
            raise ValueError(f"a table is written schema.table[=key,...], got {text!r}")
        primary_key = tuple(k.strip() for k in keys.split(",") if k.strip()) or None
        return cls(schema, table, primary_key)


@dataclass(frozen=True)
class ExportSettings:
    export_dir: Path
    slot_name: str = "finetune_dms"
    workers: int = 2
    # How long the slot must hold its WAL: the Snowball trip (prepare, ship, load, ship back, import) + margin.
    wal_retention_days: float = 30
    # The source's steady WAL rate; None: measured from pg_stat_wal when its window is long enough.
    wal_bytes_per_day: int | None = None
    # Free space wanted on the export target beyond the tables' size in PostgreSQL.
    disk_margin_bytes: int = 256 * MIB
    # Drop an inactive slot and the files of an earlier export that do not match, instead of refusing.
    replace: bool = False
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES
    # A table larger than this many heap bytes is exported in page ranges by several sessions at once.
    chunk_bytes: int = 512 * MIB
    part_size: int = S3_PART_SIZE
    # Tables of simple types through ADBC's binary COPY (:mod:`.binary_copy`); False: every table as CSV.
    binary_copy: bool = True


@dataclass
class _Column:
    name: str
    type_name: str
    arrow_type: pa.DataType


@dataclass
class _Table:
    spec: TableSpec
    oid: int
    primary_key: list[str]
    columns: list[_Column]
    heap_bytes: int
    size_bytes: int  # pg_table_size: heap, TOAST, free-space and visibility maps
    block_size: int

    @property
    def binary_copy(self) -> bool:
        """Whether every column decodes from binary COPY to its exported type (see :mod:`.binary_copy`)."""
        return all(c.type_name in binary_copy.BINARY_TYPES for c in self.columns)


@dataclass
class PreflightReport:
    """What the preflight learned; ``reuse`` is the earlier export's manifest when its slot matches."""

    tables: list[_Table] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    server_version: str = ""
    database: str = ""
    max_slot_wal_keep_size_mb: int = -1
    reuse: ExportManifest | None = None
    drop_slot: bool = False
    system_identifier: str | None = None


def with_connect_timeout(conninfo: str) -> str:
    """The connection string with ``connect_timeout`` when nothing sets one (the string, a ``service`` entry
    or ``PGCONNECT_TIMEOUT``): libpq otherwise waits for a source that drops packets as long as the OS does
    (minutes), for psycopg's sessions and ADBC's alike."""
    if os.environ.get("PGCONNECT_TIMEOUT"):
        return conninfo
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo) if conninfo.strip() else {}
        if "connect_timeout" in params or "service" in params or os.environ.get("PGSERVICE"):
            return conninfo
        return psycopg.conninfo.make_conninfo(conninfo, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    except psycopg.ProgrammingError:
        return conninfo  # not a connection string: connecting says so


def connect(conninfo: str, **kwargs) -> psycopg.Connection:
    """A connection, or SourceUnreachableError naming the server (never the password)."""
    try:
        return psycopg.connect(with_connect_timeout(conninfo), **kwargs)
    except psycopg.OperationalError as error:
        params = psycopg.conninfo.conninfo_to_dict(conninfo) if conninfo else {}
        where = f"{params.get('host', 'the default host')}:{params.get('port', 5432)}/{params.get('dbname', '')}"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SourceUnreachableError(f"cannot reach the source database at {where}: {reason}") from None


def _lsn(text: str | None) -> int | None:
    if not text:
        return None
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _describe_tables(conn: psycopg.Connection, specs: list[TableSpec], problems: list[str]) -> list[_Table]:
    tables = []
    block_size = int(conn.execute("SELECT current_setting('block_size')").fetchone()[0])
    for spec in specs:
        row = conn.execute(
            """
            SELECT c.oid, c.relkind, pg_relation_size(c.oid), pg_table_size(c.oid),
                   array(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
                         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum ORDER BY k.ord)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
            WHERE n.nspname = %s AND c.relname = %s
            """,
            (spec.schema, spec.name),
        ).fetchone()
        if row is None:
            problems.append(f"table {spec.qualified_name} does not exist (or this role cannot see it)")
            continue
        oid, relkind, heap_bytes, size_bytes, primary_key = row
        if relkind not in ("r", "p"):
            problems.append(f"{spec.qualified_name} is not a table (relkind {relkind!r}); DMS replicates tables")
            continue
        if relkind == "p":
            problems.append(f"{spec.qualified_name} is a partitioned table: list its partitions instead")
            continue
        if not primary_key:
            problems.append(
                f"table {spec.qualified_name} has no primary key: CDC cannot merge its updates and deletes "
                f"(ALTER TABLE {spec.qualified_name} ADD PRIMARY KEY (...))"
            )
        elif spec.primary_key and list(spec.primary_key) != primary_key:
            problems.append(
                f"table {spec.qualified_name}: the config says primary key {list(spec.primary_key)}, "
                f"the database says {primary_key}"
            )
        columns = [
            _Column(name, type_name, _ARROW_TYPES.get(type_name, pa.string()))
            for name, type_name in conn.execute(
                "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                (oid,),
            )
        ]
        tables.append(_Table(spec, oid, primary_key, columns, heap_bytes, size_bytes, block_size))
    return tables


def _check_wal_retention(conn, settings: ExportSettings, report: PreflightReport, problems: list[str]) -> None:
    """max_slot_wal_keep_size: refuse a limit the trip would pass; warn when there is none.

    With a limit, PostgreSQL invalidates a slot whose retained WAL passes it (wal_status 'lost'), and CDC
    can then never start at the snapshot's LSN: the shipped export is wasted, and the export and the trip
    must be done again. Without one (-1), the slot keeps WAL until DMS reads it, which costs disk on the
    source but loses nothing, and the pipeline logs how much it keeps while the device travels. So a limit
    too small for the trip is refused, and no limit is a warning.
    """
    limit_mb = report.max_slot_wal_keep_size_mb
    rate = settings.wal_bytes_per_day
    measured = ""
    if rate is None:
        row = conn.execute(
            "SELECT wal_bytes, extract(epoch FROM now() - stats_reset) FROM pg_stat_wal"
        ).fetchone() if conn.info.server_version >= 140000 else None
        if row and row[1] and row[1] >= _MIN_WAL_STATS_SECONDS:
            rate = int(float(row[0]) / float(row[1]) * 86_400)
            measured = f" (measured from pg_stat_wal over {float(row[1]) / 86_400:.0f} days)"
    days = settings.wal_retention_days
    expected = rate * days if rate is not None else None
    if limit_mb < 0:
        detail = (f"about {_size(expected)} at {_size(rate)}/day{measured}" if expected is not None
                  else "as much WAL as the source writes in that time")
        report.warnings.append(
            f"max_slot_wal_keep_size is unlimited (-1): the slot keeps all WAL from the snapshot until DMS "
            f"reads it, {detail} over a {days:g}-day trip; make sure pg_wal has room for it"
        )
        return
    limit = limit_mb * MIB
    if expected is None:
        problems.append(
            f"max_slot_wal_keep_size is {_size(limit)}: a slot that retains more WAL is invalidated and CDC can "
            f"never start at the snapshot, and the source's WAL rate is unknown (pg_stat_wal covers less than a "
            f"day), so it cannot be told whether {_size(limit)} lasts a {days:g}-day trip. Give the rate "
            f"(source.wal_bytes_per_day / --wal-bytes-per-day), or set max_slot_wal_keep_size = -1 and watch "
            f"the disk"
        )
    elif limit < expected * WAL_HEADROOM:
        problems.append(
            f"max_slot_wal_keep_size is {_size(limit)}, but {days:g} days at {_size(rate)}/day{measured} is "
            f"{_size(expected)}: the slot would be invalidated before DMS starts, and the shipped export "
            f"wasted. Raise it to at least {_size(expected * WAL_HEADROOM)} ({WAL_HEADROOM:g}x), or to -1"
        )


def _check_existing_slot(conn, settings: ExportSettings, report: PreflightReport, problems: list[str]) -> bool:
    """True when the slot exists. A slot from an earlier export is reused only if it matches its manifest."""
    row = conn.execute(
        "SELECT slot_type, plugin, database, active, active_pid, confirmed_flush_lsn::text, wal_status "
        "FROM pg_replication_slots WHERE slot_name = %s",
        (settings.slot_name,),
    ).fetchone()
    manifest = None
    manifest_problem = None
    if (settings.export_dir / MANIFEST_NAME).exists():
        try:
            manifest = read_manifest(settings.export_dir)
        except ExportManifestError as error:
            manifest_problem = str(error)
    if row is None:
        if manifest is not None and not settings.replace:
            problems.append(
                f"{settings.export_dir} holds an export made with slot {manifest.slot.name if manifest.slot else '?'}"
                f" at {manifest.cdc_start_position}, but slot {settings.slot_name} does not exist: CDC cannot "
                f"start at that export's position. Export again with replace (--replace)"
            )
        return False
    slot_type, plugin, database, active, active_pid, confirmed, wal_status = row
    system_id = report.system_identifier
    mismatches = []
    if manifest is None:
        mismatches.append(manifest_problem or f"no complete export (no {MANIFEST_NAME}) in {settings.export_dir}")
    else:
        if manifest.slot is None or manifest.slot.name != settings.slot_name:
            mismatches.append(f"the export in {settings.export_dir} names slot "
                              f"{manifest.slot.name if manifest.slot else None!r}")
        if slot_type != "logical" or plugin != PLUGIN:
            mismatches.append(f"the slot is {slot_type} with plugin {plugin!r}, not logical {PLUGIN}")
        if database != report.database:
            mismatches.append(f"the slot is in database {database!r}, not {report.database!r}")
        if manifest.source.system_identifier != system_id:
            mismatches.append(f"the export came from system {manifest.source.system_identifier}, this is {system_id}")
        if (_lsn(confirmed) or 0) < (_lsn(manifest.cdc_start_position) or 0):
            mismatches.append(f"the slot's confirmed position {confirmed} is before the export's "
                              f"{manifest.cdc_start_position}")
        if wal_status == "lost":
            mismatches.append("the slot was invalidated (wal_status lost): the WAL after the export is gone")
    if not mismatches:
        report.reuse = manifest
        return True
    if active:
        problems.append(f"replication slot {settings.slot_name} already exists and is in use (pid {active_pid}, "
                        f"a DMS task?), and does not belong to this export: " + "; ".join(mismatches))
    elif settings.replace:
        report.drop_slot = True
        report.warnings.append(f"replacing slot {settings.slot_name}: " + "; ".join(mismatches))
    else:
        problems.append(
            f"replication slot {settings.slot_name} was left by an earlier export that this one cannot reuse ("
            + "; ".join(mismatches) + f"). If no DMS task reads it, drop it (SELECT pg_drop_replication_slot("
            f"'{settings.slot_name}')) or export with replace (--replace)"
        )
    return True


def identify_system(conninfo: str) -> tuple[str, int]:
    """(system identifier, timeline) from ``IDENTIFY_SYSTEM`` on a replication connection: no file read, so
    no privilege beyond REPLICATION (``pg_control_system()`` reads global/pg_control)."""
    with connect(conninfo, replication="database", autocommit=True, prepare_threshold=None) as replication:
        system_id, timeline, _, _ = replication.execute("IDENTIFY_SYSTEM").fetchone()
    return str(system_id), int(timeline)


def preflight(conn: psycopg.Connection, specs: list[TableSpec], settings: ExportSettings,
              system_identifier: str | None = None) -> PreflightReport:
    """Check the source and the target; raise PreflightError listing every problem found."""
    problems: list[str] = []
    report = PreflightReport(system_identifier=system_identifier)
    version = conn.info.server_version
    report.server_version = conn.execute("SHOW server_version").fetchone()[0]
    report.database = conn.info.dbname
    if version < 100000:
        raise PreflightError([f"PostgreSQL {report.server_version} has no logical decoding slots with exported "
                              "snapshots; the export needs PostgreSQL 10 or later"])
    settings_row = conn.execute(
        "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int, "
        "current_setting('max_wal_senders')::int, "
        "coalesce((SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size'), -1), "
        "(SELECT count(*) FROM pg_replication_slots), "
        "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'), "
        "(SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)"
    ).fetchone()
    wal_level, max_slots, max_senders, keep_mb, slots_used, senders_used, can_replicate = settings_row
    report.max_slot_wal_keep_size_mb = int(keep_mb)
    if wal_level != "logical":
        problems.append(f"wal_level is {wal_level!r}, not 'logical': logical decoding (and DMS CDC) needs "
                        "wal_level = logical in postgresql.conf (on RDS: rds.logical_replication = 1), then a restart")
    if not can_replicate:
        problems.append(f"role {conn.info.user!r} may not create replication slots: "
                        f"ALTER ROLE {conn.info.user} WITH REPLICATION (on RDS: GRANT rds_replication)")
    slot_exists = _check_existing_slot(conn, settings, report, problems)
    if not slot_exists and slots_used >= max_slots:
        problems.append(f"no free replication slot: {slots_used} of max_replication_slots = {max_slots} are used; "
                        "drop an unused one or raise max_replication_slots (restart)")
    if senders_used >= max_senders:
        problems.append(f"no free WAL sender: {senders_used} of max_wal_senders = {max_senders} are running; "
                        "the export needs one to create the slot, and DMS one to read it")
    report.tables = _describe_tables(conn, specs, problems)
    if report.reuse is None:
        _check_wal_retention(conn, settings, report, problems)
        needed = sum(table.size_bytes for table in report.tables) + settings.disk_margin_bytes
        free = _free_bytes(settings.export_dir)
        if free < needed:
            problems.append(
                f"the export target {settings.export_dir} has {_size(free)} free, but the tables take "
                f"{_size(needed - settings.disk_margin_bytes)} in PostgreSQL (+ {_size(settings.disk_margin_bytes)}"
                " margin); the Parquet files are usually smaller, which is not counted on. Free space or export "
                "elsewhere"
            )
    if problems:
        raise PreflightError(problems)
    for warning in report.warnings:
        log.warning("export preflight: %s", warning)
    return report


def retained_wal(conn: psycopg.Connection, slot_name: str) -> dict | None:
    """How much WAL the slot holds back: ``pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)``."""
    row = conn.execute(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status, safe_wal_size, "
        "restart_lsn::text, confirmed_flush_lsn::text, active, current_setting('max_slot_wal_keep_size') "
        "FROM pg_replication_slots WHERE slot_name = %s",
        (slot_name,),
    ).fetchone()
    if row is None:
        return None
    retained, wal_status, safe, restart, confirmed, active, keep = row
    return {"slot": slot_name, "retained_bytes": int(retained) if retained is not None else None,
            "wal_status": wal_status, "safe_wal_size": int(safe) if safe is not None else None,
            "restart_lsn": restart, "confirmed_flush_lsn": confirmed, "active": active,
            "max_slot_wal_keep_size": keep}


# ---------------------------------------------------------------------------------------------- streaming


def _copy_query(table: _Table, pages: tuple[int, int | None] | None) -> sql.Composed:
    return sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(_select_query(table, pages))


def _select_query(table: _Table, pages: tuple[int, int | None] | None) -> sql.Composed:
    columns = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns)
    select = sql.SQL("SELECT {} FROM {}").format(columns, sql.Identifier(table.spec.schema, table.spec.name))
    if pages is not None:
        low, high = pages
        condition = sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({low},0)"))
        if high is not None:
            condition = sql.SQL("{} AND ctid < {}::tid").format(condition, sql.Literal(f"({high},0)"))
        select = sql.SQL("{} WHERE {}").format(select, condition)
    return select


class _CsvParser:
    """Parses blocks of whole COPY rows (PostgreSQL's CSV) into record batches of the table's Arrow types."""

    def __init__(self, table: _Table) -> None:
        # Arrow splits a block into pieces of this size and parses them on its CPU threads in parallel.
        self._read = pcsv.ReadOptions(column_names=[c.name for c in table.columns], block_size=PARSE_PIECE_BYTES)
        # PostgreSQL's CSV: NULL is an unquoted empty field, '' a quoted one; values may hold newlines.
        self._parse = pcsv.ParseOptions(newlines_in_values=True)
        self._convert = pcsv.ConvertOptions(
            column_types={c.name: c.arrow_type for c in table.columns},
            null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False,
            true_values=["t"], false_values=["f"],
        )

    def batches(self, block: memoryview) -> list[pa.RecordBatch]:
        rows = pcsv.read_csv(pa.BufferReader(pa.py_buffer(block)), read_options=self._read,
                             parse_options=self._parse, convert_options=self._convert)
        return rows.to_batches()


@dataclass
class _Chunk:
    table: _Table
    index: int
    pages: tuple[int, int | None] | None


def _chunks(table: _Table, chunk_bytes: int, sessions: int = 1) -> list[_Chunk]:
    """Page ranges of a large table (TID range scans, PostgreSQL 14+); small tables are one chunk.

    At most ``chunk_bytes`` of heap each, and a table of some size is cut into at least ``sessions`` ranges,
    so that one big table keeps every session busy, not one. More ranges than sessions come in a multiple
    of them: three ranges on two sessions would leave one session idle for the last third.
    """
    pages = max(1, table.heap_bytes // table.block_size)
    count = max(1, math.ceil(table.heap_bytes / chunk_bytes),
                min(sessions, table.heap_bytes // MIN_SPLIT_BYTES))
    if count > sessions:
        count = math.ceil(count / sessions) * sessions
    if count == 1:
        return [_Chunk(table, 0, None)]
    step = math.ceil(pages / count)
    bounds = [i * step for i in range(count)]
    # The last range is open: pages added since pg_relation_size was read are exported too.
    return [_Chunk(table, i, (low, bounds[i + 1] if i + 1 < count else None)) for i, low in enumerate(bounds)]


# ---------------------------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    manifest: ExportManifest
    reused: bool
    seconds: float
    rows: int
    csv_bytes: int  # what COPY sent, for throughput figures
    warnings: list[str]


class PostgresExport:
    """One export run; :meth:`run` returns the manifest (a matching earlier export's, if there is one)."""

    def __init__(self, conninfo: str, tables: list[TableSpec], settings: ExportSettings,
                 report: Callable[[str], None] | None = None) -> None:
        if not tables:
            raise ExportError("no tables to export: name at least one schema.table")
        self.conninfo = conninfo
        self.specs = tables
        self.settings = settings
        self.say = report or log.info
        self._lock = threading.Lock()
        self._csv_bytes = 0

    def run(self) -> ExportResult:
        started = time.monotonic()
        settings = self.settings
        with connect(self.conninfo, autocommit=True) as conn:
            try:
                system_id, _ = identify_system(self.conninfo)
            except (psycopg.Error, SourceUnreachableError):
                system_id = None  # a role without REPLICATION, or no pg_hba replication entry: said below
            report = preflight(conn, self.specs, settings, system_id)
            if report.reuse is not None:
                self.say(f"slot {settings.slot_name} and the export in {settings.export_dir} match: nothing to do")
                return ExportResult(report.reuse, True, time.monotonic() - started, 0, 0, report.warnings)
            if report.drop_slot:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (settings.slot_name,))
            self._clear_target(report)
            # Read before the slot exists, so that every change after its consistent point commits later.
            snapshot_position = conn.execute("SELECT clock_timestamp()").fetchone()[0].astimezone(UTC)
            created = False
            try:
                with connect(self.conninfo, replication="database", autocommit=True,
                             prepare_threshold=None) as replication:
                    system_id, timeline, _, _ = replication.execute("IDENTIFY_SYSTEM").fetchone()
                    slot, lsn, snapshot = self._create_slot(replication)
                    created = True
                    self.say(f"created slot {slot} ({PLUGIN}) at {lsn}; exporting snapshot {snapshot} with "
                             f"{settings.workers} session(s)")
                    for table in report.tables:
                        self.say(f"{table.spec.qualified_name}: {self._read_path(table)}")
                    files, counts = self._export_tables(report.tables, snapshot, snapshot_position)
                wal = retained_wal(conn, settings.slot_name)
                manifest = ExportManifest(
                    engine="postgres",
                    snapshot_position=snapshot_position.isoformat(),
                    cdc_start_position=lsn,
                    source=SourceInfo(database=report.database, system_identifier=str(system_id),
                                      timeline=int(timeline), server_version=report.server_version),
                    tables=counts,
                    files=files,
                    slot=SlotInfo(name=slot, plugin=PLUGIN),
                    wal=wal,
                    exported_at=datetime.now(UTC).isoformat(),
                )
                write_manifest(settings.export_dir, manifest)
            except BaseException:
                if created:
                    self._drop_slot_after_failure(conn)
                shutil.rmtree(settings.export_dir / STAGING_DIR, ignore_errors=True)
                raise
        seconds = time.monotonic() - started
        rows = sum(t.rows for t in counts.values())
        self.say(f"exported {rows:,} rows of {len(counts)} table(s) into {len(files)} file(s), "
                 f"{_size(manifest.total_bytes)}, in {seconds:.1f}s; CDC starts at {lsn}; the slot retains "
                 f"{_size(wal['retained_bytes'] or 0) if wal else '?'} of WAL")
        return ExportResult(manifest, False, seconds, rows, self._csv_bytes, report.warnings)

    def _binary(self, table: _Table) -> bool:
        return self.settings.binary_copy and table.binary_copy and binary_copy.available()

    def _read_path(self, table: _Table) -> str:
        """How a table is read, and why not the fast way (said once per table, as the export starts)."""
        if self._binary(table):
            return "binary COPY, decoded by ADBC"
        if not self.settings.binary_copy:
            return "CSV COPY (binary COPY turned off)"
        if not table.binary_copy:
            others = sorted({c.type_name for c in table.columns if c.type_name not in binary_copy.BINARY_TYPES})
            return f"CSV COPY (columns of type {', '.join(others)} keep their text form)"
        return "CSV COPY (adbc-driver-postgresql is not installed: pip install adbc-driver-postgresql)"

    def _clear_target(self, report: PreflightReport) -> None:
        """Remove what an earlier, unfinished or replaced export left for these tables (only our files)."""
        root = self.settings.export_dir
        root.mkdir(parents=True, exist_ok=True)
        (root / MANIFEST_NAME).unlink(missing_ok=True)
        shutil.rmtree(root / STAGING_DIR, ignore_errors=True)
        for table in report.tables:
            for old in (root / table.spec.schema / table.spec.name).glob("LOAD*.parquet"):
                old.unlink()

    def _create_slot(self, replication: psycopg.Connection) -> tuple[str, str, str]:
        slot = sql.Identifier(self.settings.slot_name).as_string(replication)
        if replication.info.server_version >= 150000:
            command = f"CREATE_REPLICATION_SLOT {slot} LOGICAL {PLUGIN} (SNAPSHOT 'export')"
        else:  # the option syntax came with PostgreSQL 15; before it, the keyword form
            command = f"CREATE_REPLICATION_SLOT {slot} LOGICAL {PLUGIN} EXPORT_SNAPSHOT"
        try:
            name, lsn, snapshot, _ = replication.execute(command).fetchone()
        except psycopg.Error as error:
            raise ExportError(f"creating replication slot {self.settings.slot_name} failed: "
                              f"{str(error).strip().splitlines()[0]}") from None
        return name, lsn, snapshot

    def _drop_slot_after_failure(self, conn: psycopg.Connection) -> None:
        # Best effort, and never hiding the original error: the slot would hold WAL for an export that failed.
        try:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (self.settings.slot_name,))
            log.warning("export failed: dropped the slot %s it had created", self.settings.slot_name)
        except psycopg.Error as error:
            log.error("export failed, and dropping slot %s failed too (%s): drop it by hand",
                      self.settings.slot_name, error)

    def _export_tables(self, tables: list[_Table], snapshot: str, load_time: datetime):
        settings = self.settings
        staging = settings.export_dir / STAGING_DIR
        chunks = [chunk for table in sorted(tables, key=lambda t: -t.heap_bytes)
                  for chunk in _chunks(table, settings.chunk_bytes, settings.workers)]
        with ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="export") as pool:
            results = list(pool.map(lambda chunk: self._export_chunk(chunk, snapshot, load_time, staging), chunks))
        by_table: dict[str, list[tuple[int, dict[Path, dict], int]]] = {}
        for chunk, (sums, rows) in zip(chunks, results, strict=True):
            by_table.setdefault(chunk.table.spec.qualified_name, []).append((chunk.index, sums, rows))
        files: list[ExportedFile] = []
        counts: dict[str, TableExport] = {}
        for table in tables:
            parts = sorted(by_table.get(table.spec.qualified_name, []), key=lambda item: item[0])
            folder = settings.export_dir / table.spec.schema / table.spec.name
            folder.mkdir(parents=True, exist_ok=True)
            # The checksums are of the bytes, so a file keeps them under its DMS name.
            staged = [item for _, sums, _ in parts for item in sums.items()]
            for number, (path, checksums) in enumerate(staged, start=1):
                target = folder / load_file_name(number)
                path.replace(target)
                files.append(ExportedFile(key=target.relative_to(settings.export_dir).as_posix(), **checksums))
            counts[table.spec.qualified_name] = TableExport(
                rows=sum(rows for _, _, rows in parts), primary_key=table.primary_key, files=len(staged),
                bytes=sum(checksums["size"] for _, checksums in staged),
            )
        shutil.rmtree(staging, ignore_errors=True)
        return sorted(files, key=lambda f: f.key), counts

    def _export_chunk(self, chunk: _Chunk, snapshot: str, load_time: datetime, staging: Path):
        """The chunk's files, in order, each with its checksums; and its rows."""
        table = chunk.table
        sums: dict[Path, dict] = {}

        def checksum(path: Path) -> None:
            # Here, in the session's thread as each file closes, while the other sessions still read: a pass
            # over every file after the last one closed left a core idle.
            sums[path] = file_checksums(path, self.settings.part_size)

        writer = LoadFileWriter(staging / table.spec.schema / table.spec.name, f"chunk{chunk.index:05d}", load_time,
                                max_file_bytes=self.settings.max_file_bytes,
                                row_group_bytes=self.settings.row_group_bytes, on_file_closed=checksum)
        csv_bytes = 0
        try:
            if self._binary(table):
                schema = pa.schema([(c.name, c.arrow_type) for c in table.columns])
                query = _select_query(table, chunk.pages).as_string()
                for batch in binary_copy.read_batches(with_connect_timeout(self.conninfo), snapshot, query, schema):
                    writer.write(batch)
            else:
                csv_bytes = self._copy_csv(chunk, snapshot, writer)
            paths = writer.close()
        except BaseException:
            writer.abort()
            raise
        with self._lock:
            self._csv_bytes += csv_bytes
        return {path: sums[path] for path in paths}, writer.rows

    def _copy_csv(self, chunk: _Chunk, snapshot: str, writer: LoadFileWriter) -> int:
        """The chunk through ``COPY ... (FORMAT csv)``, parsed a block at a time; returns the CSV bytes."""
        table = chunk.table
        csv_bytes = 0
        with connect(self.conninfo, autocommit=True) as conn:
            # Text forms pyarrow parses exactly: UTC ISO timestamps, ISO dates, round-tripping floats.
            conn.execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 3")
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            parser = _CsvParser(table)
            with conn.cursor() as cursor:
                for block in copy_blocks(cursor, _copy_query(table, chunk.pages), COPY_BLOCK_BYTES):
                    csv_bytes += len(block)
                    for batch in parser.batches(block):
                        writer.write(batch)
            conn.execute("COMMIT")
        return csv_bytes
