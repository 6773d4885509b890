from __future__ import annotations

import json

import pytest

from finetune_pipeline.aws.hooks.dms import DmsResourceHook
from finetune_pipeline.aws.triggers.dms import DmsReplicationInstanceAvailableTrigger, DmsTaskStatusTrigger


@pytest.fixture
def dms(aws_conn, boto_client):
    return boto_client("dms")


@pytest.fixture
def task_arn(dms, unique) -> str:
    instance = dms.create_replication_instance(
        ReplicationInstanceIdentifier=unique("ri"), ReplicationInstanceClass="dms.t3.medium"
    )["ReplicationInstance"]["ReplicationInstanceArn"]
    source = dms.create_endpoint(EndpointIdentifier=unique("s"), EndpointType="source", EngineName="postgres")
    target = dms.create_endpoint(EndpointIdentifier=unique("t"), EndpointType="target", EngineName="s3")
    rules = {
        "rules": [
            {
                "rule-type": "selection",
                "rule-id": "1",
                "rule-name": "r",
                "rule-action": "include",
                "object-locator": {"schema-name": "public", "table-name": "t"},
            }
        ]
    }
    return dms.create_replication_task(
        ReplicationTaskIdentifier=unique("task"),
        SourceEndpointArn=source["Endpoint"]["EndpointArn"],
        TargetEndpointArn=target["Endpoint"]["EndpointArn"],
        ReplicationInstanceArn=instance,
        MigrationType="cdc",
        TableMappings=json.dumps(rules),
    )["ReplicationTask"]["ReplicationTaskArn"]


def test_task_trigger_serialize_round_trip():
    trigger = DmsTaskStatusTrigger(
        replication_task_arn="arn:task",
        target_status="running",
        waiter_delay=3,
        waiter_max_attempts=4,
        botocore_config={"retries": {"max_attempts": 2}},
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "finetune_pipeline.aws.triggers.dms.DmsTaskStatusTrigger"
    assert kwargs == {
        "replication_task_arn": "arn:task",
        "target_status": "running",
        "waiter_delay": 3,
        "waiter_max_attempts": 4,
        "aws_conn_id": "aws_default",
        "botocore_config": {"retries": {"max_attempts": 2}},
    }
    rebuilt = DmsTaskStatusTrigger(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert rebuilt.waiter_name == "replication_task_running"
    assert isinstance(rebuilt.hook(), DmsResourceHook)


def test_task_trigger_rejects_other_statuses():
    with pytest.raises(ValueError, match="target_status must be one of"):
        DmsTaskStatusTrigger(replication_task_arn="arn:task", target_status="failed")


def test_instance_trigger_serialize_round_trip():
    trigger = DmsReplicationInstanceAvailableTrigger(replication_instance_arn="arn:ri", waiter_delay=1)
    classpath, kwargs = trigger.serialize()
    assert classpath == "finetune_pipeline.aws.triggers.dms.DmsReplicationInstanceAvailableTrigger"
    assert DmsReplicationInstanceAvailableTrigger(**kwargs).serialize() == (classpath, kwargs)


def test_task_trigger_fires_when_ready(task_arn, advance_clock, run_trigger):
    trigger = DmsTaskStatusTrigger(
        replication_task_arn=task_arn, target_status="ready", waiter_delay=0.01, waiter_max_attempts=2000
    )
    event = run_trigger(trigger, during=lambda: advance_clock(120))
    assert event == {"status": "success", "replication_task_arn": task_arn}


def test_task_trigger_fires_when_running(dms, task_arn, advance_clock, run_trigger):
    advance_clock(120)
    dms.start_replication_task(
        ReplicationTaskArn=task_arn,
        StartReplicationTaskType="start-replication",
        CdcStartPosition="0/1AF7CB8",
    )
    trigger = DmsTaskStatusTrigger(
        replication_task_arn=task_arn, target_status="running", waiter_delay=0.01, waiter_max_attempts=2000
    )
    assert run_trigger(trigger, during=lambda: advance_clock(120))["status"] == "success"


def test_task_trigger_error_event_names_the_task(task_arn, advance_clock, run_trigger):
    advance_clock(120)  # ready: a task waiting to run that was never started fails botocore's running waiter
    trigger = DmsTaskStatusTrigger(
        replication_task_arn=task_arn, target_status="running", waiter_delay=0.01, waiter_max_attempts=5
    )
    event = run_trigger(trigger)
    assert event["status"] == "error" and event["replication_task_arn"] == task_arn
    assert f"DMS replication task {task_arn} did not become running" in event["message"]


def test_instance_trigger_fires_when_available(dms, unique, advance_clock, run_trigger):
    arn = dms.create_replication_instance(
        ReplicationInstanceIdentifier=unique("ri"), ReplicationInstanceClass="dms.t3.medium"
    )["ReplicationInstance"]["ReplicationInstanceArn"]
    trigger = DmsReplicationInstanceAvailableTrigger(
        replication_instance_arn=arn, waiter_delay=0.01, waiter_max_attempts=2000
    )
    event = run_trigger(trigger, during=lambda: advance_clock(900))
    assert event == {"status": "success", "replication_instance_arn": arn}
