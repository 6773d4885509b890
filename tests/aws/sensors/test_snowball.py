from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException, TaskDeferred

from finetune_pipeline.aws.sensors.snowball import SnowballJobStateSensor
from finetune_pipeline.aws.triggers.snowball import SnowballJobStateTrigger


def sensor(job_id: str, target_state: str = "WithCustomer", **kwargs) -> SnowballJobStateSensor:
    return SnowballJobStateSensor(task_id="wait", job_id=job_id, target_state=target_state, **kwargs)


def test_poke_logs_each_state_until_the_target(aws_conn, snowball_job, advance_job_to, context, capsys):
    job_id = snowball_job()
    waiting = sensor(job_id)
    assert waiting.poke(context) is False
    advance_job_to(job_id, "WithCustomer")
    assert waiting.poke(context) is True
    logged = capsys.readouterr().out
    assert f"Snowball job {job_id} is New (waiting for WithCustomer)" in logged
    assert f"Snowball job {job_id} is WithCustomer (waiting for WithCustomer)" in logged


def test_poke_fails_without_retry_when_cancelled(aws_conn, boto_client, snowball_job, context):
    job_id = snowball_job()
    boto_client("snowball").cancel_job(JobId=job_id)
    with pytest.raises(
        AirflowFailException, match=rf"Snowball job {job_id} is Cancelled.*never reach Complete"
    ):
        sensor(job_id, "Complete").poke(context)


def test_poke_fails_when_the_device_already_left(aws_conn, snowball_job, advance_job_to, context):
    job_id = snowball_job()
    advance_job_to(job_id, "InTransitToAWS")
    with pytest.raises(AirflowFailException, match=rf"{job_id} is already InTransitToAWS, past WithCustomer"):
        sensor(job_id).poke(context)


def test_rerun_after_the_device_left_skips_when_asked(aws_conn, snowball_job, advance_job_to, context):
    job_id = snowball_job()
    advance_job_to(job_id, "InTransitToAWS")
    with pytest.raises(AirflowSkipException, match=rf"{job_id} is already InTransitToAWS.*nothing to wait for"):
        sensor(job_id, skip_when_past=True, deferrable=True).execute(context)


def test_non_deferrable_execute_returns_at_the_target(aws_conn, snowball_job, advance_job_to, context):
    job_id = snowball_job()
    advance_job_to(job_id, "WithCustomer")
    sensor(job_id, deferrable=False, poke_interval=0.01, timeout=5).execute(context)


def test_deferrable_execute_defers_with_the_trigger(aws_conn, snowball_job, context):
    job_id = snowball_job()
    waiting = sensor(job_id, "Complete", deferrable=True, poke_interval=2, timeout=60)
    with pytest.raises(TaskDeferred) as deferred:
        waiting.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, SnowballJobStateTrigger)
    assert trigger.serialize()[1]["job_id"] == job_id
    assert (trigger.waiter_name, trigger.waiter_delay, trigger.attempts) == ("job_complete", 2, 30)
    assert deferred.value.method_name == "execute_complete"


def test_deferrable_execute_does_not_defer_if_already_there(aws_conn, snowball_job, advance_job_to, context):
    job_id = snowball_job()
    advance_job_to(job_id, "WithCustomer")
    sensor(job_id, deferrable=True).execute(context)


def test_deferred_wait_end_to_end(aws_conn, snowball_job, advance_clock, run_trigger, context):
    job_id = snowball_job()
    waiting = sensor(job_id, deferrable=True, poke_interval=0.01, timeout=60)
    with pytest.raises(TaskDeferred) as deferred:
        waiting.execute(context)
    event = run_trigger(deferred.value.trigger, during=lambda: advance_clock(4 * 86_400))
    assert waiting.execute_complete(context, event) == job_id


def test_execute_complete_raises_on_a_failure_event(context):
    event = {
        "status": "error",
        "message": "Snowball job JID1 can no longer reach Complete: Cancelled",
        "job_id": "JID1",
    }
    with pytest.raises(AirflowException, match="JID1 to reach Complete failed: .*Cancelled"):
        sensor("JID1", "Complete").execute_complete(context, event)
    with pytest.raises(AirflowException, match="event is None"):
        sensor("JID1", "Complete").execute_complete(context, None)


def test_rejects_a_target_state_without_waiter():
    with pytest.raises(ValueError, match="cannot wait for state 'InProgress'"):
        sensor("JID1", "InProgress")
