"""StartReplicationTask for a PostgreSQL source refuses what DMS refuses, each with a clear error; a source it
cannot reach starts, then fails with the connection error as its LastFailureMessage."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from botocore.exceptions import ClientError
from replication_helpers import wait_for

TABLES = ("public.items",)


@pytest.fixture
def items(source):
    source.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")


def _refused(task, **params) -> ClientError:
    with pytest.raises(ClientError) as error:
        task.start(run=False, **params)
    assert task.status() == "ready"  # nothing started
    return error.value


def _code(error: ClientError) -> str:
    return error.response["Error"]["Code"]


def test_a_missing_slot_is_refused(replication, items):
    task = replication(tables=TABLES, postgres={"SlotName": "no_such_slot"})
    error = _refused(task, CdcStartPosition="0/1000000")
    assert _code(error) == "InvalidResourceStateFault"
    assert "Replication slot no_such_slot does not exist" in str(error)
    assert "pg_create_logical_replication_slot('no_such_slot', 'test_decoding')" in str(error)


def test_a_slot_made_with_another_plugin_is_refused(replication, source, items):
    lsn = source.create_slot("pgoutput_slot", plugin="pgoutput")
    task = replication(tables=TABLES, postgres={"SlotName": "pgoutput_slot", "PluginName": "test-decoding"})
    error = _refused(task, CdcStartPosition=lsn)
    assert _code(error) == "InvalidResourceStateFault"
    assert "created with plugin pgoutput; DMS reads only slots made with test_decoding or pglogical" in str(error)


def test_a_slot_of_another_plugin_than_plugin_name_says_is_refused(replication, source, items):
    lsn = source.create_slot("td_slot")
    task = replication(tables=TABLES, postgres={"SlotName": "td_slot", "PluginName": "pglogical"})
    error = _refused(task, CdcStartPosition=lsn)
    assert _code(error) == "InvalidResourceStateFault"
    assert "created with plugin test_decoding, but the endpoint's PluginName is pglogical" in str(error)


def test_an_active_slot_is_refused(replication, source, items):
    with source.connect() as holder:
        # A temporary slot is active for as long as the session that made it lives.
        lsn = holder.execute(
            "SELECT lsn::text FROM pg_create_logical_replication_slot('busy_slot', 'test_decoding', true)"
        ).fetchone()[0]
        task = replication(tables=TABLES, postgres={"SlotName": "busy_slot"})
        error = _refused(task, CdcStartPosition=lsn)
    assert _code(error) == "InvalidResourceStateFault"
    assert "Replication slot busy_slot is active (PID" in str(error)


def test_a_slot_another_running_task_reads_is_refused(replication, source, items):
    lsn = source.create_slot("shared_slot")
    first = replication(tables=TABLES, postgres={"SlotName": "shared_slot"})
    first.start(CdcStartPosition=lsn)
    second = replication(tables=TABLES, postgres={"SlotName": "shared_slot"})
    error = _refused(second, CdcStartPosition=lsn)
    assert _code(error) == "InvalidResourceStateFault"
    assert "in use by running replication task" in str(error)


@pytest.mark.parametrize(
    ("position", "message"),
    [
        ("2026-01-31T12:00:00", "is a time. PostgreSQL as a source doesn't support a custom CDC start time"),
        ("2026-01-31", "is a time"),
        ("mysql-bin-changelog.000024:373", "is not a PostgreSQL LSN"),
        ("0/XYZ", "is not a PostgreSQL LSN"),
        ("checkpoint:V1#1#nonsense", "is not a checkpoint"),
    ],
)
def test_a_start_position_that_is_not_an_lsn_is_refused(replication, source, items, position, message):
    source.create_slot("slot_a")
    task = replication(tables=TABLES, postgres={"SlotName": "slot_a"})
    error = _refused(task, CdcStartPosition=position)
    assert _code(error) == "InvalidParameterValueException"
    assert message in str(error)


def test_a_cdc_start_time_is_refused_for_postgresql(replication, source, items):
    source.create_slot("slot_t")
    task = replication(tables=TABLES, postgres={"SlotName": "slot_t"})
    error = _refused(task, CdcStartTime=datetime(2026, 1, 31, 12, tzinfo=UTC))
    assert _code(error) == "InvalidParameterValueException"
    assert "PostgreSQL as a source doesn't support a custom CDC start time" in str(error)


def test_a_slot_without_a_start_position_is_refused(replication, source, items):
    source.create_slot("slot_np")
    task = replication(tables=TABLES, postgres={"SlotName": "slot_np"})
    error = _refused(task)
    assert _code(error) == "InvalidParameterValueException"
    assert "names slot slot_np, but the task has no CdcStartPosition" in str(error)


def test_a_start_position_without_a_slot_is_refused(replication, source, items):
    lsn = source.create_slot("unused")
    task = replication(tables=TABLES)
    error = _refused(task, CdcStartPosition=lsn)
    assert _code(error) == "InvalidParameterValueException"
    assert "needs a logical replication slot created beforehand: set PostgreSQLSettings.SlotName" in str(error)


def test_resume_processing_of_a_task_that_never_ran_is_refused(replication, source, items):
    lsn = source.create_slot("slot_r")
    task = replication(tables=TABLES, postgres={"SlotName": "slot_r"})
    with pytest.raises(ClientError) as error:
        task.start("resume-processing", run=False, CdcStartPosition=lsn)
    assert _code(error.value) == "InvalidResourceStateFault"
    assert "has never run: resume-processing is only available for previously executed tasks" in str(error.value)


def test_the_position_given_at_creation_is_where_the_task_starts(replication, source, items, dms):
    lsn = source.create_slot("slot_c")
    task = replication(tables=TABLES, postgres={"SlotName": "slot_c"})
    dms.modify_replication_task(ReplicationTaskArn=task.arn, CdcStartPosition=lsn)
    task.advance(task.timing["task_modifying"])
    wait_for(lambda: task.status() == "ready", what="the modification")
    task.start()
    assert task.describe()["CdcStartPosition"] == lsn


def test_an_unreachable_source_starts_then_fails_with_the_connection_error(replication, source, items):
    free_port = _free_port()
    endpoint = {**source.endpoint(), "Port": free_port}
    task = replication(tables=TABLES, source_endpoint=endpoint)
    task.start(run=False)
    task.advance(task.timing["task_starting"])
    wait_for(lambda: task.status() == "failed", what="the task to fail")
    described = task.describe()
    assert described["StopReason"] == "Stop Reason FATAL_ERROR"
    assert f"Cannot connect to the source endpoint's database {source.name} at 127.0.0.1:{free_port}" in (
        described["LastFailureMessage"]
    )
    task.advance(1)
    assert task.status() == "failed"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
