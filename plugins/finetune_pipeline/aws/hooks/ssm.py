"""AWS Systems Manager Run Command: the provider's ``SsmHook`` plus sending and listing commands."""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.hooks.ssm import SsmHook

from finetune_pipeline.aws.utils.retries import SingleAttemptClientMixin


class SsmCommandHook(SingleAttemptClientMixin, SsmHook):
    """
    The provider's ``SsmHook`` (``boto3.client("ssm")``) with ``SendCommand``, ``ListCommands`` and
    ``CancelCommand``.

    ``SendCommand`` takes no client token, so it is sent once, without botocore's retries: a retry after a
    lost answer would run the command twice. Callers look for the command (by its comment) before sending
    it again (``finetune_pipeline.aws.utils.retries.create_once``).

    .. seealso::
        https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/ssm.html
    """

    # Command statuses after which the command did nothing more (AWS-level or script failure).
    FAILED_STATES = frozenset({"Failed", "Cancelled", "TimedOut", "Cancelling"})
    SUCCESS_STATE = "Success"
    # Commands that can still be cancelled (CancelCommand stops what has not finished).
    UNFINISHED_STATES = frozenset({"Pending", "InProgress", "Delayed"})

    def send_command(self, **kwargs: Any) -> dict[str, Any]:
        """
        Send a command from ``SendCommand`` arguments; return the ``Command``. Sent once, without
        botocore's retries.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/ssm/client/send_command.html
        """
        return self.single_attempt_conn.send_command(**kwargs)["Command"]

    def cancel_command(self, command_id: str) -> None:
        """
        Cancel a command that has not finished, on all of its targets.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/ssm/client/cancel_command.html
        """
        self.conn.cancel_command(CommandId=command_id)

    def list_commands(self, instance_id: str | None = None) -> list[dict[str, Any]]:
        """
        List the commands sent in the last 30 days (all pages), optionally only those for ``instance_id``.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/ssm/client/list_commands.html
        """
        arguments = {"InstanceId": instance_id} if instance_id else {}
        paginator = self.conn.get_paginator("list_commands")
        return [command for page in paginator.paginate(**arguments) for command in page.get("Commands", [])]
