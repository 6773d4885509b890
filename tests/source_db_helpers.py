"""A database of its own in the session's PostgreSQL source server (tests/conftest.py: ``source_db``, ``source``),
and polling in real time, for the tests that replicate from it (localaws's DMS, the sync's reconciliation)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> object:
    """Poll ``predicate`` (real time) until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class SourceDb:
    """One database of its own in the session's PostgreSQL server (wal_level=logical)."""

    server: object  # devstack.source_db.SourceDatabase
    name: str

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.server.url(database=self.name), autocommit=True)

    def execute(self, statement: str, params=None) -> None:
        with self.connect() as conn:
            conn.execute(statement, params)

    def create_slot(self, name: str, plugin: str = "test_decoding") -> str:
        """A logical slot made with the SQL function; returns its consistent point (an LSN)."""
        with self.connect() as conn:
            return conn.execute(
                "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, %s)", (name, plugin)
            ).fetchone()[0]

    def slot(self, name: str) -> dict | None:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT confirmed_flush_lsn::text, active, plugin FROM pg_replication_slots WHERE slot_name = %s",
                (name,),
            ).fetchone()
        return None if row is None else {"confirmed_flush_lsn": row[0], "active": row[1], "plugin": row[2]}

    def current_lsn(self) -> int:
        with self.connect() as conn:
            return _lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])

    def decoded_up_to(self, lsn: int) -> bool:
        """Whether the running task's decoding session (its temporary copy of the slot) has read up to ``lsn``."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                "WHERE database = current_database() AND temporary AND slot_name LIKE '%%localaws%%'"
            ).fetchall()
        return bool(rows) and all(position is not None and _lsn(position) >= lsn for (position,) in rows)

    def endpoint(self, **postgres_settings) -> dict:
        """CreateEndpoint arguments of a source endpoint on this database."""
        arguments = {
            "EngineName": "postgres",
            "ServerName": self.server.host,
            "Port": self.server.port,
            "DatabaseName": self.name,
            "Username": "replicator",
            "Password": self.server.password,
        }
        if postgres_settings:
            arguments["PostgreSQLSettings"] = postgres_settings
        return arguments


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)
