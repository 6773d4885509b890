"""Triggers for EC2 instances: all running, or the job their user data runs has ended."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.triggers.base import AwsBaseWaiterTrigger
from airflow.triggers.base import BaseTrigger, TriggerEvent
from botocore.exceptions import ClientError

from finetune_pipeline.aws.hooks.ec2 import Ec2InstancesHook

# Set on instances before the pipeline itself terminates them (on kill, a failed wait, teardown).
ABORTED_TAG = "finetune-pipeline:aborted"
INSTANCE_INITIATED_SHUTDOWN = "Client.InstanceInitiatedShutdown"
# S3's Last-Modified has whole seconds; an instance's LaunchTime has milliseconds.
_CLOCK_SLACK = timedelta(seconds=1)


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


@dataclass(frozen=True)
class JobStatus:
    """One look at a job's instances and its success marker."""

    done: bool
    succeeded: bool
    message: str
    states: dict[str, str]  # instance ID -> "state" or "state (reason code)"

    def event(self, instance_ids: list[str]) -> dict[str, Any]:
        return {
            "status": "success" if self.succeeded else "error",
            "message": self.message,
            "instance_ids": list(instance_ids),
            "states": self.states,
        }


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"Not an S3 object URI (s3://bucket/key): {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def marker_written(s3: S3Hook, uri: str, not_before: datetime | None) -> bool:
    """
    Whether the object ``uri`` exists and was written at or after ``not_before`` (``HeadObject``).

    A marker older than the instances is an earlier job's, not theirs.
    """
    bucket, key = parse_s3_uri(uri)
    try:
        head = s3.get_conn().head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return not_before is None or head["LastModified"] >= not_before - _CLOCK_SLACK


def _state(instance: dict[str, Any]) -> str:
    code = instance.get("StateReason", {}).get("Code")
    name = instance["State"]["Name"]
    return f"{name} ({code})" if code and name in Ec2InstancesHook.ENDED_STATES else name


def _aborted(instance: dict[str, Any]) -> bool:
    return any(tag["Key"] == ABORTED_TAG for tag in instance.get("Tags", []))


def job_status(instance_ids: list[str], instances: list[dict[str, Any]], marker: bool, marker_uri: str) -> JobStatus:
    """
    What the instances' states and the marker say about the job.

    - the marker is written: the job succeeded (rank 0 writes it after training; the instances shut down
      on their own, and a teardown terminates any that do not);
    - an instance that AWS itself ended (``StateReason`` ``Server.*``: capacity, Spot, hardware): failed, with
      that reason; the job cannot finish without it;
    - an instance the pipeline aborted (tag ``finetune-pipeline:aborted``): failed;
    - every instance ended without the marker: failed (training exited non-zero, or someone terminated or
      stopped them through the API);
    - otherwise: still running.
    """
    by_id = {i["InstanceId"]: i for i in instances}
    # An instance terminated about an hour ago no longer shows in DescribeInstances.
    states = {
        instance_id: _state(by_id[instance_id]) if instance_id in by_id else "gone" for instance_id in instance_ids
    }
    if marker:
        return JobStatus(True, True, f"Training finished: {marker_uri} written (instances: {states}).", states)
    for instance_id in instance_ids:
        instance = by_id.get(instance_id)
        if instance is None:
            continue
        reason = instance.get("StateReason", {})
        if instance["State"]["Name"] in Ec2InstancesHook.ENDED_STATES and reason.get("Code", "").startswith("Server."):
            return JobStatus(
                True,
                False,
                f"EC2 itself ended instance {instance_id} ({instance['State']['Name']}): "
                f"{reason.get('Message') or reason['Code']}. The job did not finish; instances: {states}.",
                states,
            )
        if _aborted(instance):
            return JobStatus(
                True,
                False,
                f"Instance {instance_id} was terminated by the pipeline (aborted); instances: {states}.",
                states,
            )
    ended = [i for i in instance_ids if i not in by_id or by_id[i]["State"]["Name"] in Ec2InstancesHook.ENDED_STATES]
    if len(ended) == len(instance_ids):
        by_os = all(
            by_id.get(i, {}).get("StateReason", {}).get("Code") == INSTANCE_INITIATED_SHUTDOWN for i in instance_ids
        )
        why = (
            "the job failed (its script shut the instances down without training to the end)"
            if by_os
            else "they were ended through the EC2 API or their state is unknown"
        )
        return JobStatus(
            True, False, f"Every instance ended without writing {marker_uri}: {why}. Instances: {states}.", states
        )
    return JobStatus(False, False, f"Training is running; instances: {states}.", states)


