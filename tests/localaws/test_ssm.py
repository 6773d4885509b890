"""SSM Run Command on localaws: invocations Pending, then InProgress, then Success on the virtual clock, as
ListCommands, GetCommandInvocation and ListCommandInvocations show them; botocore's waiter sees the same."""

from __future__ import annotations

import uuid

import pytest
from botocore.exceptions import WaiterError

NODE = "i-0123456789abcdef0"
OTHER_NODE = "i-0fedcba9876543210"


@pytest.fixture
def ssm(checked_client):
    # SSM's own answers break its model in places (see check_shape); its error shapes have no members.
    return checked_client("ssm", check_errors=False, lenient_strings=True)


@pytest.fixture
def ssm_timing(localaws) -> dict:
    from localaws import control

    return control.get_timing(localaws.endpoint_url)["ssm"]


@pytest.fixture
def send(ssm):
    def send_command(*instance_ids: str, **extra) -> dict:
        return ssm.send_command(
            InstanceIds=list(instance_ids),
            DocumentName="AWS-RunShellScript",
            Comment=f"test-{uuid.uuid4().hex[:8]}",
            Parameters={"commands": ["echo hello"]},
            **extra,
        )["Command"]

    return send_command


def _command(ssm, command_id: str) -> dict:
    (command,) = ssm.list_commands(CommandId=command_id)["Commands"]
    return command


def _invocations(ssm, command_id: str, **extra) -> list[dict]:
    return ssm.list_command_invocations(CommandId=command_id, **extra)["CommandInvocations"]


def test_a_sent_command_is_pending(ssm, send):
    command = send(NODE, OTHER_NODE)
    assert (command["Status"], command["StatusDetails"]) == ("Pending", "Pending")
    assert (command["TargetCount"], command["CompletedCount"]) == (2, 0)
    assert command["InstanceIds"] == [NODE, OTHER_NODE]
    invocation = ssm.get_command_invocation(CommandId=command["CommandId"], InstanceId=NODE)
    assert (invocation["Status"], invocation["ResponseCode"]) == ("Pending", -1)
    assert "ExecutionStartDateTime" not in invocation
    assert [(i["InstanceId"], i["Status"]) for i in _invocations(ssm, command["CommandId"])] == [
        (NODE, "Pending"),
        (OTHER_NODE, "Pending"),
    ]


def test_only_the_requested_instances_get_the_command(ssm, send, boto_client):
    ec2 = boto_client("ec2")
    image = ec2.describe_images(ImageIds=["ami-03cf127a"])["Images"][0]["ImageId"]
    ec2.run_instances(ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1)
    command = send(NODE)
    assert _command(ssm, command["CommandId"])["InstanceIds"] == [NODE]
    assert [i["InstanceId"] for i in _invocations(ssm, command["CommandId"])] == [NODE]


def test_the_command_runs_on_the_clock(ssm, send, advance, ssm_timing):
    command_id = send(NODE)["CommandId"]
    advance(ssm_timing["command_pending"])
    invocation = ssm.get_command_invocation(CommandId=command_id, InstanceId=NODE)
    assert (invocation["Status"], invocation["ResponseCode"]) == ("InProgress", -1)
    assert invocation["ExecutionStartDateTime"].endswith("Z") and "ExecutionEndDateTime" not in invocation
    assert _command(ssm, command_id)["Status"] == "InProgress"
    (listed,) = _invocations(ssm, command_id, Details=True)
    assert [(p["Name"], p["Status"]) for p in listed["CommandPlugins"]] == [
        ("aws:runShellScript", "InProgress")
    ]

    advance(ssm_timing["command_in_progress"])
    invocation = ssm.get_command_invocation(CommandId=command_id, InstanceId=NODE)
    assert (invocation["Status"], invocation["ResponseCode"]) == ("Success", 0)
    assert invocation["ExecutionElapsedTime"] == f"PT{ssm_timing['command_in_progress']:.3f}S"
    command = _command(ssm, command_id)
    assert (command["Status"], command["CompletedCount"]) == ("Success", 1)
    (listed,) = _invocations(ssm, command_id, Details=True)
    assert listed["Status"] == "Success" and listed["CommandPlugins"][0]["ResponseCode"] == 0


def test_botocore_command_executed_waiter(ssm, send, advance, ssm_timing):
    command_id = send(NODE)["CommandId"]
    waiter = ssm.get_waiter("command_executed")
    config = {"Delay": 0.01, "MaxAttempts": 3}
    with pytest.raises(WaiterError, match="Max attempts exceeded"):
        waiter.wait(CommandId=command_id, InstanceId=NODE, WaiterConfig=config)
    advance(ssm_timing["command_pending"] + ssm_timing["command_in_progress"])
    waiter.wait(CommandId=command_id, InstanceId=NODE, WaiterConfig=config)


def test_list_command_invocations_filters_and_pages(ssm, send):
    first, second = send(NODE), send(NODE, OTHER_NODE)
    assert [i["CommandId"] for i in _invocations(ssm, second["CommandId"], InstanceId=OTHER_NODE)] == [
        second["CommandId"]
    ]
    pages = ssm.get_paginator("list_command_invocations").paginate(
        CommandId=second["CommandId"], PaginationConfig={"PageSize": 1}
    )
    assert [[i["InstanceId"] for i in page["CommandInvocations"]] for page in pages] == [[NODE], [OTHER_NODE]]
    mine = {first["CommandId"], second["CommandId"]}
    newest_first = [
        i["CommandId"]
        for i in ssm.list_command_invocations(InstanceId=NODE)["CommandInvocations"]
        if i["CommandId"] in mine
    ]
    assert newest_first == [second["CommandId"], first["CommandId"]]
    with pytest.raises(ssm.exceptions.InvalidCommandId):
        ssm.list_command_invocations(CommandId=str(uuid.uuid4()))


@pytest.mark.parametrize(
    "instance_id",
    [
        "sagemaker-cluster:abcdef123456_controller-i-0123456789abcdef0",  # Session Manager's HyperPod target
        "i-0123",  # too short
        "mi-0123456789",  # mi- takes 17 characters
        "web-01",
    ],
)
def test_instance_ids_outside_the_models_pattern_are_refused(ssm, send, instance_id):
    """As SSM's request validation refuses them (aws/aws-cli#7048 shows the wording); nothing is sent."""
    before = len(ssm.list_commands()["Commands"])
    with pytest.raises(ssm.exceptions.ClientError) as refused:
        send(NODE, instance_id)
    error = refused.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert f"Value '[{NODE}, {instance_id}]' at 'instanceIds' failed to satisfy constraint" in error["Message"]
    assert r"(^i-(\w{8}|\w{17})$)|(^mi-\w{17}$)" in error["Message"]
    assert len(ssm.list_commands()["Commands"]) == before


def test_the_pattern_holds_for_invocations_too(ssm, send):
    command_id = send(NODE)["CommandId"]
    target = "sagemaker-cluster:abcdef123456_controller-i-0123456789abcdef0"
    for call in (
        lambda: ssm.get_command_invocation(CommandId=command_id, InstanceId=target),
        lambda: ssm.list_commands(InstanceId=target),
        lambda: ssm.list_command_invocations(InstanceId=target),
    ):
        with pytest.raises(ssm.exceptions.ClientError, match="ValidationException.*at 'instanceId'"):
            call()


def test_eight_character_and_managed_instance_ids_are_accepted(send):
    assert send("i-0123abcd", "mi-0123456789abcdef0")["InstanceIds"] == ["i-0123abcd", "mi-0123456789abcdef0"]
