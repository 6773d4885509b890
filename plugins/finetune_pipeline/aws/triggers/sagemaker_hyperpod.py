"""Trigger that waits for a SageMaker HyperPod cluster to be in service."""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.triggers.base import AwsBaseWaiterTrigger

from finetune_pipeline.aws.hooks.sagemaker_hyperpod import HyperPodHook


class HyperPodClusterInServiceTrigger(AwsBaseWaiterTrigger):
    """
    Fire when a HyperPod cluster is ``InService``; ``Failed`` or ``Deleting`` end the wait with an error.

    Uses the ``cluster_in_service`` waiter of waiters/sagemaker_hyperpod.json.

    :param cluster_name: The cluster name (or ARN).
    """

    aws_hook_class = HyperPodHook

    def __init__(
        self,
        *,
        cluster_name: str,
        waiter_delay: float = 60,
        waiter_max_attempts: int = 120,
        **connection: Any,
    ) -> None:
        super().__init__(
            serialized_fields={"cluster_name": cluster_name},
            waiter_name="cluster_in_service",
            waiter_args={"ClusterName": cluster_name},
            failure_message=f"HyperPod cluster {cluster_name} did not come into service",
            status_message=f"HyperPod cluster {cluster_name} is",
            status_queries=["ClusterStatus", "FailureMessage"],
            return_key="cluster_name",
            return_value=cluster_name,
            waiter_delay=waiter_delay,
            waiter_max_attempts=waiter_max_attempts,
            **connection,
        )
