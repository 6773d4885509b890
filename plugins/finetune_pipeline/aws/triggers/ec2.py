"""Trigger that waits for EC2 instances to be running."""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook
from airflow.providers.amazon.aws.triggers.base import AwsBaseWaiterTrigger


class Ec2InstancesRunningTrigger(AwsBaseWaiterTrigger):
    """
    Fire when all ``instance_ids`` are ``running`` (botocore waiter ``instance_running``).

    ``shutting-down``, ``terminated`` or ``stopping`` end the wait with an error event.

    :param instance_ids: The instances to wait for.
    """

    # Not the provider's EC2StateSensorTrigger: it watches one instance, has no failure state (a terminated
    # instance keeps it polling) and no attempt limit, while a launch here may start several instances.
    aws_hook_class = EC2Hook

    def __init__(
        self,
        *,
        instance_ids: list[str],
        waiter_delay: float = 15,
        waiter_max_attempts: int = 40,
        **connection: Any,
    ) -> None:
        super().__init__(
            serialized_fields={"instance_ids": list(instance_ids)},
            waiter_name="instance_running",
            waiter_args={"InstanceIds": list(instance_ids)},
            failure_message=f"EC2 instances {', '.join(instance_ids)} did not all start",
            status_message=f"EC2 instances {', '.join(instance_ids)} are",
            status_queries=["Reservations[].Instances[].[InstanceId, State.Name]"],
            return_key="instance_ids",
            return_value=list(instance_ids),
            waiter_delay=waiter_delay,
            waiter_max_attempts=waiter_max_attempts,
            **connection,
        )

    @property
    def _hook_parameters(self) -> dict[str, Any]:
        return {**super()._hook_parameters, "api_type": "client_type"}
