"""Triggers that wait on AWS DMS with botocore's built-in DMS waiters."""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.triggers.base import AwsBaseWaiterTrigger

from finetune_pipeline.aws.hooks.dms import DmsResourceHook


class DmsTaskStatusTrigger(AwsBaseWaiterTrigger):
    """
    Fire when a replication task is ``ready``, ``running`` or ``stopped`` (waiters ``replication_task_<status>``).

    botocore's waiters fail at once on states that cannot lead there (e.g. ``failed``, ``stopped``).

    :param replication_task_arn: The replication task ARN.
    :param target_status: ``ready`` (created), ``running`` (started) or ``stopped``.
    """

    aws_hook_class = DmsResourceHook
    TARGET_STATUSES = ("ready", "running", "stopped")

    def __init__(
        self,
        *,
        replication_task_arn: str,
        target_status: str,
        waiter_delay: float = 30,
        waiter_max_attempts: int = 60,
        **connection: Any,
    ) -> None:
        if target_status not in self.TARGET_STATUSES:
            raise ValueError(f"target_status must be one of {self.TARGET_STATUSES}, got {target_status!r}.")
        super().__init__(
            serialized_fields={"replication_task_arn": replication_task_arn, "target_status": target_status},
            waiter_name=f"replication_task_{target_status}",
            waiter_args={
                "Filters": [{"Name": "replication-task-arn", "Values": [replication_task_arn]}],
                "WithoutSettings": True,
            },
            failure_message=f"DMS replication task {replication_task_arn} did not become {target_status}",
            status_message=f"DMS replication task {replication_task_arn} (waiting for {target_status}) is",
            status_queries=["ReplicationTasks[0].Status", "ReplicationTasks[0].StopReason"],
            return_key="replication_task_arn",
            return_value=replication_task_arn,
            waiter_delay=waiter_delay,
            waiter_max_attempts=waiter_max_attempts,
            **connection,
        )


class DmsReplicationInstanceAvailableTrigger(AwsBaseWaiterTrigger):
    """
    Fire when a replication instance is ``available`` (waiter ``replication_instance_available``).

    :param replication_instance_arn: The replication instance ARN.
    """

    aws_hook_class = DmsResourceHook

    def __init__(
        self,
        *,
        replication_instance_arn: str,
        waiter_delay: float = 60,
        waiter_max_attempts: int = 60,
        **connection: Any,
    ) -> None:
        super().__init__(
            serialized_fields={"replication_instance_arn": replication_instance_arn},
            waiter_name="replication_instance_available",
            waiter_args={
                "Filters": [{"Name": "replication-instance-arn", "Values": [replication_instance_arn]}]
            },
            failure_message=f"DMS replication instance {replication_instance_arn} did not become available",
            status_message=f"DMS replication instance {replication_instance_arn} is",
            status_queries=["ReplicationInstances[0].ReplicationInstanceStatus"],
            return_key="replication_instance_arn",
            return_value=replication_instance_arn,
            waiter_delay=waiter_delay,
            waiter_max_attempts=waiter_max_attempts,
            **connection,
        )
