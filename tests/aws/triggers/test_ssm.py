"""The provider's ``SsmRunCommandTrigger`` (``HyperPodSubmitJobOperator`` defers to it) against localaws."""

from __future__ import annotations

import pytest
from airflow.providers.amazon.aws.triggers.ssm import SsmRunCommandTrigger

from finetune_pipeline.aws.hooks.ssm import SsmCommandHook


@pytest.fixture
def command_id(aws_conn, fast_clock) -> str:
    fast_clock(0)  # hold the command Pending until the test moves the clock
    command = SsmCommandHook(aws_conn_id=aws_conn).send_command(
        InstanceIds=["i-0123456789abcdef0"],
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": ["true"]},
    )
    assert command["Status"] == "Pending"
    return command["CommandId"]


def trigger_for(command_id: str, attempts: int = 2000) -> SsmRunCommandTrigger:
    return SsmRunCommandTrigger(
        command_id=command_id, waiter_delay=0.01, waiter_max_attempts=attempts, aws_conn_id="aws_default"
    )


def test_fires_when_the_command_has_run(command_id, advance_clock, timing, run_trigger):
    ssm = timing["ssm"]
    event = run_trigger(
        trigger_for(command_id),
        during=lambda: advance_clock(ssm["command_pending"] + ssm["command_in_progress"]),
    )
    assert event == {"status": "success", "command_id": command_id}


def test_failed_event_when_the_attempts_run_out(command_id, run_trigger):
    # The provider's trigger reports a wait that ends short of Success as a failed command.
    event = run_trigger(trigger_for(command_id, attempts=3))
    assert event["status"] == "failed" and event["command_id"] == command_id
    assert event["command_status"] == "Pending" and event["instance_id"] == "i-0123456789abcdef0"
