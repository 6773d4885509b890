"""The PostgreSQL source endpoint as localaws's DMS uses it: credentials from Secrets Manager, passwords never
returned, the WAL heartbeat, LOB lookups, and replication threads that end with their task or the server."""

from __future__ import annotations

import json
import secrets
import threading
import uuid

import psycopg
from replication_helpers import make_task, wait_for

from finetune_pipeline.datasets.contracts import TableContract
from finetune_pipeline.datasets.dms_format import OP
from localaws import control
from localaws.server import LocalAWS

NOTES = TableContract.model_validate(
    {
        "table": "public.notes",
        "primary_key": ["id"],
        "columns": [
            {"name": "id", "type": "int32", "nullable": False},
            {"name": "title", "type": "string"},
            {"name": "body", "type": "string"},
        ],
    }
)


def test_credentials_come_from_the_secret_the_endpoint_names(replication, source, boto_client):
    source.execute("CREATE TABLE notes (id int PRIMARY KEY, title text, body text)")
    lsn = source.create_slot("secret_slot")
    name = f"dms/source/{uuid.uuid4().hex[:8]}"
    secret = {"username": "replicator", "password": source.server.password, "host": source.server.host,
              "port": source.server.port}  # fmt: skip
    arn = boto_client("secretsmanager").create_secret(Name=name, SecretString=json.dumps(secret))["ARN"]
    endpoint = {
        "EngineName": "postgres",
        "DatabaseName": source.name,
        "PostgreSQLSettings": {
            "SecretsManagerSecretId": arn,
            "SecretsManagerAccessRoleArn": "arn:aws:iam::123456789012:role/dms-secrets",
            "SlotName": "secret_slot",
            "PluginName": "test-decoding",
        },
    }
    task = replication(tables=("public.notes",), source_endpoint=endpoint)
    task.start(CdcStartPosition=lsn)
    source.execute("INSERT INTO notes VALUES (1, 'a', 'b')")
    task.flush()
    wait_for(lambda: task.events(NOTES).num_rows == 1, what="the change")


def test_describe_endpoints_never_returns_a_password(dms, source):
    password = secrets.token_urlsafe(12)
    created = dms.create_endpoint(
        EndpointIdentifier=f"pw-{uuid.uuid4().hex[:8]}", EndpointType="source", EngineName="postgres",
        ServerName="db.internal", Port=5432, DatabaseName="appdb", Username="u", Password=password,
        PostgreSQLSettings={"Password": password, "SlotName": "s"},
    )["Endpoint"]  # fmt: skip
    described = dms.describe_endpoints(Filters=[{"Name": "endpoint-arn", "Values": [created["EndpointArn"]]}])
    for answer in (created, *described["Endpoints"]):
        assert password not in json.dumps(answer, default=str)
        assert answer["PostgreSQLSettings"] == {"SlotName": "s"}


def test_the_heartbeat_keeps_an_idle_slot_moving(replication, source):
    source.execute("CREATE TABLE notes (id int PRIMARY KEY, title text, body text)")
    lsn = source.create_slot("idle_slot")
    task = replication(tables=("public.notes",), postgres={"SlotName": "idle_slot", "HeartbeatEnable": True,
                                                           "HeartbeatFrequency": 1})  # fmt: skip
    task.start(CdcStartPosition=lsn)
    with source.connect() as conn:
        wait_for(lambda: conn.execute("SELECT to_regclass('public.awsdms_heartbeat')").fetchone()[0],
                 what="the heartbeat table")  # fmt: skip
    task.advance(61)  # the next heartbeat is due: a write the slot decodes and acknowledges
    wait_for(lambda: source.slot("idle_slot")["confirmed_flush_lsn"] != lsn, what="the idle slot to move")
    assert task.files() == []  # the heartbeat table itself is never replicated


