"""Wait for an AWS Snowball job to reach a state (the device delivered, or the import complete)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.amazon.aws.sensors.base_aws import AwsBaseSensor
from airflow.providers.amazon.aws.utils import validate_execute_complete_event
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.sdk import Context, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from finetune_pipeline.aws.hooks.snowball import SnowballHook
from finetune_pipeline.aws.triggers.snowball import SnowballJobStateTrigger
from finetune_pipeline.aws.utils.waits import trigger_arguments


class SnowballJobStateSensor(AwsBaseSensor[SnowballHook]):
    """
    Wait until a Snowball job reaches ``target_state``; fail at once if it can no longer get there.

    Each poke (``DescribeJob``) logs the job's state and, while AWS imports, its transfer progress.
    ``Cancelled`` fails the task without retries, and so does a job already past ``WithCustomer`` when
    waiting for ``WithCustomer`` (its device can no longer be loaded). With ``deferrable=True`` the wait
    (days) runs in the triggerer and holds no worker slot.

    :param job_id: The Snowball job ID (templated).
    :param target_state: ``WithCustomer`` (device delivered) or ``Complete`` (data imported into S3).
    :param deferrable: Wait in the triggerer. Defaults to ``[operators] default_deferrable``.
    :param poke_interval: Seconds between checks; 300 by default (jobs take days).
    :param timeout: Seconds before giving up; 60 days by default. With ``deferrable=True`` it also caps
        the trigger's polls (``timeout / poke_interval``).
    :param skip_when_past: Skip instead of failing when the job is already past ``target_state``, e.g. a
        re-run for a snapshot whose device an earlier run loaded and shipped.
    """

    aws_hook_class = SnowballHook
    template_fields: Sequence[str] = aws_template_fields("job_id")
    ui_color = "#f0a35e"

    def __init__(
        self,
        *,
        job_id: str,
        target_state: str = "Complete",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poke_interval: float = 300,
        timeout: float = 60 * 24 * 60 * 60,
        skip_when_past: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
        self.skip_when_past = skip_when_past
        if target_state not in SnowballHook.WAITABLE_STATES:
            raise ValueError(
                f"SnowballJobStateSensor cannot wait for state {target_state!r}: "
                f"choose one of {sorted(SnowballHook.WAITABLE_STATES)}."
            )
        self.job_id = job_id
        self.target_state = target_state
        self.deferrable = deferrable

    def poke(self, context: Context) -> bool:
        job = self.hook.describe_job(self.job_id)
        state = job["JobState"]
        progress = job.get("DataTransferProgress")
        if progress:
            self.log.info(
                "Snowball job %s is %s (waiting for %s): %s of %s bytes, %s of %s objects imported.",
                self.job_id,
                state,
                self.target_state,
                progress.get("BytesTransferred"),
                progress.get("TotalBytes"),
                progress.get("ObjectsTransferred"),
                progress.get("TotalObjects"),
            )
        else:
            self.log.info("Snowball job %s is %s (waiting for %s).", self.job_id, state, self.target_state)
        if state == self.target_state:
            return True
        if state in SnowballHook.FAILED_STATES:
            raise AirflowFailException(
                f"Snowball job {self.job_id} is {state}, so it will never reach {self.target_state}. "
                "Create a new job (a new description key) to ship another device."
            )
        if state in SnowballHook.states_after(self.target_state):
            if self.skip_when_past:
                raise AirflowSkipException(
                    f"Snowball job {self.job_id} is already {state}, past {self.target_state}: an earlier "
                    "run got it there, so there is nothing to wait for."
                )
            raise AirflowFailException(
                f"Snowball job {self.job_id} is already {state}, past {self.target_state}: "
                "waiting for it is pointless. Check the job in the AWS Snow Family console."
            )
        return False

    def execute(self, context: Context) -> None:
        if not self.deferrable:
            super().execute(context)
        elif not self.poke(context):
            self.defer(
                timeout=timedelta(seconds=self.timeout),
                trigger=SnowballJobStateTrigger(
                    job_id=self.job_id,
                    target_state=self.target_state,
                    **trigger_arguments(
                        self,
                        waiter_delay=self.poke_interval,
                        waiter_max_attempts=max(1, math.ceil(self.timeout / max(self.poke_interval, 1e-3))),
                    ),
                ),
                method_name="execute_complete",
            )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> str:
        event = validate_execute_complete_event(event)
        if event["status"] != "success":
            raise AirflowException(
                f"Waiting for Snowball job {event.get('job_id', self.job_id)} to reach {self.target_state} "
                f"failed: {event.get('message')}"
            )
        self.log.info("Snowball job %s reached %s.", event["job_id"], self.target_state)
        return event["job_id"]
