"""Triggers that wait for a SageMaker HyperPod cluster to be in service, and for a job on it to end."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.amazon.aws.triggers.base import AwsBaseWaiterTrigger
from airflow.triggers.base import BaseTrigger, TriggerEvent
from botocore.exceptions import ClientError

from finetune_pipeline.aws.hooks.s3_objects import S3ObjectHook
from finetune_pipeline.aws.hooks.sagemaker_hyperpod import HyperPodHook
from finetune_pipeline.aws.utils.hyperpod_jobs import (
    SUCCESS_STATE,
    TERMINAL_STATES,
    HyperPodJobStore,
    decode_record,
)


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
            # Each group's status and running nodes against its target, as the cluster comes up.
            status_queries=[
                "ClusterStatus",
                "FailureMessage",
                "InstanceGroups[].[InstanceGroupName, Status, CurrentCount, TargetCount]",
            ],
            return_key="cluster_name",
            return_value=cluster_name,
            waiter_delay=waiter_delay,
            waiter_max_attempts=waiter_max_attempts,
            **connection,
        )


class HyperPodJobCompleteTrigger(BaseTrigger):
    """
    Fire when the job agent reports a HyperPod (Slurm) job ``COMPLETED``, ``FAILED`` or ``CANCELLED``.

    Polls ``state/<job_key>.json`` under ``jobs_uri`` (see ``finetune_pipeline.aws.utils.hyperpod_jobs``) every
    ``waiter_delay`` seconds and logs each change of state. It also watches the cluster (``DescribeCluster``,
    ``ListClusterNodes``): it logs the node counts by status whenever they change while the cluster is not
    ``InService`` or a node is not ``Running`` (coming up, or a node being replaced under a running job), and
    ends with an error if the cluster is ``Failed``, being deleted or gone. The calls are boto3's, run in a
    thread so the triggerer's loop never blocks; running again after a triggerer restart just polls again.
    A user's kill of the deferred task (``on_kill``) writes ``cancel/<job_key>``, which the agent turns into
    ``scancel``.

    The event: ``{"status": "success" | "error", "job_key", "state": <state record or None>, "message"}``.

    :param cluster_name: The HyperPod cluster that runs the job.
    :param job_key: The job's key (its spec is ``jobs/<job_key>.json``).
    :param jobs_uri: ``s3://bucket/prefix`` the job agent polls.
    :param controller_group: The instance group the job agent runs on; a cluster without it ends the wait.
    :param waiter_delay: Seconds between polls.
    :param waiter_max_attempts: Polls before giving up (with an error event).
    """

    def __init__(
        self,
        *,
        cluster_name: str,
        job_key: str,
        jobs_uri: str,
        controller_group: str | None = None,
        waiter_delay: float = 30,
        waiter_max_attempts: int = 2880,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict | None = None,
    ) -> None:
        super().__init__()
        self.cluster_name = cluster_name
        self.job_key = job_key
        self.jobs_uri = jobs_uri
        self.controller_group = controller_group
        self.waiter_delay = waiter_delay
        self.waiter_max_attempts = waiter_max_attempts
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = botocore_config

    def serialize(self) -> tuple[str, dict[str, Any]]:
        connection = {
            name: value
            for name, value in (
                ("region_name", self.region_name),
                ("verify", self.verify),
                ("botocore_config", self.botocore_config),
            )
            if value is not None
        }
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "cluster_name": self.cluster_name,
                "job_key": self.job_key,
                "jobs_uri": self.jobs_uri,
                "controller_group": self.controller_group,
                "waiter_delay": self.waiter_delay,
                "waiter_max_attempts": self.waiter_max_attempts,
                "aws_conn_id": self.aws_conn_id,
                **connection,
            },
        )

    def _hook_arguments(self) -> dict[str, Any]:
        return {
            "aws_conn_id": self.aws_conn_id,
            "region_name": self.region_name,
            "verify": self.verify,
            "config": self.botocore_config,
        }

    def read_state(self, s3: S3ObjectHook) -> dict[str, Any] | None:
        """The job's state record, or ``None`` while the agent has written none."""
        store = HyperPodJobStore(self.jobs_uri)
        return decode_record(s3.get_object_body(store.bucket, store.state_key(self.job_key)))

    def cluster_view(self, hyperpod: HyperPodHook) -> tuple[str, dict[str, int], set[str]]:
        """The cluster's status, its nodes counted by status, and its instance groups."""
        cluster = hyperpod.describe_cluster(self.cluster_name)
        nodes = Counter(
            node.get("InstanceStatus", {}).get("Status", "Unknown")
            for node in hyperpod.list_cluster_nodes(self.cluster_name)
        )
        groups = {group["InstanceGroupName"] for group in cluster.get("InstanceGroups", [])}
        return cluster["ClusterStatus"], dict(sorted(nodes.items())), groups

    def write_cancel_marker(self) -> None:
        store = HyperPodJobStore(self.jobs_uri)
        S3ObjectHook(**self._hook_arguments()).put_object(store.bucket, store.cancel_key(self.job_key), b"")

    async def on_kill(self) -> None:
        """
        The deferred task was killed by a user (marked failed, cleared): ask the agent to cancel the job.

        Airflow calls this only for a user's action, never when the triggerer restarts or the trigger ends
        (``BaseTrigger.on_kill``); the operator's own ``on_kill`` covers a task killed while in a worker.
        """
        try:
            await asyncio.wait_for(asyncio.to_thread(self.write_cancel_marker), timeout=30)
            self.log.info("Asked the job agent to cancel HyperPod job %s.", self.job_key)
        except Exception:
            self.log.exception("Could not ask the job agent to cancel HyperPod job %s.", self.job_key)

    def _event(self, status: str, record: dict[str, Any] | None, message: str) -> TriggerEvent:
        return TriggerEvent({"status": status, "job_key": self.job_key, "state": record, "message": message})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        s3 = S3ObjectHook(**self._hook_arguments())
        hyperpod = HyperPodHook(**self._hook_arguments())
        seen_state, seen_cluster = None, None
        for _ in range(max(1, int(self.waiter_max_attempts))):
            record = await asyncio.to_thread(self.read_state, s3)
            state = record.get("state") if record else None
            if record and (state, record.get("slurm_job_id")) != seen_state:
                seen_state = (state, record.get("slurm_job_id"))
                self.log.info(
                    "HyperPod job %s is %s (Slurm job %s).", self.job_key, state, record.get("slurm_job_id")
                )
            if state in TERMINAL_STATES:
                status = "success" if state == SUCCESS_STATE else "error"
                yield self._event(status, record, f"HyperPod job {self.job_key} ended {state}")
                return
            try:
                cluster_status, nodes, groups = await asyncio.to_thread(self.cluster_view, hyperpod)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "ResourceNotFound":
                    raise
                yield self._event("error", record, f"HyperPod cluster {self.cluster_name} does not exist")
                return
            if cluster_status in HyperPodHook.FAILED_STATES | HyperPodHook.GONE_STATES:
                yield self._event(
                    "error", record, f"HyperPod cluster {self.cluster_name} is {cluster_status}"
                )
                return
            if self.controller_group and groups and self.controller_group not in groups:
                yield self._event(
                    "error",
                    record,
                    f"HyperPod cluster {self.cluster_name} has no instance group {self.controller_group!r} "
                    f"(it has {', '.join(sorted(groups))}), where the job agent was to run",
                )
                return
            settled = cluster_status == HyperPodHook.IN_SERVICE_STATE and set(nodes) <= {"Running"}
            if (cluster_status, nodes) != seen_cluster and (not settled or seen_cluster is not None):
                self.log.info(
                    "HyperPod cluster %s is %s; nodes by status: %s.",
                    self.cluster_name,
                    cluster_status,
                    ", ".join(f"{n} {s}" for s, n in nodes.items()) or "none",
                )
            seen_cluster = (cluster_status, nodes)
            await asyncio.sleep(self.waiter_delay)
        yield self._event(
            "error",
            record,
            f"HyperPod job {self.job_key} did not end within {self.waiter_max_attempts} polls "
            f"({self.waiter_delay}s apart); last state: {state or 'none written yet'}",
        )
