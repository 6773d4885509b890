"""``SsmCommandInvocationSucceededTrigger`` (``HyperPodSubmitJobOperator`` defers to it) against localaws."""

from __future__ import annotations

import threading

import pytest

from finetune_pipeline.aws.hooks.ssm import SsmCommandHook
from finetune_pipeline.aws.triggers.ssm import SsmCommandInvocationSucceededTrigger

NODE = "i-0123456789abcdef0"


@pytest.fixture
def command_id(aws_conn, fast_clock) -> str:
    fast_clock(0)  # hold the command Pending until the test moves the clock
    command = SsmCommandHook(aws_conn_id=aws_conn).send_command(
        InstanceIds=[NODE], DocumentName="AWS-RunShellScript", Parameters={"commands": ["true"]}
    )
    assert command["Status"] == "Pending"
    return command["CommandId"]


def trigger_for(command_id: str, instance_id: str = NODE, attempts: int = 2000):
    return SsmCommandInvocationSucceededTrigger(
        command_id=command_id,
        instance_id=instance_id,
        waiter_delay=0.01,
        waiter_max_attempts=attempts,
        aws_conn_id="aws_default",
    )


def invocation_status(aws_conn: str, command_id: str) -> str:
    hook = SsmCommandHook(aws_conn_id=aws_conn)
    return hook.conn.get_command_invocation(CommandId=command_id, InstanceId=NODE)["Status"]


def test_serialize_round_trip():
    trigger = SsmCommandInvocationSucceededTrigger(
        command_id="c-1", instance_id=NODE, waiter_delay=1, waiter_max_attempts=2, region_name="eu-west-1"
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "finetune_pipeline.aws.triggers.ssm.SsmCommandInvocationSucceededTrigger"
    assert kwargs == {
        "command_id": "c-1",
        "instance_id": NODE,
        "waiter_delay": 1,
        "waiter_max_attempts": 2,
        "aws_conn_id": "aws_default",
        "region_name": "eu-west-1",
    }
    rebuilt = SsmCommandInvocationSucceededTrigger(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert rebuilt.waiter_args == {"CommandId": "c-1", "InstanceId": NODE}
    assert isinstance(rebuilt.hook(), SsmCommandHook)


def test_fires_only_once_the_invocation_succeeded(aws_conn, command_id, advance_clock, timing, run_trigger):
    ssm = timing["ssm"]
    seen: list[str] = []
    done = threading.Event()

    def move_the_clock() -> None:
        # Step through Pending and InProgress, giving the trigger many polls in each; it must still wait.
        for step in (ssm["command_pending"] / 2, ssm["command_pending"] / 2, ssm["command_in_progress"] / 2):
            advance_clock(step)
            seen.append(invocation_status(aws_conn, command_id))
            assert not done.wait(0.3), f"the trigger fired while the invocation was {seen[-1]}"
        advance_clock(ssm["command_in_progress"])
        seen.append(invocation_status(aws_conn, command_id))

    trigger = trigger_for(command_id)
    run = trigger.run

    async def run_and_mark():
        async for event in run():
            done.set()
            yield event

    trigger.run = run_and_mark
    event = run_trigger(trigger, during=move_the_clock)
    assert seen == ["Pending", "InProgress", "InProgress", "Success"]
    assert event == {"status": "success", "command_id": command_id}


def test_waits_while_the_invocation_does_not_exist_yet(aws_conn, command_id, run_trigger):
    # GetCommandInvocation answers InvocationDoesNotExist for a target the command has no invocation on.
    event = run_trigger(trigger_for(command_id, instance_id="i-0fedcba9876543210", attempts=3))
    assert event["status"] == "error" and event["command_id"] == command_id
    assert "max attempts reached" in event["message"]


def test_error_event_when_the_command_is_cancelled(aws_conn, command_id, run_trigger):
    hook = SsmCommandHook(aws_conn_id=aws_conn)
    event = run_trigger(
        trigger_for(command_id), during=lambda: hook.conn.cancel_command(CommandId=command_id)
    )
    assert invocation_status(aws_conn, command_id) == "Cancelled"
    assert event["status"] == "error" and event["command_id"] == command_id
    assert "did not succeed" in event["message"] and "terminal failure" in event["message"]


def test_error_event_when_the_attempts_run_out(aws_conn, command_id, run_trigger):
    event = run_trigger(trigger_for(command_id, attempts=3))
    assert event["status"] == "error" and event["command_id"] == command_id
    assert "max attempts reached" in event["message"]
    assert invocation_status(aws_conn, command_id) == "Pending"
