from __future__ import annotations

import pytest

from finetune_pipeline.aws.hooks.snowball import SnowballHook
from finetune_pipeline.aws.triggers.snowball import SnowballJobStateTrigger

DAY = 86_400


def test_serialize_round_trip():
    trigger = SnowballJobStateTrigger(
        job_id="JID123",
        target_state="WithCustomer",
        waiter_delay=5,
        waiter_max_attempts=7,
        region_name="eu-west-1",
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "finetune_pipeline.aws.triggers.snowball.SnowballJobStateTrigger"
    assert kwargs == {
        "job_id": "JID123",
        "target_state": "WithCustomer",
        "waiter_delay": 5,
        "waiter_max_attempts": 7,
        "aws_conn_id": "aws_default",
        "region_name": "eu-west-1",
    }
    rebuilt = SnowballJobStateTrigger(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert (rebuilt.waiter_name, rebuilt.waiter_args) == ("job_with_customer", {"JobId": "JID123"})
    assert isinstance(rebuilt.hook(), SnowballHook)


def test_rejects_a_state_without_waiter():
    with pytest.raises(ValueError, match="Cannot wait for Snowball job state 'InTransitToAWS'"):
        SnowballJobStateTrigger(job_id="JID", target_state="InTransitToAWS")


def test_fires_when_the_device_arrives(aws_conn, snowball_job, advance_clock, run_trigger):
    job_id = snowball_job()
    trigger = SnowballJobStateTrigger(
        job_id=job_id, target_state="WithCustomer", waiter_delay=0.01, waiter_max_attempts=2000
    )
    # The job is New when the trigger starts polling; the device arrives about 3.5 virtual days later.
    event = run_trigger(trigger, during=lambda: advance_clock(4 * DAY))
    assert event == {"status": "success", "job_id": job_id}


def test_runs_again_from_the_current_state(aws_conn, snowball_job, advance_job_to, run_trigger):
    job_id = snowball_job()
    advance_job_to(job_id, "WithCustomer")
    trigger = SnowballJobStateTrigger(
        job_id=job_id, target_state="WithCustomer", waiter_delay=0.01, waiter_max_attempts=3
    )
    # A triggerer restart runs the same trigger again: both runs see the job as it is now.
    assert run_trigger(trigger)["status"] == "success"
    assert run_trigger(trigger)["status"] == "success"


def test_error_event_when_the_job_is_cancelled(aws_conn, boto_client, snowball_job, run_trigger):
    job_id = snowball_job()
    trigger = SnowballJobStateTrigger(
        job_id=job_id, target_state="Complete", waiter_delay=0.01, waiter_max_attempts=2000
    )
    event = run_trigger(trigger, during=lambda: boto_client("snowball").cancel_job(JobId=job_id))
    assert event["status"] == "error" and event["job_id"] == job_id
    assert f"Snowball job {job_id} can no longer reach Complete" in event["message"]
    assert "Cancelled" in event["message"]


def test_error_event_when_the_attempts_run_out(aws_conn, snowball_job, run_trigger):
    trigger = SnowballJobStateTrigger(
        job_id=snowball_job(), target_state="Complete", waiter_delay=0.01, waiter_max_attempts=3
    )
    event = run_trigger(trigger)
    assert event["status"] == "error" and "max attempts" in event["message"]
