"""Triggers that wait for an AWS Snowball job to reach a state."""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.triggers.base import AwsBaseWaiterTrigger

from finetune_pipeline.aws.hooks.snowball import SnowballHook


class SnowballJobStateTrigger(AwsBaseWaiterTrigger):
    """
    Fire when a Snowball job reaches ``target_state`` (``WithCustomer`` or ``Complete``).

    Uses the ``job_with_customer`` / ``job_complete`` waiters of waiters/snowball.json: ``Cancelled`` (and,
    for ``WithCustomer``, any state after it) ends the wait with an error event. Every poll logs the state.

    :param job_id: The Snowball job ID.
    :param target_state: ``WithCustomer`` or ``Complete``.
    :param waiter_delay: Seconds between polls (jobs take days: 300 in production).
    :param waiter_max_attempts: Polls before giving up.
    """

    aws_hook_class = SnowballHook

    def __init__(
        self,
        *,
        job_id: str,
        target_state: str,
        waiter_delay: float = 300,
        waiter_max_attempts: int = 8640,
        **connection: Any,
    ) -> None:
        if target_state not in SnowballHook.WAITABLE_STATES:
            raise ValueError(
                f"Cannot wait for Snowball job state {target_state!r}: "
                f"choose one of {sorted(SnowballHook.WAITABLE_STATES)}."
            )
        super().__init__(
            serialized_fields={"job_id": job_id, "target_state": target_state},
            waiter_name=SnowballHook.WAITABLE_STATES[target_state],
            waiter_args={"JobId": job_id},
            failure_message=f"Snowball job {job_id} can no longer reach {target_state}",
            status_message=f"Snowball job {job_id} (waiting for {target_state}) is",
            status_queries=["JobMetadata.JobState", "JobMetadata.DataTransferProgress"],
            return_key="job_id",
            return_value=job_id,
            waiter_delay=waiter_delay,
            waiter_max_attempts=waiter_max_attempts,
            **connection,
        )
