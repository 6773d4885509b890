"""AWS Secrets Manager: the provider's ``SecretsManagerHook`` plus the calls to create a secret idempotently."""

from __future__ import annotations

import json
from typing import Any

from airflow.providers.amazon.aws.hooks.secrets_manager import SecretsManagerHook

from finetune_pipeline.aws.utils.redaction import keep_bodies_out_of_logs

# Calls whose request carries a secret value: their bodies never reach botocore's DEBUG log.
SECRET_BEARING_OPERATIONS = ("CreateSecret", "PutSecretValue", "UpdateSecret")


class SecretsManagerSecretHook(SecretsManagerHook):
    """
    The provider's ``SecretsManagerHook`` (``boto3.client("secretsmanager")``) plus describe and create.

    .. seealso::
        https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/secretsmanager.html
    """

    def describe_secret(self, secret_id: str) -> dict[str, Any] | None:
        """
        The secret's metadata (never its value), or ``None`` if there is no such secret.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/secretsmanager/client/describe_secret.html
        """
        try:
            return self.conn.describe_secret(SecretId=secret_id)
        except self.conn.exceptions.ResourceNotFoundException:
            return None

    def create_secret(
        self, name: str, value: dict[str, Any], kms_key_id: str | None = None, tags: dict[str, str] | None = None
    ) -> str:
        """
        Create a secret holding ``value`` as JSON; return its ARN. The value is never logged, not even by
        botocore at DEBUG.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/secretsmanager/client/create_secret.html
        """
        keep_bodies_out_of_logs(self.conn, *SECRET_BEARING_OPERATIONS)
        arguments: dict[str, Any] = {"Name": name, "SecretString": json.dumps(value)}
        if kms_key_id:
            arguments["KmsKeyId"] = kms_key_id
        if tags:
            arguments["Tags"] = [{"Key": key, "Value": tag} for key, tag in tags.items()]
        return self.conn.create_secret(**arguments)["ARN"]
