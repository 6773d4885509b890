"""A consistent MySQL snapshot and the binlog position DMS starts CDC from (``CdcStartPosition``).

DMS's native start point for MySQL is a binlog ``file:position`` (CHAP_Task.CDC, "native CDC start
points"), and its MySQL CDC reads row events only: ``binlog_format = ROW`` and ``binlog_row_image = FULL``
(CHAP_Source.MySQL, "Using a self-managed MySQL-compatible database as a source"). The position and the
snapshot are taken together, as ``mysqldump --single-transaction --source-data`` does: under a brief global
read lock, a consistent-snapshot transaction starts and the binlog position is read, then the lock is
released and the tables are read inside that one transaction (MySQL cannot share a snapshot between
sessions, so this export uses one).

Any DB-API connection works (PyMySQL, mysqlclient, mysql-connector); the SQL it issues is tested with a
fake connection, with no server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from finetune_pipeline.datasets.dms_format import load_file_name
from finetune_pipeline.export.errors import ExportError, PreflightError
from finetune_pipeline.export.load_files import LoadFileWriter
from finetune_pipeline.export.manifest import (
    ExportManifest,
    SourceInfo,
    TableExport,
    describe_file,
    write_manifest,
)

log = logging.getLogger(__name__)

_ARROW_TYPES = {
    "tinyint": pa.int16(), "smallint": pa.int16(), "mediumint": pa.int32(), "int": pa.int32(),
    "bigint": pa.int64(), "float": pa.float32(), "double": pa.float64(), "date": pa.date32(),
    "datetime": pa.timestamp("us"), "timestamp": pa.timestamp("us", tz="UTC"),
}


@dataclass(frozen=True)
class BinlogPosition:
    file: str
    position: int

    @property
    def cdc_start_position(self) -> str:
        return f"{self.file}:{self.position}"


def _one(cursor, query: str) -> tuple | None:
    cursor.execute(query)
    return cursor.fetchone()


def check_binlog_settings(cursor) -> str:
    """Refuse a server DMS cannot read changes from; return its ``server_uuid``."""
    row = _one(cursor, "SELECT @@GLOBAL.log_bin, @@GLOBAL.binlog_format, @@GLOBAL.binlog_row_image, @@server_uuid")
    log_bin, binlog_format, row_image, server_uuid = row
    problems = []
    if str(log_bin) not in ("1", "ON"):
        problems.append("binary logging is off (log_bin): DMS reads changes from the binlog; enable it and restart")
    if str(binlog_format).upper() != "ROW":
        problems.append(f"binlog_format is {binlog_format!r}, not ROW: DMS CDC reads row events only "
                        "(SET PERSIST binlog_format = 'ROW')")
    if str(row_image).upper() != "FULL":
        problems.append(f"binlog_row_image is {row_image!r}, not FULL: DMS needs every column of each changed row "
                        "(SET PERSIST binlog_row_image = 'FULL')")
    if problems:
        raise PreflightError(problems)
    return str(server_uuid)


def _binlog_status(cursor) -> BinlogPosition:
    # MySQL 8.4 renamed SHOW MASTER STATUS (removed there) to SHOW BINARY LOG STATUS (added in 8.2).
    for query in ("SHOW BINARY LOG STATUS", "SHOW MASTER STATUS"):
        try:
            cursor.execute(query)
        except Exception as error:  # noqa: BLE001 - a driver's own ProgrammingError: try the older form
            if "syntax" not in str(error).lower():
                raise
            continue
        row = cursor.fetchone()
        if not row:
            raise PreflightError(["the server reports no binlog position (SHOW BINARY LOG STATUS is empty): "
                                  "is binary logging on?"])
        return BinlogPosition(str(row[0]), int(row[1]))
    raise ExportError("the server understood neither SHOW BINARY LOG STATUS nor SHOW MASTER STATUS")


def start_consistent_snapshot(cursor) -> BinlogPosition:
    """Start a consistent-snapshot transaction and return the binlog position it corresponds to."""
    cursor.execute("FLUSH TABLES WITH READ LOCK")
    try:
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        position = _binlog_status(cursor)
    finally:
        cursor.execute("UNLOCK TABLES")
    return position


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def export_mysql(conn, tables: list[tuple[str, str]], export_dir: Path, *, batch_rows: int = 10_000,
                 report: Callable[[str], None] | None = None) -> ExportManifest:
    """Export ``(schema, table)`` pairs in one consistent snapshot; the manifest names its binlog position."""
    say = report or log.info
    cursor = conn.cursor()
    server_uuid = check_binlog_settings(cursor)
    problems, columns = [], {}
    for schema, name in tables:
        cursor.execute(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_KEY FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION", (schema, name))
        rows = cursor.fetchall()
        if not rows:
            problems.append(f"table {schema}.{name} does not exist")
        elif not any(key == "PRI" for _, _, key in rows):
            problems.append(f"table {schema}.{name} has no primary key: CDC cannot merge its updates and deletes")
        columns[(schema, name)] = rows
    if problems:
        raise PreflightError(problems)
    snapshot_position = datetime.now(UTC)
    position = start_consistent_snapshot(cursor)
    say(f"consistent snapshot at binlog {position.cdc_start_position}")
    counts, files = {}, []
    export_dir.mkdir(parents=True, exist_ok=True)
    for schema, name in tables:
        cols = columns[(schema, name)]
        arrow = pa.schema([pa.field(c, _ARROW_TYPES.get(str(t).lower(), pa.string())) for c, t, _ in cols])
        folder = export_dir / schema / name
        writer = LoadFileWriter(folder, "part", snapshot_position)
        cursor.execute(f"SELECT {', '.join(_quote(c) for c, _, _ in cols)} FROM {_quote(schema)}.{_quote(name)}")
        while batch := cursor.fetchmany(batch_rows):
            writer.write(pa.RecordBatch.from_pylist([dict(zip(arrow.names, row, strict=True)) for row in batch],
                                                    schema=arrow))
        paths = writer.close()
        for number, path in enumerate(paths, start=1):
            path.replace(folder / load_file_name(number))
            files.append(describe_file(export_dir, folder / load_file_name(number)))
        counts[f"{schema}.{name}"] = TableExport(rows=writer.rows, primary_key=[c for c, _, k in cols if k == "PRI"],
                                                 files=len(paths))
    cursor.execute("COMMIT")
    manifest = ExportManifest(
        engine="mysql", snapshot_position=snapshot_position.isoformat(),
        cdc_start_position=position.cdc_start_position,
        source=SourceInfo(database=tables[0][0], system_identifier=server_uuid),
        tables=counts, files=sorted(files, key=lambda f: f.key), exported_at=datetime.now(UTC).isoformat(),
        notes={"binlog_file": position.file, "binlog_position": position.position},
    )
    write_manifest(export_dir, manifest)
    return manifest
