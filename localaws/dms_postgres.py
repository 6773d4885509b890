"""The PostgreSQL side of a DMS task: connecting as the source endpoint says, checking its slot, decoding, loading.

Connection details come from the endpoint as DMS takes them (CHAP_Source.PostgreSQL; API_PostgreSQLSettings):
ServerName, Port, Username, Password and DatabaseName, from the endpoint or its PostgreSQLSettings, or, with
SecretsManagerSecretId, from a secret holding ``username``, ``password``, ``port`` and ``host``
(security_iam_secretsmanager: "you have the choice of entering one of the following sets of values, but not
both"). localaws reads that secret from its own Secrets Manager.

Decoding uses the SQL interface of logical decoding, which lets the task acknowledge a position only after
the files holding it are in S3: the endpoint's slot is copied into a temporary slot of the task's session
(``pg_copy_logical_replication_slot``), changes are consumed from the copy, and the endpoint's slot is moved
with ``pg_replication_slot_advance`` once a PUT has succeeded, so that a restart replays from there
(at-least-once, as DMS: CHAP_Source.PostgreSQL, "WAL files that are discarded only after AWS DMS successfully
reads changes from the logical replication slot").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
import pyarrow as pa
import pyarrow.csv as pcsv
from psycopg import sql

from localaws.dms_decoding import (
    ColumnType,
    Layouts,
    Transaction,
    format_lsn,
    parse_begin,
    parse_change,
    parse_commit,
    parse_lsn,
)

log = logging.getLogger(__name__)

POSTGRES_ENGINES = ("postgres", "aurora-postgresql")
# PostgreSQLSettings.PluginName values (botocore's PluginNameValue) and the plugin each creates slots with.
PLUGINS = {"test-decoding": "test_decoding", "pglogical": "pglogical"}
# DMS's SslMode values as libpq sslmode; without a certificate (CertificateArn), verify-* cannot be checked here.
SSL_MODES = {"none": "disable", "require": "require", "verify-ca": "require", "verify-full": "require"}
CONNECT_TIMEOUT_SECONDS = 5
DECODE_OPTIONS = ("include-timestamp", "1", "skip-empty-xacts", "1")


class SourceError(Exception):
    """The source cannot be used as the endpoint describes it; ``recoverable`` errors are retried."""

    def __init__(self, message: str, recoverable: bool = False):
        super().__init__(message)
        self.recoverable = recoverable


@dataclass(frozen=True)
class PostgresSource:
    """A PostgreSQL source endpoint, resolved: where to connect and how DMS reads it. Never log ``password``."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    ssl_mode: str = "none"
    slot_name: str | None = None
    plugin_name: str | None = None  # PluginName; None means no preference
    heartbeat_enable: bool = False
    heartbeat_schema: str = "public"
    heartbeat_frequency_minutes: float = 5.0
    map_boolean_as_boolean: bool = False
    execute_timeout_seconds: int = 60

    @property
    def address(self) -> tuple[str, int, str]:
        return self.host, self.port, self.database

    def connect(self, replication: bool = False, autocommit: bool = True) -> psycopg.Connection:
        try:
            return psycopg.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self.password,
                dbname=self.database,
                sslmode=SSL_MODES.get(self.ssl_mode, "disable"),
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                application_name="localaws-dms",
                autocommit=autocommit,
                options=f"-c statement_timeout={self.execute_timeout_seconds * 1000} -c TimeZone=UTC",
                **({"replication": "database"} if replication else {}),
            )
        except psycopg.OperationalError as error:
            raise SourceError(
                f"Cannot connect to the source endpoint's database {self.database} at {self.host}:{self.port}: "
                f"{_first_line(error)}",
                recoverable=True,
            ) from None


