"""Trigger that waits for one SSM Run Command invocation to succeed."""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.triggers.base import AwsBaseWaiterTrigger

from finetune_pipeline.aws.hooks.ssm import SsmCommandHook


class SsmCommandInvocationSucceededTrigger(AwsBaseWaiterTrigger):
    """
    Fire when the command's invocation on ``instance_id`` is ``Success`` (``GetCommandInvocation``).

    Uses botocore's ``command_executed`` waiter: ``Failed``, ``Cancelled``, ``TimedOut`` or ``Cancelling``
    end the wait with an error event, and ``InvocationDoesNotExist`` (the invocation is not listed yet,
    right after ``SendCommand``) is retried.

    :param command_id: The command ID.
    :param instance_id: The target the command was sent to.
    """

    # Not the provider's SsmRunCommandTrigger: it calls ListCommandInvocations once and reports success
    # when that list is empty, which it can be right after SendCommand (aws/aws-cli#3546).
    aws_hook_class = SsmCommandHook

    def __init__(
        self,
        *,
        command_id: str,
        instance_id: str,
        waiter_delay: float = 15,
        waiter_max_attempts: int = 120,
        **connection: Any,
    ) -> None:
        super().__init__(
            serialized_fields={"command_id": command_id, "instance_id": instance_id},
            waiter_name="command_executed",
            waiter_args={"CommandId": command_id, "InstanceId": instance_id},
            failure_message=f"SSM command {command_id} on {instance_id} did not succeed",
            status_message=f"SSM command {command_id} on {instance_id} is",
            status_queries=["Status", "StatusDetails", "ResponseCode", "StandardErrorContent"],
            return_key="command_id",
            return_value=command_id,
            waiter_delay=waiter_delay,
            waiter_max_attempts=waiter_max_attempts,
            **connection,
        )
