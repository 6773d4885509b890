from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils import validate_execute_complete_event
from airflow.sdk.exceptions import AirflowException, TaskDeferred
from airflow.triggers.base import BaseTrigger, TriggerEvent

from finetune_pipeline.aws.hooks.snowball import SnowballHook
from finetune_pipeline.aws.triggers.snowball import SnowballJobStateTrigger
from finetune_pipeline.aws.triggers.ssm import SsmCommandInvocationSucceededTrigger
from finetune_pipeline.aws.utils.waits import defer_or_wait, run_trigger_here, run_waiter_trigger, trigger_arguments

DAY = 86_400


class SnowballWaitOperator(AwsBaseOperator[SnowballHook]):
    """The smallest task that waits as ours do: one trigger and an ``execute_complete`` that checks events."""

    aws_hook_class = SnowballHook

    def __init__(self, *, job_id: str, target_state: str, deferrable: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id
        self.target_state = target_state
        self.deferrable = deferrable
        self.waiter_delay = 0.01
        self.waiter_max_attempts = 2000

    def trigger(self) -> SnowballJobStateTrigger:
        return SnowballJobStateTrigger(
            job_id=self.job_id, target_state=self.target_state, **trigger_arguments(self)
        )

    def execute(self, context) -> dict[str, Any]:
        return defer_or_wait(self, context, self.trigger(), kwargs={"note": "kept"})

    def execute_complete(self, context, event: dict[str, Any] | None = None, note: str | None = None):
        event = validate_execute_complete_event(event)
        if event["status"] != "success":
            raise AirflowException(f"Waiting for job {event['job_id']} failed: {event['message']}")
        return {"event": event, "note": note}


def waiting(job_id: str, target_state: str = "WithCustomer", **kwargs) -> SnowballWaitOperator:
    return SnowballWaitOperator(task_id="wait", job_id=job_id, target_state=target_state, **kwargs)


def test_a_deferrable_task_defers_to_the_very_trigger(context):
    operator = waiting("JID1", deferrable=True)
    trigger = operator.trigger()
    with pytest.raises(TaskDeferred) as deferred:
        defer_or_wait(operator, context, trigger, kwargs={"note": "kept"}, timeout=timedelta(hours=2))
    assert deferred.value.trigger is trigger
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.kwargs == {"note": "kept"}
    assert deferred.value.timeout == timedelta(hours=2)


def test_a_blocking_wait_polls_until_the_state_and_returns_the_triggers_event(
    aws_conn, snowball_job, advance_clock, run_trigger
):
    job_id = snowball_job()
    trigger = waiting(job_id, deferrable=False).trigger()
    with ThreadPoolExecutor(max_workers=1) as pool:
        blocking = pool.submit(run_waiter_trigger, trigger, SnowballHook(aws_conn_id=aws_conn))
        time.sleep(0.05)  # the job is New while the waiter starts polling
        assert not blocking.done()
        advance_clock(4 * DAY)  # the device arrives about 3.5 virtual days after CreateJob
        event = blocking.result(timeout=30)
    assert event == {"status": "success", "job_id": job_id}
    assert run_trigger(trigger) == event  # what the triggerer fires, now that the job is there


def test_a_blocking_wait_hands_the_event_and_kwargs_to_execute_complete(
    aws_conn, snowball_job, advance_job_to, context
):
    job_id = snowball_job()
    advance_job_to(job_id, "WithCustomer")
    assert waiting(job_id, deferrable=False).execute(context) == {
        "event": {"status": "success", "job_id": job_id},
        "note": "kept",
    }


def test_a_terminal_failure_gives_the_triggers_error_event_and_failure_message(
    aws_conn, boto_client, snowball_job, context, run_trigger
):
    job_id = snowball_job()
    boto_client("snowball").cancel_job(JobId=job_id)
    operator = waiting(job_id, "Complete", deferrable=False)
    trigger = operator.trigger()
    blocking = run_waiter_trigger(trigger, operator.hook)
    deferred = run_trigger(trigger)
    assert blocking.keys() == deferred.keys() == {"status", "message", "job_id"}
    assert (blocking["status"], blocking["job_id"]) == (deferred["status"], deferred["job_id"])
    assert (blocking["status"], blocking["job_id"]) == ("error", job_id)
    failure_message = f"Snowball job {job_id} can no longer reach Complete"
    assert trigger.failure_message == failure_message
    assert blocking["message"].startswith(f"{failure_message}: ")
    assert deferred["message"].startswith(f"{failure_message}: ")
    with pytest.raises(AirflowException, match=rf"Waiting for job {job_id} failed: {failure_message}: "):
        operator.execute(context)


def test_the_attempts_running_out_is_an_error_event(aws_conn, snowball_job):
    operator = waiting(snowball_job(), "Complete", deferrable=False)
    operator.waiter_max_attempts = 3
    event = run_waiter_trigger(operator.trigger(), operator.hook)
    assert event["status"] == "error" and "max attempts" in event["message"]


def test_the_triggers_waiter_config_overrides_reach_the_waiter(aws_conn, snowball_job):
    job_id = snowball_job()
    trigger = waiting(job_id, "Complete", deferrable=False).trigger()
    # As AwsBaseWaiterTrigger.run() passes them: here a new job counts as done.
    new_is_done = {"matcher": "path", "argument": "JobMetadata.JobState", "expected": "New"}
    trigger.waiter_config_overrides = {"acceptors": [{**new_is_done, "state": "success"}]}
    event = run_waiter_trigger(trigger, SnowballHook(aws_conn_id=aws_conn))
    assert event == {"status": "success", "job_id": job_id}


def test_a_hook_of_another_service_is_refused(aws_conn):
    trigger = SsmCommandInvocationSucceededTrigger(command_id="c-1", instance_id="i-1")
    with pytest.raises(TypeError, match="SsmCommandInvocationSucceededTrigger waits with a SsmCommandHook"):
        run_waiter_trigger(trigger, SnowballHook(aws_conn_id=aws_conn))


def test_trigger_arguments_are_the_tasks_connection_and_polling():
    operator = waiting(
        "JID1", deferrable=True, region_name="eu-west-1", verify=False, botocore_config={"a": 1}
    )
    assert trigger_arguments(operator) == {
        "waiter_delay": 0.01,
        "waiter_max_attempts": 2000,
        "aws_conn_id": "aws_default",
        "region_name": "eu-west-1",
        "verify": False,
        "botocore_config": {"a": 1},
    }
    given = trigger_arguments(operator, waiter_delay=5, waiter_max_attempts=7)
    assert (given["waiter_delay"], given["waiter_max_attempts"]) == (5, 7)


class _TwoEventTrigger(BaseTrigger):
    """Not a waiter trigger: it reads something and fires, as HyperPodJobCompleteTrigger does."""

    def serialize(self):
        return f"{__name__}._TwoEventTrigger", {}

    async def run(self):
        await asyncio.sleep(0)
        yield TriggerEvent({"status": "success", "job_id": "first"})
        yield TriggerEvent({"status": "success", "job_id": "second"})


def test_a_trigger_without_a_waiter_runs_here_to_its_first_event(aws_conn, context):
    task = waiting("j-1", deferrable=False)
    result = defer_or_wait(task, context, _TwoEventTrigger(), kwargs={"note": "kept"})
    assert result == {"event": {"status": "success", "job_id": "first"}, "note": "kept"}
    assert run_trigger_here(_TwoEventTrigger()) == {"status": "success", "job_id": "first"}
