from __future__ import annotations

import json

import pytest

from finetune_pipeline.aws.hooks.dms import DmsResourceHook

ROLE_ARN = "arn:aws:iam::123456789012:role/finetune-dms-s3"


@pytest.fixture
def hook(aws_conn) -> DmsResourceHook:
    return DmsResourceHook(aws_conn_id=aws_conn)


def test_is_the_provider_hook_with_botocore_waiters(hook):
    assert hook.client_type == "dms"
    assert hook.get_waiter("replication_task_ready").name == "ReplicationTaskReady"
    assert hook.get_waiter("replication_task_running").name == "ReplicationTaskRunning"
    assert hook.get_waiter("replication_instance_available").name == "ReplicationInstanceAvailable"


def test_replication_instance_calls(hook, unique):
    identifier = unique("ri")
    assert hook.find_replication_instance(identifier) is None  # AWS answers ResourceNotFoundFault
    created = hook.create_replication_instance(
        ReplicationInstanceIdentifier=identifier,
        ReplicationInstanceClass="dms.t3.medium",
        AllocatedStorage=50,
    )
    found = hook.find_replication_instance(identifier)
    assert found["ReplicationInstanceArn"] == created["ReplicationInstanceArn"]
    assert found["ReplicationInstanceStatus"] == "creating"


def test_endpoint_calls_never_return_the_password(hook, unique):
    identifier = unique("src")
    assert hook.find_endpoint(identifier) is None
    created = hook.create_endpoint(
        EndpointIdentifier=identifier,
        EndpointType="source",
        EngineName="postgres",
        Username="u",
        Password="hook-secret",
        ServerName="db.internal",
        Port=5432,
        DatabaseName="appdb",
    )
    found = hook.find_endpoint(identifier)
    assert found["EndpointArn"] == created["EndpointArn"]
    assert "hook-secret" not in repr(found) and "Password" not in found


def test_replication_task_calls(hook, unique):
    instance = hook.create_replication_instance(
        ReplicationInstanceIdentifier=unique("ri"), ReplicationInstanceClass="dms.t3.medium"
    )["ReplicationInstanceArn"]
    source = hook.create_endpoint(
        EndpointIdentifier=unique("s"), EndpointType="source", EngineName="postgres"
    )
    target = hook.create_endpoint(
        EndpointIdentifier=unique("t"),
        EndpointType="target",
        EngineName="s3",
        S3Settings={"BucketName": "b", "ServiceAccessRoleArn": ROLE_ARN},
    )
    identifier = unique("task")
    assert hook.find_replication_task(identifier) is None
    assert hook.describe_replication_task(f"arn:aws:dms:us-east-1:123456789012:task:{identifier}") is None
    mappings = {
        "rules": [
            {
                "rule-type": "selection",
                "rule-id": "1",
                "rule-name": "all",
                "rule-action": "include",
                "object-locator": {"schema-name": "public", "table-name": "t"},
            }
        ]
    }
    arn = hook.create_replication_task_nowait(
        identifier, source["EndpointArn"], target["EndpointArn"], instance, "cdc", mappings
    )
    task = hook.find_replication_task(identifier, without_settings=False)
    assert (task["ReplicationTaskArn"], task["Status"], task["MigrationType"]) == (arn, "creating", "cdc")
    assert json.loads(task["TableMappings"]) == mappings
    assert hook.describe_replication_task(arn)["ReplicationTaskIdentifier"] == identifier


def test_table_statistics_of_a_task(hook, unique):
    target = hook.create_endpoint(
        EndpointIdentifier=unique("t"),
        EndpointType="target",
        EngineName="s3",
        S3Settings={"BucketName": "b", "ServiceAccessRoleArn": ROLE_ARN},
    )
    source = hook.create_endpoint(EndpointIdentifier=unique("s"), EndpointType="source", EngineName="postgres")
    instance = hook.create_replication_instance(
        ReplicationInstanceIdentifier=unique("ri"), ReplicationInstanceClass="dms.t3.medium"
    )["ReplicationInstanceArn"]
    arn = hook.create_replication_task_nowait(
        unique("task"), source["EndpointArn"], target["EndpointArn"], instance, "cdc", {"rules": []}
    )
    assert hook.table_statistics(arn) == []  # a task that never ran has captured nothing
    with pytest.raises(hook.conn.exceptions.ResourceNotFoundFault):
        hook.table_statistics(arn.replace(":task:", ":task:x"))
