"""count_source_rows against a real PostgreSQL at 127.0.0.1:5432 (CI has one); skipped where none answers."""

from __future__ import annotations

import json
import logging
import socket
import uuid
from urllib.parse import quote, quote_plus

import pytest

from finetune_pipeline.pipeline import source_counts
from finetune_pipeline.pipeline.source_counts import SourceCountError, count_source_rows

PG_HOST, PG_PORT, PG_USER, PG_DATABASE = "127.0.0.1", 5432, "postgres", "test"
# The server trusts local logins, so any password works; this one must never show up in output.
PASSWORD = "pw-never-logged-7c1e"
CONN_ID = "ftp_source"
# Mixed case and an embedded quote: each name only resolves if it is quoted and escaped correctly.
SCHEMA = f"FtpCounts_{uuid.uuid4().hex[:10]}"
ROWS = {"orders": 3, "customers": 5, "Events": 2, "events": 7, 'odd"name': 1}


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@pytest.fixture(scope="session")
def source_schema():
    """A uniquely named schema holding tables with known row counts, dropped after the session."""
    psycopg = pytest.importorskip("psycopg")
    try:
        db = psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_DATABASE, connect_timeout=5, autocommit=True
        )
    except psycopg.OperationalError as error:
        pytest.skip(f"no PostgreSQL reachable at {PG_HOST}:{PG_PORT} (user {PG_USER}, db {PG_DATABASE}): {error}")
    with db:
        db.execute(f"CREATE SCHEMA {_quoted(SCHEMA)}")
        try:
            for table, count in ROWS.items():
                name = f"{_quoted(SCHEMA)}.{_quoted(table)}"
                db.execute(f"CREATE TABLE {name} (id integer PRIMARY KEY)")
                db.execute(f"INSERT INTO {name} SELECT generate_series(1, {count})")
            yield SCHEMA
        finally:
            db.execute(f"DROP SCHEMA {_quoted(SCHEMA)} CASCADE")


def _set_conn(monkeypatch, conn_id: str, **conn) -> str:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return conn_id


@pytest.fixture
def source_conn(source_schema, monkeypatch):
    return _set_conn(
        monkeypatch, CONN_ID, conn_type="postgres", host=PG_HOST, port=PG_PORT, login=PG_USER,
        password=PASSWORD, schema=PG_DATABASE,
    )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_counts_rows_of_each_table(source_conn, caplog):
    caplog.set_level(logging.INFO, logger="finetune_pipeline.pipeline.source_counts")
    tables = [f"{SCHEMA}.orders", f"{SCHEMA}.customers"]

    assert count_source_rows(source_conn, tables) == {tables[0]: 3, tables[1]: 5}
    assert f"source {SCHEMA}.orders on {CONN_ID}: 3 rows, counted in" in caplog.text


def test_names_needing_quotes_are_quoted_not_folded(source_conn):
    tables = [f"{SCHEMA}.Events", f"{SCHEMA}.events", f'{SCHEMA}.odd"name']

    assert count_source_rows(source_conn, tables) == dict(zip(tables, (2, 7, 1), strict=True))


def test_missing_table_is_named(source_conn):
    with pytest.raises(SourceCountError, match=rf"source table '{SCHEMA}.missing' does not exist .* '{CONN_ID}'"):
        count_source_rows(source_conn, [f"{SCHEMA}.orders", f"{SCHEMA}.missing"])


def test_undefined_connection_id():
    with pytest.raises(SourceCountError, match="source connection 'no_such_conn' is not defined in Airflow"):
        count_source_rows("no_such_conn", ["public.orders"])


def test_non_sql_connection_is_refused(monkeypatch):
    conn_id = _set_conn(monkeypatch, "ftp_not_sql", conn_type="aws", login="key", password=PASSWORD)

    with pytest.raises(SourceCountError, match="'ftp_not_sql' has type 'aws', which is not a SQL database"):
        count_source_rows(conn_id, ["public.orders"])


def test_connection_type_without_hook(monkeypatch):
    conn_id = _set_conn(monkeypatch, "ftp_unknown_type", conn_type="nosuchdb", host=PG_HOST, password=PASSWORD)

    with pytest.raises(SourceCountError, match="type 'nosuchdb', for which no hook is installed"):
        count_source_rows(conn_id, ["public.orders"])


def test_table_must_be_schema_qualified():
    with pytest.raises(SourceCountError, match='must be written "schema.table"'):
        count_source_rows("never_looked_up", ["orders"])


def test_password_never_in_errors_or_logs(source_conn, monkeypatch, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    refused = _set_conn(
        monkeypatch, "ftp_refused", conn_type="postgres", host="127.0.0.1", port=_free_port(), login=PG_USER,
        password=PASSWORD, schema=PG_DATABASE,
    )  # fmt: skip
    count_source_rows(source_conn, [f"{SCHEMA}.orders"])
    errors = []
    for conn_id, table in ((source_conn, f"{SCHEMA}.missing"), (refused, f"{SCHEMA}.orders")):
        with pytest.raises(SourceCountError) as caught:
            count_source_rows(conn_id, [table])
        errors.append(caught.value)

    assert "could not connect to the source database of connection 'ftp_refused'" in str(errors[1])
    for error in errors:
        assert error.__cause__ is None
        assert PASSWORD not in str(error)
    # Airflow's hooks log through structlog to the console, which caplog does not see.
    printed = capfd.readouterr()
    assert PASSWORD not in caplog.text + printed.out + printed.err


class _FailingHook:
    """A SQL hook whose driver error quotes the password, as some drivers' connection errors do."""

    escape_word_format = '"{}"'

    def __init__(self, password: str):
        self.password = password

    def get_first(self, sql):
        forms = (self.password, quote(self.password, safe=""), quote_plus(self.password))
        raise RuntimeError("auth failed: " + " / ".join(forms))


def test_a_password_in_a_driver_error_is_redacted(monkeypatch):
    password = "p@ss/w rd+1"
    monkeypatch.setattr(source_counts, "_get_sql_hook", lambda conn_id: (_FailingHook(password), "postgres", password))
    with pytest.raises(SourceCountError) as caught:
        count_source_rows("ftp_source", ["public.orders"])
    message = str(caught.value)
    assert message == "counting rows of 'public.orders' on connection 'ftp_source' failed: auth failed: *** / *** / ***"


def test_mysql_names_are_quoted_with_backticks():
    assert source_counts._quote("odd`name", "mysql", '"{}"') == "`odd``name`"
    assert source_counts._quote('odd"name', "postgres", '"{}"') == '"odd""name"'
    assert source_counts._quote("odd]name", "mssql", "[{}]") == "[odd]]name]"
