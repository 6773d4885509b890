from __future__ import annotations

import uuid

import pytest

from finetune_pipeline.aws.hooks.ssm import SsmCommandHook


@pytest.fixture
def hook(aws_conn) -> SsmCommandHook:
    return SsmCommandHook(aws_conn_id=aws_conn)


def test_send_and_list_commands(hook, unique):
    # Instance IDs of their own (SSM refuses anything but i-/mi- IDs), so no other test's commands are listed.
    target, other = (f"i-{uuid.uuid4().hex[:17]}" for _ in range(2))
    sent = hook.send_command(
        InstanceIds=[target],
        DocumentName="AWS-RunShellScript",
        Comment="finetune-job:k1",
        Parameters={"commands": ["echo hi"]},
    )
    hook.send_command(
        InstanceIds=[other], DocumentName="AWS-RunShellScript", Parameters={"commands": ["true"]}
    )
    commands = hook.list_commands(instance_id=target)
    assert [(c["CommandId"], c["Comment"]) for c in commands] == [(sent["CommandId"], "finetune-job:k1")]
    assert sent["CommandId"] in {c["CommandId"] for c in hook.list_commands()}
    invocation = hook.get_command_invocation(sent["CommandId"], target)
    assert invocation["Status"] in {"Pending", "InProgress", "Success"}
