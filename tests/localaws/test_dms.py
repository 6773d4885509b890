"""DMS on localaws: moto's resources moving through the real statuses on the virtual clock, checked with
botocore's own waiters (tiny delays, so they poll in milliseconds)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from botocore.exceptions import ClientError, WaiterError

FAST = {"Delay": 0.01, "MaxAttempts": 3}


def _by_arn(arn: str) -> list[dict]:
    return [{"Name": "replication-task-arn", "Values": [arn]}]


def _task(dms, arn: str) -> dict:
    return dms.describe_replication_tasks(Filters=_by_arn(arn))["ReplicationTasks"][0]


def test_endpoints_are_active(dms, make_task):
    arn = make_task()
    task = _task(dms, arn)
    for endpoint_arn in (task["SourceEndpointArn"], task["TargetEndpointArn"]):
        endpoints = dms.describe_endpoints(Filters=[{"Name": "endpoint-arn", "Values": [endpoint_arn]}])
        assert [endpoint["Status"] for endpoint in endpoints["Endpoints"]] == ["active"]


def test_replication_instance_becomes_available_on_the_clock(dms, make_task, advance, dms_timing):
    task = _task(dms, make_task())
    by_arn = [{"Name": "replication-instance-arn", "Values": [task["ReplicationInstanceArn"]]}]
    waiter = dms.get_waiter("replication_instance_available")
    with pytest.raises(WaiterError):
        waiter.wait(Filters=by_arn, WaiterConfig=FAST)
    advance(dms_timing["instance_creating"])
    waiter.wait(Filters=by_arn, WaiterConfig=FAST)


def test_task_is_creating_then_ready(dms, make_task, advance, dms_timing):
    arn = make_task()
    assert _task(dms, arn)["Status"] == "creating"
    waiter = dms.get_waiter("replication_task_ready")
    with pytest.raises(WaiterError, match="Max attempts exceeded"):
        waiter.wait(Filters=_by_arn(arn), WaiterConfig=FAST)
    advance(dms_timing["task_creating"])
    waiter.wait(Filters=_by_arn(arn), WaiterConfig=FAST)


def test_cdc_task_starts_runs_and_stops(dms, ready_task, advance, dms_timing):
    arn = ready_task()
    started = dms.start_replication_task(
        ReplicationTaskArn=arn,
        StartReplicationTaskType="start-replication",
        CdcStartPosition="mysql-bin-changelog.000024:373",
    )["ReplicationTask"]
    assert started["Status"] == "starting"
    assert started["CdcStartPosition"] == "mysql-bin-changelog.000024:373"
    running = dms.get_waiter("replication_task_running")
    with pytest.raises(WaiterError):
        running.wait(Filters=_by_arn(arn), WaiterConfig=FAST)
    advance(dms_timing["task_starting"])
    running.wait(Filters=_by_arn(arn), WaiterConfig=FAST)
    task = _task(dms, arn)
    assert task["CdcStartPosition"] == "mysql-bin-changelog.000024:373"
    assert task["RecoveryCheckpoint"].startswith("checkpoint:")
    assert "ReplicationTaskStartDate" in task

    assert dms.stop_replication_task(ReplicationTaskArn=arn)["ReplicationTask"]["Status"] == "stopping"
    stopped = dms.get_waiter("replication_task_stopped")
    with pytest.raises(WaiterError):
        stopped.wait(Filters=_by_arn(arn), WaiterConfig=FAST)
    advance(dms_timing["task_stopping"])
    stopped.wait(Filters=_by_arn(arn), WaiterConfig=FAST)
    assert _task(dms, arn)["StopReason"] == "Stop Reason NORMAL"


def test_restart_from_a_cdc_start_time(dms, ready_task):
    arn = ready_task()
    start_time = datetime(2024, 3, 8, 12, 12, 12, tzinfo=UTC)
    started = dms.start_replication_task(
        ReplicationTaskArn=arn, StartReplicationTaskType="start-replication", CdcStartTime=start_time
    )["ReplicationTask"]
    assert started["CdcStartPosition"] == "2024-03-08T12:12:12"
    with pytest.raises(ClientError, match="InvalidParameterCombination"):
        dms.start_replication_task(
            ReplicationTaskArn=arn,
            StartReplicationTaskType="resume-processing",
            CdcStartTime=start_time,
            CdcStartPosition="checkpoint:x",
        )


def test_full_load_task_stops_by_itself(dms, ready_task, advance, dms_timing):
    arn = ready_task("full-load")
    dms.start_replication_task(ReplicationTaskArn=arn, StartReplicationTaskType="start-replication")
    advance(dms_timing["task_starting"] + dms_timing["full_load_running"])
    dms.get_waiter("replication_task_stopped").wait(Filters=_by_arn(arn), WaiterConfig=FAST)
    assert _task(dms, arn)["StopReason"] == "Stop Reason FULL_LOAD_ONLY_FINISHED"


def test_state_rules_are_enforced(dms, make_task, advance, dms_timing):
    arn = make_task()
    with pytest.raises(dms.exceptions.InvalidResourceStateFault, match="creating"):
        dms.start_replication_task(ReplicationTaskArn=arn, StartReplicationTaskType="start-replication")
    advance(dms_timing["task_creating"])
    with pytest.raises(dms.exceptions.InvalidResourceStateFault, match="ready"):
        dms.stop_replication_task(ReplicationTaskArn=arn)
    dms.start_replication_task(ReplicationTaskArn=arn, StartReplicationTaskType="start-replication")
    advance(dms_timing["task_starting"])
    with pytest.raises(dms.exceptions.InvalidResourceStateFault, match="running"):
        dms.delete_replication_task(ReplicationTaskArn=arn)
    with pytest.raises(dms.exceptions.InvalidResourceStateFault, match="running"):
        dms.modify_replication_task(ReplicationTaskArn=arn, CdcStartPosition="checkpoint:x")
    with pytest.raises(dms.exceptions.ResourceNotFoundFault):
        dms.start_replication_task(
            ReplicationTaskArn=f"{arn}-missing", StartReplicationTaskType="start-replication"
        )


def test_modify_a_stopped_task(dms, ready_task, advance, dms_timing):
    arn = ready_task()
    modified = dms.modify_replication_task(
        ReplicationTaskArn=arn, CdcStartPosition="checkpoint:V1#1#resume", TableMappings='{"rules": [1]}'
    )["ReplicationTask"]
    assert modified["Status"] == "modifying"
    advance(dms_timing["task_modifying"])
    dms.get_waiter("replication_task_ready").wait(Filters=_by_arn(arn), WaiterConfig=FAST)
    task = _task(dms, arn)
    assert task["CdcStartPosition"] == "checkpoint:V1#1#resume"
    assert task["TableMappings"] == '{"rules": [1]}'


def test_deleted_task_satisfies_the_deleted_waiter(dms, ready_task):
    arn = ready_task()
    dms.delete_replication_task(ReplicationTaskArn=arn)
    dms.get_waiter("replication_task_deleted").wait(Filters=_by_arn(arn), WaiterConfig=FAST)
    with pytest.raises(dms.exceptions.ResourceNotFoundFault):
        dms.describe_replication_tasks(Filters=_by_arn(arn))


def test_cdc_start_position_given_at_creation_is_kept(dms, make_task):
    arn = make_task(CdcStartPosition="mysql-bin-changelog.000001:4")
    assert _task(dms, arn)["CdcStartPosition"] == "mysql-bin-changelog.000001:4"