def resolve_source(endpoint, secret_value) -> PostgresSource:
    """The connection details of a moto DMS endpoint; ``secret_value(secret_id)`` reads Secrets Manager."""
    settings = dict(endpoint.postgre_sql_settings or {})
    secret_id = settings.get("SecretsManagerSecretId")
    if secret_id:
        try:
            secret = json.loads(secret_value(secret_id))
        except ValueError:
            raise SourceError(
                f"Secret {secret_id} is not the JSON DMS expects (username, password, port, host)."
            ) from None
        try:
            host, port = str(secret["host"]), int(secret["port"])
            user, password = str(secret["username"]), str(secret["password"])
        except (KeyError, ValueError, TypeError):
            raise SourceError(f"Secret {secret_id} lacks one of username, password, port, host.") from None
    else:
        host = settings.get("ServerName") or endpoint.server_name
        port = settings.get("Port") or endpoint.port
        user = settings.get("Username") or endpoint.username
        password = settings.get("Password") or endpoint.password
    database = settings.get("DatabaseName") or endpoint.database_name
    missing = [name for name, value in (("ServerName", host), ("Port", port), ("Username", user),
                                        ("DatabaseName", database)) if not value]  # fmt: skip
    if missing:
        raise SourceError(f"The source endpoint has no {', '.join(missing)}.")
    plugin = settings.get("PluginName")
    return PostgresSource(
        host=str(host),
        port=int(port),
        user=str(user),
        password=str(password or ""),
        database=str(database),
        ssl_mode=(endpoint.ssl_mode or "none"),
        slot_name=settings.get("SlotName") or None,
        plugin_name=None if plugin in (None, "", "no-preference") else plugin,
        heartbeat_enable=bool(settings.get("HeartbeatEnable", False)),
        heartbeat_schema=settings.get("HeartbeatSchema") or "public",
        heartbeat_frequency_minutes=float(settings.get("HeartbeatFrequency") or 5),
        map_boolean_as_boolean=bool(settings.get("MapBooleanAsBoolean", False)),
        execute_timeout_seconds=int(settings.get("ExecuteTimeout") or 60),
    )


@dataclass(frozen=True)
class SlotState:
    name: str
    plugin: str
    slot_type: str
    database: str | None
    active: bool
    active_pid: int | None
    confirmed_flush: int | None
    restart_lsn: int | None


def slot_state(conn: psycopg.Connection, name: str) -> SlotState | None:
    row = conn.execute(
        "SELECT slot_name, plugin, slot_type, database, active, active_pid, confirmed_flush_lsn::text, "
        "restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        (name,),
    ).fetchone()
    if row is None:
        return None
    return SlotState(
        name=row[0],
        plugin=row[1] or "",
        slot_type=row[2],
        database=row[3],
        active=bool(row[4]),
        active_pid=row[5],
        confirmed_flush=parse_lsn(row[6]) if row[6] else None,
        restart_lsn=parse_lsn(row[7]) if row[7] else None,
    )


def create_slot(source: PostgresSource, name: str, export_snapshot: bool) -> tuple[int, str | None, psycopg.Connection]:
    """CREATE_REPLICATION_SLOT ... LOGICAL test_decoding, on a replication connection that stays open (its
    exported snapshot lives as long as it does). Returns (consistent point, snapshot name, connection)."""
    conn = source.connect(replication=True)
    snapshot = "(SNAPSHOT 'export')" if export_snapshot else "(SNAPSHOT 'nothing')"
    try:
        row = conn.execute(f"CREATE_REPLICATION_SLOT {name} LOGICAL test_decoding {snapshot}").fetchone()
    except psycopg.Error as error:
        conn.close()
        raise SourceError(f"Cannot create replication slot {name}: {_first_line(error)}") from None
    return parse_lsn(row[1]), row[2], conn


def new_slot_name(task_id: str) -> str:
    """A slot name in DMS's style (a long random name), unique to the task."""
    tail = "".join(c if c.isalnum() else "_" for c in task_id.lower())[:24]
    head = secrets.choice("abcdefghijklmnopqrstuvwxyz") + secrets.token_hex(7)  # a letter first: an identifier
    return f"{head}_{tail}"[:63]


@dataclass
class TableInfo:
    schema: str
    table: str
    columns: list[tuple[str, str]]  # (name, format_type with typmod)
    primary_key: list[str]


def table_info(conn: psycopg.Connection, schema: str, table: str) -> TableInfo | None:
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (schema, table),
    ).fetchall()
    if not rows:
        return None
    key = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) "
        "WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary "
        "ORDER BY array_position(i.indkey::int2[], a.attnum)",
        (schema, table),
    ).fetchall()
    return TableInfo(schema, table, [(name, kind) for name, kind in rows], [name for (name,) in key])


def list_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return [
        (schema, table)
        for schema, table in conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%%' ORDER BY 1, 2"
        ).fetchall()
    ]