class Ec2JobCompleteTrigger(BaseTrigger):
    """
    Fire when the job that ``instance_ids`` run from their user data has ended: ``success`` once
    ``success_marker_uri`` (S3) is written, ``error`` when an instance was ended by AWS or by the pipeline,
    when all ended without the marker, or after ``waiter_max_attempts`` checks.

    Each check is ``DescribeInstances`` then ``HeadObject`` (in that order: instances seen ended, then no
    marker, means none will come). Instance states are logged as they change.

    :param instance_ids: The job's instances.
    :param success_marker_uri: ``s3://bucket/key`` that the job writes when it succeeded.
    :param launched_at: ISO 8601 time the instances were launched; an older marker does not count.
    """

    def __init__(
        self,
        *,
        instance_ids: list[str],
        success_marker_uri: str,
        launched_at: str | None = None,
        waiter_delay: float = 30,
        waiter_max_attempts: int = 2880,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict | None = None,
    ) -> None:
        super().__init__()
        self.instance_ids = list(instance_ids)
        self.success_marker_uri = success_marker_uri
        self.launched_at = launched_at
        self.waiter_delay = waiter_delay
        self.waiter_max_attempts = waiter_max_attempts
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = botocore_config

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "instance_ids": self.instance_ids,
                "success_marker_uri": self.success_marker_uri,
                "launched_at": self.launched_at,
                "waiter_delay": self.waiter_delay,
                "waiter_max_attempts": self.waiter_max_attempts,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "verify": self.verify,
                "botocore_config": self.botocore_config,
            },
        )

    def hooks(self) -> tuple[Ec2InstancesHook, S3Hook]:
        connection = {
            "aws_conn_id": self.aws_conn_id,
            "region_name": self.region_name,
            "verify": self.verify,
            "config": self.botocore_config,
        }
        return Ec2InstancesHook(**connection), S3Hook(**connection)

    def check(self, ec2: Ec2InstancesHook, s3: S3Hook) -> JobStatus:
        instances = ec2.describe(self.instance_ids)
        not_before = datetime.fromisoformat(self.launched_at) if self.launched_at else None
        return job_status(
            self.instance_ids,
            instances,
            marker_written(s3, self.success_marker_uri, not_before),
            self.success_marker_uri,
        )

    def _timed_out(self) -> dict[str, Any]:
        seconds = self.waiter_delay * self.waiter_max_attempts
        return {
            "status": "error",
            "message": f"The job on {', '.join(self.instance_ids)} did not end within {seconds:.0f}s "
            f"({self.waiter_max_attempts} checks).",
            "instance_ids": self.instance_ids,
            "timed_out": True,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # Blocking boto3 calls in a worker thread, once per waiter_delay: a check is two requests.
        ec2, s3 = await asyncio.to_thread(self.hooks)
        seen: dict[str, str] | None = None
        for _ in range(self.waiter_max_attempts):
            status = await asyncio.to_thread(self.check, ec2, s3)
            if status.states != seen:
                self.log.info("EC2 job instances: %s", status.states)
                seen = status.states
            if status.done:
                yield TriggerEvent(status.event(self.instance_ids))
                return
            await asyncio.sleep(self.waiter_delay)
        yield TriggerEvent(self._timed_out())

    def wait(self) -> dict[str, Any]:
        """The same checks as :meth:`run`, blocking here (a task that does not defer); returns the event."""
        ec2, s3 = self.hooks()
        seen: dict[str, str] | None = None
        for _ in range(self.waiter_max_attempts):
            status = self.check(ec2, s3)
            if status.states != seen:
                self.log.info("EC2 job instances: %s", status.states)
                seen = status.states
            if status.done:
                return status.event(self.instance_ids)
            time.sleep(self.waiter_delay)
        return self._timed_out()
