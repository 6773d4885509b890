"""AWS DMS: the provider's ``DmsHook`` plus the replication instance and endpoint calls it lacks."""

from __future__ import annotations

import json
from typing import Any

from airflow.providers.amazon.aws.hooks.dms import DmsHook

from finetune_pipeline.aws.utils.redaction import keep_bodies_out_of_logs
from finetune_pipeline.aws.utils.retries import SingleAttemptClientMixin

# Calls whose request may carry a password: their bodies never reach botocore's DEBUG log.
SECRET_BEARING_OPERATIONS = ("CreateEndpoint", "ModifyEndpoint")


class DmsResourceHook(SingleAttemptClientMixin, DmsHook):
    """
    The provider's ``DmsHook`` (``boto3.client("dms")``) plus the calls to create resources idempotently.

    DMS's creates take no client token; a resource's identifier is unique, so a create that botocore sends
    again after its answer was lost fails with ``ResourceAlreadyExistsFault``. The creates here are sent
    once (``single_attempt_conn``), for the operators to look the resource up after any error
    (:func:`finetune_pipeline.aws.utils.retries.create_once`) instead of failing a try that succeeded.

    It keeps the provider's waiter path, so both botocore's built-in DMS waiters
    (``replication_task_ready``, ``replication_task_running``, ``replication_instance_available``) and the
    provider's custom ones are available.

    .. seealso::
        https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/dms.html
    """

    # ReplicationInstanceStatus values after which the instance will not become available by itself.
    INSTANCE_FAILED_STATES = frozenset(
        {
            "deleted",
            "failed",
            "incompatible-credentials",
            "incompatible-network",
            "inaccessible-encryption-credentials",
            "storage-full",
        }
    )
    # An instance on its way out: once it is gone, the identifier is free to create it again.
    INSTANCE_GONE_STATES = frozenset({"deleting"})
    # Task statuses from which StartReplicationTask can be called.
    TASK_STARTABLE_STATES = frozenset({"ready", "stopped", "failed"})
    TASK_GONE_STATES = frozenset({"deleting"})

    def describe_replication_instances(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """
        Describe the replication instances that match ``filters`` (all pages).

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/dms/client/describe_replication_instances.html
        """
        paginator = self.conn.get_paginator("describe_replication_instances")
        try:
            return [
                instance
                for page in paginator.paginate(Filters=filters)
                for instance in page.get("ReplicationInstances", [])
            ]
        except self.conn.exceptions.ResourceNotFoundFault:
            return []

    def find_replication_instance(self, replication_instance_identifier: str) -> dict[str, Any] | None:
        """Return the replication instance with this identifier, or ``None``."""
        instances = self.describe_replication_instances(
            [{"Name": "replication-instance-id", "Values": [replication_instance_identifier]}]
        )
        return instances[0] if instances else None

    def create_replication_instance(self, **kwargs: Any) -> dict[str, Any]:
        """
        Create a replication instance from ``CreateReplicationInstance`` arguments; return it.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/dms/client/create_replication_instance.html
        """
        return self.single_attempt_conn.create_replication_instance(**kwargs)["ReplicationInstance"]

    def describe_endpoints(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """
        Describe the endpoints that match ``filters`` (all pages). Responses never contain passwords.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/dms/client/describe_endpoints.html
        """
        paginator = self.conn.get_paginator("describe_endpoints")
        try:
            return [
                endpoint
                for page in paginator.paginate(Filters=filters)
                for endpoint in page.get("Endpoints", [])
            ]
        except self.conn.exceptions.ResourceNotFoundFault:
            return []

    def find_endpoint(self, endpoint_identifier: str) -> dict[str, Any] | None:
        """Return the endpoint with this identifier, or ``None``."""
        endpoints = self.describe_endpoints([{"Name": "endpoint-id", "Values": [endpoint_identifier]}])
        return endpoints[0] if endpoints else None

    def create_endpoint(self, **kwargs: Any) -> dict[str, Any]:
        """
        Create an endpoint from ``CreateEndpoint`` arguments; return it. Callers must not log ``kwargs``; the
        request body stays out of botocore's DEBUG log (:mod:`finetune_pipeline.aws.utils.redaction`).

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/dms/client/create_endpoint.html
        """
        keep_bodies_out_of_logs(self.single_attempt_conn, *SECRET_BEARING_OPERATIONS)
        return self.single_attempt_conn.create_endpoint(**kwargs)["Endpoint"]

    def modify_endpoint(self, **kwargs: Any) -> dict[str, Any]:
        """
        Change an endpoint from ``ModifyEndpoint`` arguments (settings merge into the stored ones); return it.
        Like :meth:`create_endpoint`, the request body never reaches a log.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/dms/client/modify_endpoint.html
        """
        keep_bodies_out_of_logs(self.conn, *SECRET_BEARING_OPERATIONS)
        return self.conn.modify_endpoint(**kwargs)["Endpoint"]

    def find_replication_task(
        self, replication_task_identifier: str, without_settings: bool = True
    ) -> dict[str, Any] | None:
        """
        Return the replication task with this identifier, or ``None``.

        :param without_settings: Leave out the task settings and table mappings (smaller response).

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/dms/client/describe_replication_tasks.html
        """
        try:
            _, tasks = self.describe_replication_tasks(
                Filters=[{"Name": "replication-task-id", "Values": [replication_task_identifier]}],
                WithoutSettings=without_settings,
            )
        except self.conn.exceptions.ResourceNotFoundFault:
            return None
        return tasks[0] if tasks else None

    def describe_replication_task(self, replication_task_arn: str) -> dict[str, Any] | None:
        """
        Return the replication task with this ARN (without settings), or ``None`` if there is none.

        Unlike the provider's ``get_task_status``, a missing task (``ResourceNotFoundFault``) is not an error.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/dms/client/describe_replication_tasks.html
        """
        try:
            tasks = self.find_replication_tasks_by_arn(replication_task_arn, without_settings=True)
        except self.conn.exceptions.ResourceNotFoundFault:
            return None
        return tasks[0] if tasks else None

    def create_replication_task_nowait(
        self,
        replication_task_id: str,
        source_endpoint_arn: str,
        target_endpoint_arn: str,
        replication_instance_arn: str,
        migration_type: str,
        table_mappings: dict[str, Any],
        **kwargs: Any,
    ) -> str:
        """
        Create a replication task and return its ARN at once (the provider's method blocks until ready).

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/dms/client/create_replication_task.html
        """
        response = self.single_attempt_conn.create_replication_task(
            ReplicationTaskIdentifier=replication_task_id,
            SourceEndpointArn=source_endpoint_arn,
            TargetEndpointArn=target_endpoint_arn,
            ReplicationInstanceArn=replication_instance_arn,
            MigrationType=migration_type,
            TableMappings=json.dumps(table_mappings),
            **kwargs,
        )
        return response["ReplicationTask"]["ReplicationTaskArn"]

    def table_statistics(self, replication_task_arn: str) -> list[dict[str, Any]]:
        """
        Per-table counts DMS captured for a task (inserts, updates, deletes, full-load rows), all pages.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/dms/client/describe_table_statistics.html
        """
        paginator = self.conn.get_paginator("describe_table_statistics")
        return [
            entry
            for page in paginator.paginate(ReplicationTaskArn=replication_task_arn)
            for entry in page.get("TableStatistics", [])
        ]
