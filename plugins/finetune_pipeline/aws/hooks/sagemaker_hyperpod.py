"""Amazon SageMaker HyperPod clusters (the cluster calls of ``boto3.client("sagemaker")``)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

from finetune_pipeline.aws.waiters import waiter_file


class HyperPodHook(AwsBaseHook):
    """
    Interact with SageMaker HyperPod clusters; a thin wrapper around ``boto3.client("sagemaker")``.

    Additional arguments (such as ``aws_conn_id``) are passed down to ``AwsBaseHook``.

    .. seealso::
        https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/sagemaker.html
    """

    IN_SERVICE_STATE = "InService"
    FAILED_STATES = frozenset({"Failed"})
    GONE_STATES = frozenset({"Deleting"})

    def __init__(self, *args, **kwargs) -> None:
        kwargs["client_type"] = "sagemaker"
        super().__init__(*args, **kwargs)

    @cached_property
    def waiter_path(self) -> Path:
        return waiter_file("sagemaker_hyperpod")

    @staticmethod
    def cluster_id(cluster_arn: str) -> str:
        """The cluster ID: the last part of ``arn:aws:sagemaker:<region>:<account>:cluster/<id>``."""
        return cluster_arn.rsplit("/", 1)[-1]

    def create_cluster(
        self,
        cluster_name: str,
        instance_groups: list[dict[str, Any]],
        vpc_config: dict[str, Any] | None = None,
        tags: list[dict[str, str]] | None = None,
        **kwargs: Any,
    ) -> str:
        """
        Create a cluster; return its ARN.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/sagemaker/client/create_cluster.html
        """
        arguments: dict[str, Any] = {"ClusterName": cluster_name, "InstanceGroups": instance_groups, **kwargs}
        if vpc_config:
            arguments["VpcConfig"] = vpc_config
        if tags:
            arguments["Tags"] = tags
        return self.conn.create_cluster(**arguments)["ClusterArn"]

    def describe_cluster(self, cluster_name: str) -> dict[str, Any]:
        """
        Describe a cluster by name or ARN.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/sagemaker/client/describe_cluster.html
        """
        return self.conn.describe_cluster(ClusterName=cluster_name)

    def list_clusters(self, name_contains: str | None = None) -> list[dict[str, Any]]:
        """
        List cluster summaries (all pages), optionally only names containing ``name_contains``.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/sagemaker/client/list_clusters.html
        """
        arguments = {"NameContains": name_contains} if name_contains else {}
        paginator = self.conn.get_paginator("list_clusters")
        return [item for page in paginator.paginate(**arguments) for item in page.get("ClusterSummaries", [])]

    def find_cluster(self, cluster_name: str) -> dict[str, Any] | None:
        """Describe the cluster with exactly this name, or return ``None`` if there is none."""
        for summary in self.list_clusters(name_contains=cluster_name):
            if summary["ClusterName"] == cluster_name:
                return self.describe_cluster(cluster_name)
        return None

    def list_cluster_nodes(
        self, cluster_name: str, instance_group_name_contains: str | None = None
    ) -> list[dict[str, Any]]:
        """
        List the cluster's node summaries (all pages).

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/sagemaker/client/list_cluster_nodes.html
        """
        arguments: dict[str, Any] = {"ClusterName": cluster_name}
        if instance_group_name_contains:
            arguments["InstanceGroupNameContains"] = instance_group_name_contains
        paginator = self.conn.get_paginator("list_cluster_nodes")
        return [
            node for page in paginator.paginate(**arguments) for node in page.get("ClusterNodeSummaries", [])
        ]

    def delete_cluster(self, cluster_name: str) -> str:
        """
        Delete a cluster; return its ARN.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/sagemaker/client/delete_cluster.html
        """
        return self.conn.delete_cluster(ClusterName=cluster_name)["ClusterArn"]

    def list_tags(self, resource_arn: str) -> dict[str, str]:
        """
        A resource's tags (all pages), as a dict.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/sagemaker/client/list_tags.html
        """
        paginator = self.conn.get_paginator("list_tags")
        return {tag["Key"]: tag["Value"] for page in paginator.paginate(ResourceArn=resource_arn)
                for tag in page.get("Tags", [])}
