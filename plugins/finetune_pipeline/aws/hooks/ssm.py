"""AWS Systems Manager Run Command: the provider's ``SsmHook`` plus sending and listing commands."""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.hooks.ssm import SsmHook


class SsmCommandHook(SsmHook):
    """
    The provider's ``SsmHook`` (``boto3.client("ssm")``) with ``SendCommand`` and ``ListCommands``.

    .. seealso::
        https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/ssm.html
    """

    # Command statuses after which the command did nothing more (AWS-level or script failure).
    FAILED_STATES = frozenset({"Failed", "Cancelled", "TimedOut", "Cancelling"})
    SUCCESS_STATE = "Success"

    def send_command(self, **kwargs: Any) -> dict[str, Any]:
        """
        Send a command from ``SendCommand`` arguments; return the ``Command``.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/ssm/client/send_command.html
        """
        return self.conn.send_command(**kwargs)["Command"]

    def list_commands(self, instance_id: str | None = None) -> list[dict[str, Any]]:
        """
        List the commands sent in the last 30 days (all pages), optionally only those for ``instance_id``.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/ssm/client/list_commands.html
        """
        arguments = {"InstanceId": instance_id} if instance_id else {}
        paginator = self.conn.get_paginator("list_commands")
        return [command for page in paginator.paginate(**arguments) for command in page.get("Commands", [])]
