"""Count rows in the source database's tables, through the Airflow connection named in the config.

The incremental sync compares these counts with the rows it published. Any SQL connection whose hook is a
common-sql ``DbApiHook`` works (PostgresHook for the demo source). No error or log line carries the
connection's password or URI.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import quote, quote_plus

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

log = logging.getLogger(__name__)

# SQLSTATEs meaning "no such table/schema" (PostgreSQL's undefined_table and invalid_schema_name, and
# the standard's "base table or view not found"). psycopg 3 names it ``sqlstate``, psycopg2 ``pgcode``.
_MISSING_TABLE_SQLSTATES = frozenset({"42P01", "3F000", "42S02"})


class SourceCountError(RuntimeError):
    """The source rows could not be counted; the message names the connection and, if known, the table."""


def _split_table(table: str) -> tuple[str, str]:
    schema, dot, name = table.partition(".")
    if not (dot and schema and name) or "." in name:
        raise SourceCountError(f'source table {table!r} must be written "schema.table"')
    return schema, name


def _quote(identifier: str, conn_type: str, escape_word_format: str) -> str:
    # Always quote and double the closing character. The dialect's escape_word is not used: it leaves
    # mixed-case names unquoted (Postgres would fold them to lower case) and does not double an embedded
    # quote. MySQL quotes with backticks (ANSI double quotes only with ANSI_QUOTES), and its hook keeps
    # DbApiHook's '"{}"' format, so it is chosen by connection type; other hooks give their own ("[{}]").
    if conn_type == "mysql":
        escape_word_format = "`{}`"
    opening, closing = escape_word_format[0], escape_word_format[-1]
    return f"{opening}{identifier.replace(closing, closing * 2)}{closing}"


def _redact(text: str, password: str | None) -> str:
    if not password:
        return text
    for form in {password, quote(password, safe=""), quote_plus(password)}:
        text = text.replace(form, "***")
    return text


def _sqlstate(error: Exception) -> str | None:
    return getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)


def _is_connect_failure(error: Exception) -> bool:
    # DB-API drivers raise their OperationalError, with no SQLSTATE, when the server cannot be reached
    # or refuses the login; errors from a running query carry a SQLSTATE.
    is_operational = any(cls.__name__ == "OperationalError" for cls in type(error).__mro__)
    return is_operational and _sqlstate(error) is None


def _get_sql_hook(conn_id: str):
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise SourceCountError(f"source connection {conn_id!r} is not defined in Airflow") from None
    try:
        hook = conn.get_hook()
    except AirflowException as error:
        raise SourceCountError(
            f"source connection {conn_id!r} has type {conn.conn_type!r}, for which no hook is installed "
            f"({_redact(str(error), conn.password)})"
        ) from None
    if not isinstance(hook, DbApiHook):
        raise SourceCountError(
            f"source connection {conn_id!r} has type {conn.conn_type!r}, which is not a SQL database "
            f"({type(hook).__name__} is not a DbApiHook)"
        )
    return hook, conn.conn_type, conn.password


def count_source_rows(conn_id: str, tables: list[str]) -> dict[str, int]:
    """Return ``{"schema.table": row count}`` from one ``SELECT COUNT(*)`` per table on ``conn_id``."""
    names = {table: _split_table(table) for table in tables}
    hook, conn_type, password = _get_sql_hook(conn_id)
    counts: dict[str, int] = {}
    for table, (schema, name) in names.items():
        quoted = ".".join(_quote(part, conn_type, hook.escape_word_format) for part in (schema, name))
        sql = f"SELECT COUNT(*) FROM {quoted}"
        started = time.monotonic()
        try:
            row = hook.get_first(sql)
        except Exception as error:
            detail = _redact(str(error).strip(), password)
            if _is_connect_failure(error):
                message = f"could not connect to the source database of connection {conn_id!r}: {detail}"
            elif _sqlstate(error) in _MISSING_TABLE_SQLSTATES:
                message = f"source table {table!r} does not exist in the database of connection {conn_id!r}"
            else:
                message = f"counting rows of {table!r} on connection {conn_id!r} failed: {detail}"
            # ``from None``: the driver's own exception is not chained, so nothing it holds reaches the logs.
            raise SourceCountError(message) from None
        counts[table] = int(row[0])
        log.info(
            "source %s on %s: %d rows, counted in %.2fs", table, conn_id, counts[table], time.monotonic() - started
        )
    return counts