class DecodingSession:
    """One connection that decodes from a temporary copy of the endpoint's slot and acknowledges on the slot.

    ``start_lsn``: where CDC starts; PostgreSQL forwards a start before the slot's confirmed position to that
    position (logical decoding: "has already been streamed, forwarding to"), and so does this session.
    """

    def __init__(self, source: PostgresSource, slot: str, start_lsn: int | None):
        self.source = source
        self.slot = slot
        # Before connecting, so that close() finds them when the start fails.
        self._fetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dms-decode")
        self._next: Future | None = None
        self.read_at: datetime | None = None
        self.conn = source.connect()
        self.copy = f"{slot[:40]}_localaws_{secrets.token_hex(4)}"
        try:
            state = slot_state(self.conn, slot)
            if state is None:
                raise SourceError(f"Replication slot {slot} does not exist any more.")
            self.conn.execute("SELECT pg_copy_logical_replication_slot(%s, %s, true)", (slot, self.copy))
            self.confirmed = state.confirmed_flush or 0
            if start_lsn is not None and start_lsn < self.confirmed:
                log.warning(
                    "DMS: start position %s is before slot %s's confirmed position %s: starting there",
                    format_lsn(start_lsn), slot, format_lsn(self.confirmed),
                )
            elif start_lsn is not None and start_lsn > self.confirmed:
                self.conn.execute(
                    "SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.copy, format_lsn(start_lsn))
                )
        except psycopg.Error as error:
            self.close()
            raise _source_error(error, f"decoding from slot {slot}") from None
        except SourceError:
            self.close()
            raise
        self._columns: dict[tuple[str, str], TableInfo | None] = {}
        self._layouts: Layouts = {}

    def close(self) -> None:
        ahead, self._next = self._next, None
        if ahead is not None:
            # What it read is read again by the next session, from the slot: stop the server's decoding.
            with contextlib.suppress(Exception):
                self.conn.cancel_safe(timeout=5)
            with contextlib.suppress(Exception):  # its error is the connection's, which is going anyway
                ahead.result()
        self._fetcher.shutdown()
        with contextlib.suppress(Exception):  # closing a broken connection
            self.conn.close()  # the temporary slot goes with the session

    def _fetch(self, limit: int, now: Callable[[], datetime]) -> tuple[datetime, list[tuple[str, str]]]:
        read_at = now()
        rows = self.conn.execute(
            "SELECT lsn::text, data FROM pg_logical_slot_get_changes(%s, NULL, %s, %s, %s, %s, %s)",
            (self.copy, limit, *DECODE_OPTIONS),
        ).fetchall()
        return read_at, rows

    def changes(self, limit: int, now: Callable[[], datetime]) -> list[Transaction]:
        """Whole transactions decoded from the copy (PostgreSQL returns whole ones, at least ``limit`` rows).
        ``read_at`` is then when they were read from the slot, by ``now``, the task's clock."""
        transactions: list[Transaction] = []
        current: Transaction | None = None
        try:
            ahead, self._next = self._next, None
            self.read_at, rows = ahead.result() if ahead is not None else self._fetch(limit, now)
            if len(rows) >= limit:
                # A backlog: the server decodes the next batch while this one is parsed here (psycopg waits
                # without the GIL), as DMS reads its stream while it writes. Only then: a batch fetched ahead
                # of an idle poll would be a poll late.
                self._next = self._fetcher.submit(self._fetch, limit, now)
            for lsn, data in rows:
                if data.startswith("table "):
                    change = parse_change(data, self._layouts)
                    if current is None:
                        continue
                    if isinstance(change, tuple):
                        current.truncated.append(change)
                    elif change is not None:
                        current.changes.append(change)
                elif (xid := parse_begin(data)) is not None:
                    current = Transaction(xid=xid)
                elif (commit := parse_commit(data)) is not None and current is not None:
                    current.end_lsn = parse_lsn(lsn)
                    current.commit_time = commit[1]
                    transactions.append(current)
                    current = None
        except psycopg.Error as error:
            raise _source_error(error, f"decoding from slot {self.slot}") from None
        return transactions

    def acknowledge(self, lsn: int) -> None:
        """Move the endpoint's slot to ``lsn``: everything before it is in S3."""
        if lsn <= self.confirmed:
            return
        try:
            self.conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, format_lsn(lsn)))
        except psycopg.Error as error:
            raise _source_error(error, f"advancing slot {self.slot}") from None
        self.confirmed = lsn

    def table(self, schema: str, table: str, refresh: bool = False) -> TableInfo | None:
        key = (schema, table)
        if refresh or key not in self._columns:
            try:
                self._columns[key] = table_info(self.conn, schema, table)
            except psycopg.Error as error:
                raise _source_error(error, f"reading the columns of {schema}.{table}") from None
        return self._columns[key]

    def lookup(self, schema: str, table: str, keys: dict[str, str], column: str) -> str | None:
        """A column's current value as text, by primary key: DMS looks LOBs up in the source during CDC
        (CHAP_BestPractices: "During change processing, both small and large LOBs are replicated by performing
        a lookup from the source table"), which is how it fills a TOASTed value an UPDATE left unchanged."""
        query = sql.SQL("SELECT {col}::text FROM {schema}.{table} WHERE {where}").format(
            col=sql.Identifier(column),
            schema=sql.Identifier(schema),
            table=sql.Identifier(table),
            where=sql.SQL(" AND ").join(sql.SQL("{}::text = %s").format(sql.Identifier(k)) for k in keys),
        )
        try:
            row = self.conn.execute(query, list(keys.values())).fetchone()
        except psycopg.Error as error:
            raise _source_error(error, f"looking up {schema}.{table}.{column}") from None
        return row[0] if row else None

    def heartbeat(self, schema: str) -> None:
        """HeartbeatEnable: a small write in the source, so that an idle slot still moves (its restart_lsn)."""
        table = sql.Identifier(schema, "awsdms_heartbeat")
        try:
            self.conn.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (heartbeat_id integer PRIMARY KEY, heartbeat_timestamp timestamp)"
            ).format(table))  # fmt: skip
            self.conn.execute(sql.SQL(
                "INSERT INTO {} VALUES (1, now()) ON CONFLICT (heartbeat_id) DO UPDATE SET heartbeat_timestamp = now()"
            ).format(table))  # fmt: skip
        except psycopg.Error as error:
            log.warning("DMS heartbeat in %s failed: %s", schema, _first_line(error))