def test_an_unchanged_toasted_value_is_looked_up_in_the_source(replication, source):
    source.execute("CREATE TABLE notes (id int PRIMARY KEY, title text, body text)")
    lsn = source.create_slot("toast_slot")
    task = replication(tables=("public.notes",), postgres={"SlotName": "toast_slot"})
    task.start(CdcStartPosition=lsn)
    body = secrets.token_hex(8000)  # incompressible: stored out of line, so an UPDATE leaves it out of the WAL
    with source.connect() as conn:
        conn.execute("INSERT INTO notes VALUES (1, 'a', %s)", (body,))
        conn.execute("UPDATE notes SET title = 'b' WHERE id = 1")
    task.flush()
    events = wait_for(lambda: (t := task.events(NOTES)).num_rows == 2 and t.to_pylist(), what="both changes")
    assert [(e[OP], e["title"], e["body"] == body) for e in events] == [("I", "a", True), ("U", "b", True)]


def test_a_deleted_task_leaves_no_replication_thread(replication, source, dms):
    source.execute("CREATE TABLE notes (id int PRIMARY KEY, title text, body text)")
    lsn = source.create_slot("gone_slot")
    task = replication(tables=("public.notes",), postgres={"SlotName": "gone_slot"})
    task.start(CdcStartPosition=lsn)
    assert _threads(task)
    task.stop()
    dms.delete_replication_task(ReplicationTaskArn=task.arn)
    wait_for(lambda: not _threads(task), what="the thread to end")


def _threads(task) -> list[threading.Thread]:
    task_id = task.arn.rsplit(":", 1)[-1]
    return [t for t in threading.enumerate() if t.name == f"localaws-dms-{task_id}" and t.is_alive()]


def test_stopping_the_server_ends_its_replication_threads(source, dms_timing):
    source.execute("CREATE TABLE notes (id int PRIMARY KEY, title text, body text)")
    lsn = source.create_slot("server_slot")
    server = LocalAWS(port=0).start()
    try:
        import boto3

        control.set_clock_speed(server.endpoint_url, 0)
        dms = boto3.client("dms", endpoint_url=server.endpoint_url, region_name="us-east-1")
        s3 = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1")

        class _Server:
            endpoint_url = server.endpoint_url

        task = make_task(dms, s3, _Server, dms_timing, source, tables=("public.notes",),
                         postgres={"SlotName": "server_slot"})  # fmt: skip
        task.start(CdcStartPosition=lsn)
        assert _threads(task)
    finally:
        server.stop()
    assert not _threads(task)

    def temporary_slots() -> int:
        with psycopg.connect(source.server.url(database=source.name)) as conn:
            return conn.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE temporary AND database = current_database()"
            ).fetchone()[0]

    wait_for(lambda: temporary_slots() == 0, what="the decoding session to go with the thread")


def test_a_restart_from_the_state_file_carries_on_replicating(source, dms_timing, tmp_path):
    """localaws saved and restored (--state-file): a running task starts replicating again from its checkpoint."""
    import boto3

    source.execute("CREATE TABLE notes (id int PRIMARY KEY, title text, body text)")
    lsn = source.create_slot("kept_slot")
    state = tmp_path / "state.pickle"

    class _Server:
        endpoint_url = ""

    server = LocalAWS(port=0, state_file=state, state_interval=0).start()
    port = server.port
    try:
        control.set_clock_speed(server.endpoint_url, 0)
        _Server.endpoint_url = server.endpoint_url
        clients = {name: boto3.client(name, endpoint_url=server.endpoint_url, region_name="us-east-1")
                   for name in ("dms", "s3")}  # fmt: skip
        task = make_task(clients["dms"], clients["s3"], _Server, dms_timing, source, tables=("public.notes",),
                         postgres={"SlotName": "kept_slot"})  # fmt: skip
        task.start(CdcStartPosition=lsn)
        source.execute("INSERT INTO notes VALUES (1, 'before', 'the restart')")
        task.flush()
        wait_for(lambda: task.events(NOTES).num_rows == 1, what="the first change")
        source.execute("INSERT INTO notes VALUES (2, 'buffered', 'when localaws stops')")
        task.caught_up()
    finally:
        server.stop()
    source.execute("INSERT INTO notes VALUES (3, 'while', 'localaws is down')")

    again = LocalAWS(port=port, state_file=state, state_interval=0).start()
    try:
        control.set_clock_speed(again.endpoint_url, 0)
        assert task.status() == "running"
        task.flush()
        ids = wait_for(lambda: (e := task.events(NOTES)).num_rows == 3 and e.column("id").to_pylist(),
                       what="the changes after the restart")  # fmt: skip
        assert ids == [1, 2, 3]
    finally:
        again.stop()
