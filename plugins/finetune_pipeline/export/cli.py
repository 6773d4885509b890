"""``python -m finetune_pipeline.export``: the consistent snapshot export, on the on-premises host.

Connection settings come from ``--dsn`` (a libpq URL or ``key=value`` string) and, as with psql, from
``PGHOST``/``PGUSER``/``PGPASSWORD``/``~/.pgpass``: keep the password out of the command line.

Exit codes: 0 exported (or a matching earlier export found), 1 refused by the preflight or failed,
2 bad arguments or an unsupported engine, 3 the source could not be reached.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from finetune_pipeline.export.errors import (
    ExportError,
    PreflightError,
    SourceUnreachableError,
    UnsupportedEngineError,
)

ENGINES = ("postgres", "mysql")


def check_engine(engine: str) -> str:
    name = engine.strip().lower()
    aliases = {"postgresql": "postgres", "aurora-postgresql": "postgres", "mariadb": "mysql", "aurora": "mysql"}
    name = aliases.get(name, name)
    if name not in ENGINES:
        raise UnsupportedEngineError(
            f"unsupported source engine {engine!r}: the export supports PostgreSQL (a logical slot's LSN) and "
            "MySQL (a binlog file:position), the native CDC start points DMS takes"
        )
    return name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m finetune_pipeline.export", description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="postgres", help="postgres (default) or mysql")
    parser.add_argument("--dsn", default="", help="libpq connection string or URL; PG* variables fill the rest")
    parser.add_argument("--table", action="append", required=True, metavar="SCHEMA.TABLE[=KEY,...]",
                        help="a table to export, with its primary key to check; repeat for each table")
    parser.add_argument("--export-dir", type=Path, required=True, help="where the files and manifest.json go")
    parser.add_argument("--slot", default="finetune_dms", help="replication slot for DMS (default finetune_dms)")
    parser.add_argument("--workers", type=int, default=2, help="parallel exporter sessions (default 2)")
    parser.add_argument("--wal-retention-days", type=float, default=30,
                        help="how long the slot must keep WAL: the whole Snowball trip (default 30)")
    parser.add_argument("--wal-bytes-per-day", type=int, help="the source's WAL rate (default: pg_stat_wal)")
    parser.add_argument("--replace", action="store_true",
                        help="drop an inactive slot and an earlier export that do not match, instead of refusing")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        engine = check_engine(args.engine)
        if args.workers < 1:
            raise UnsupportedEngineError("--workers must be at least 1")
        if engine == "mysql":
            return _mysql(args)
        from finetune_pipeline.export.postgres import ExportSettings, PostgresExport, TableSpec

        try:
            tables = [TableSpec.parse(text) for text in args.table]
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        settings = ExportSettings(export_dir=args.export_dir.resolve(), slot_name=args.slot, workers=args.workers,
                                  wal_retention_days=args.wal_retention_days,
                                  wal_bytes_per_day=args.wal_bytes_per_day, replace=args.replace)
        result = PostgresExport(args.dsn, tables, settings, report=lambda line: print(line, flush=True)).run()
    except UnsupportedEngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SourceUnreachableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except PreflightError as error:
        print(f"refused: {error}", file=sys.stderr)
        return 1
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    manifest = result.manifest
    summary = {"status": "reused" if result.reused else "exported", "export_dir": str(settings.export_dir),
               "cdc_start_position": manifest.cdc_start_position, "snapshot_position": manifest.snapshot_position,
               "slot": manifest.slot.name if manifest.slot else None, "files": len(manifest.files),
               "bytes": manifest.total_bytes, "rows": {name: t.rows for name, t in manifest.tables.items()},
               "retained_wal_bytes": (manifest.wal or {}).get("retained_bytes"),
               "seconds": round(result.seconds, 2), "warnings": result.warnings}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['status']}: {summary['files']} files, {summary['bytes']} bytes in {summary['export_dir']}; "
              f"DMS CdcStartPosition {summary['cdc_start_position']} (slot {summary['slot']}).")
        print("The slot now keeps WAL until DMS reads it: for the whole trip of the device.")
    return 0


def _mysql(args) -> int:
    try:
        import pymysql
    except ImportError:
        print("error: a MySQL export needs a DB-API driver: pip install PyMySQL", file=sys.stderr)
        return 2
    from finetune_pipeline.export.mysql import export_mysql

    tables = []
    for text in args.table:
        name = text.partition("=")[0]
        schema, _, table = name.partition(".")
        tables.append((schema, table))
    try:
        conn = pymysql.connect(read_default_file="~/.my.cnf", database=tables[0][0])
    except pymysql.err.OperationalError as error:
        print(f"error: cannot reach the MySQL source: {error.args[-1]}", file=sys.stderr)
        return 3
    manifest = export_mysql(conn, tables, args.export_dir.resolve(), report=print)
    print(f"exported: DMS CdcStartPosition {manifest.cdc_start_position}")
    return 0