def copy_table(
    conn: psycopg.Connection, info: TableInfo, batch_rows: int = 65_536
) -> Iterator[dict[str, list]]:
    """A table's rows as text columns, in batches, through COPY to a spool file (memory stays flat)."""
    names = [name for name, _ in info.columns]
    statement = sql.SQL("COPY (SELECT {cols} FROM {schema}.{table}) TO STDOUT (FORMAT csv)").format(
        cols=sql.SQL(", ").join(sql.Identifier(n) for n in names),
        schema=sql.Identifier(info.schema),
        table=sql.Identifier(info.table),
    )
    fd, path = tempfile.mkstemp(prefix="localaws-dms-load-", suffix=".csv")
    try:
        with os.fdopen(fd, "wb") as spool, conn.cursor().copy(statement) as copy:
            for block in copy:
                spool.write(block)
        if os.path.getsize(path) == 0:
            return
        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(column_names=names, block_size=1 << 22),
            convert_options=pcsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,  # COPY writes NULL unquoted and '' quoted
                null_values=[""],
            ),
        )
        pending: dict[str, list] = {n: [] for n in names}
        count = 0
        for batch in reader:
            for index, name in enumerate(names):
                pending[name].extend(batch.column(index).to_pylist())
            count += batch.num_rows
            if count >= batch_rows:
                yield pending
                pending, count = {n: [] for n in names}, 0
        if count:
            yield pending
    finally:
        os.unlink(path)


def column_types(
    info_columns: list[tuple[str, str]], source: PostgresSource, parquet_ms: bool
) -> dict[str, ColumnType]:
    return {
        name: ColumnType(kind, parquet_ms=parquet_ms, boolean_as_boolean=source.map_boolean_as_boolean)
        for name, kind in info_columns
    }


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _source_error(error: psycopg.Error, doing: str) -> SourceError:
    # A lost connection (the server restarted, the network broke) is retried; anything else is the source's answer.
    lost = isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError))
    return SourceError(f"Source error while {doing}: {_first_line(error)}", recoverable=lost)
