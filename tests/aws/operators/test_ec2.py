from __future__ import annotations

import base64
import io
import json
import time
import zipfile
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from finetune_pipeline.aws.hooks.ec2 import Ec2InstancesHook
from finetune_pipeline.aws.operators.ec2 import (
    ABORTED_TAG,
    LAUNCH_TOKEN_BASE_TAG,
    LAUNCH_TOKEN_TAG,
    Ec2LaunchTrainingInstancesOperator,
    Ec2TerminateTrainingInstancesOperator,
    launch_token_base,
    render_user_data,
)
from finetune_pipeline.aws.triggers.ec2 import Ec2InstancesRunningTrigger, Ec2JobCompleteTrigger
from localaws import control
from localaws.ssm_public_parameters import DLAMI_IMAGE_ID

USER_DATA = Path(__file__).resolve().parents[3] / "include" / "scripts" / "ec2" / "user_data.sh"
IMAGE_ID = "ami-03cf127a"  # one of the AMIs moto ships
# A fake training bundle: train.py as the bundle contract has it (rank 0 writes _SUCCESS to --output-uri),
# failing when the hyperparameters say so, and sleeping when told (so a test can act while it trains).
FAKE_TRAIN = """
import argparse, json, os, sys, time
import boto3
parser = argparse.ArgumentParser()
for name in ("--dataset-uri", "--dataset-version", "--output-uri", "--hyperparameters", "--checkpoint-dir"):
    parser.add_argument(name)
args = parser.parse_args()
hyperparameters = json.loads(args.hyperparameters or "{}")
print(f"fake trainer: version {args.dataset_version}, rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}")
time.sleep(hyperparameters.get("sleep", 0))
if hyperparameters.get("fail"):
    print("fake trainer: loss is NaN, giving up")
    sys.exit(1)
if os.environ["RANK"] == "0":
    bucket, _, prefix = args.output_uri.removeprefix("s3://").partition("/")
    boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/_SUCCESS", Body=b"")
print("fake trainer: done")
"""


@pytest.fixture
def ec2(boto_client):
    return boto_client("ec2")


@pytest.fixture
def user_data(tmp_path):
    path = tmp_path / "user_data.sh"
    path.write_text("#!/usr/bin/env bash\nexit 0\nDATASET_URI={{DATASET_URI}} VERSION={{VERSION}}\n")
    return path


@pytest.fixture
def bundle(boto_client, bucket) -> str:
    """The fake training bundle in S3; returns its URI."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("train.py", FAKE_TRAIN)
        zipped.writestr("requirements.txt", "")
    boto_client("s3").put_object(Bucket=bucket, Key="code/abc/training.zip", Body=archive.getvalue())
    return f"s3://{bucket}/code/abc/training.zip"


def launch(**overrides) -> Ec2LaunchTrainingInstancesOperator:
    arguments = {
        "task_id": "launch",
        "image_id": IMAGE_ID,
        "instance_type": "g5.2xlarge",
        "tags": {"Name": "ftp"},
        "waiter_delay": 0.05,
        "waiter_max_attempts": 400,
    }
    return Ec2LaunchTrainingInstancesOperator(**{**arguments, **overrides})


def job(
    bucket: str, bundle: str, count: int = 1, hyperparameters: dict | None = None, modules: str = "boto3", **overrides
):
    """A launch of the real user data with the fake bundle, waiting for the job's marker."""
    output = f"s3://{bucket}/models/v1"
    variables = {
        "BUNDLE_URI": bundle,
        "DATASET_URI": f"s3://{bucket}/datasets",
        "DATASET_VERSION": "v1",
        "OUTPUT_URI": output,
        "HYPERPARAMETERS": json.dumps(hyperparameters or {}),
        "CHECKPOINT_DIR": "",
        "WORLD_SIZE": count,
        "AWS_REGION": "us-east-1",
        "INSTALLED_MODULES": modules,
    }
    return launch(
        instance_type="t3.micro",
        user_data_path=str(USER_DATA),
        user_data_variables=variables,
        success_marker_uri=f"{output}/_SUCCESS",
        min_count=count,
        max_count=count,
        **overrides,
    )


def tagged(ec2, token_base: str) -> list[dict]:
    reservations = ec2.describe_instances(Filters=[{"Name": f"tag:{LAUNCH_TOKEN_BASE_TAG}", "Values": [token_base]}])
    return [instance for reservation in reservations["Reservations"] for instance in reservation["Instances"]]


def token_of(context) -> str:
    ti = context["ti"]
    return launch_token_base(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)


def tags_of(instance: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def states(ec2, ids: list[str]) -> dict[str, str]:
    instances = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    return {i["InstanceId"]: i["State"]["Name"] for r in instances for i in r["Instances"]}


def deferred(operator, context) -> Ec2JobCompleteTrigger:
    with pytest.raises(TaskDeferred) as deferral:
        operator.execute(context)
    return deferral.value.trigger


# The launch


def test_launches_once_per_task_run(ec2, user_data, context):
    operator = launch(
        user_data_path=str(user_data),
        min_count=2,
        max_count=2,
        deferrable=False,
        user_data_variables={"DATASET_URI": "s3://b/datasets", "VERSION": "v3 'quoted'"},
    )
    ids = operator.execute(context)
    assert len(ids) == 2
    assert launch(deferrable=False).execute(context) == ids  # the retry launches nothing
    instances = tagged(ec2, token_of(context))
    assert sorted(i["InstanceId"] for i in instances) == ids
    assert all(i["InstanceType"] == "g5.2xlarge" for i in instances)
    assert tags_of(instances[0]) == {
        "Name": "ftp",
        LAUNCH_TOKEN_TAG: f"{token_of(context)}-0",
        LAUNCH_TOKEN_BASE_TAG: token_of(context),
    }
    raw = ec2.describe_instance_attribute(InstanceId=ids[0], Attribute="userData")["UserData"]["Value"]
    assert "DATASET_URI=s3://b/datasets VERSION='v3 '\"'\"'quoted'\"'\"''" in base64.b64decode(raw).decode()
    behaviour = ec2.describe_instance_attribute(InstanceId=ids[0], Attribute="instanceInitiatedShutdownBehavior")
    assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"


def test_the_client_token_is_derived_from_the_dag_run(ec2, context):
    (instance_id,) = launch(wait_for_completion=False).execute(context)
    (instance,) = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
    assert instance["ClientToken"] == f"{token_of(context)}-0"
    assert len(instance["ClientToken"]) <= 64  # EC2's limit on a client token


@pytest.mark.parametrize("mode", ["error", "drop"])
def test_a_launch_whose_answer_is_lost_launches_once(ec2, context, faults, mode):
    faults({"service": "ec2", "operation": "RunInstances", "kind": "lost_response", "mode": mode, "limit": 1})
    ids = launch(wait_for_completion=False, min_count=2, max_count=2).execute(context)
    assert sorted(i["InstanceId"] for i in tagged(ec2, token_of(context))) == ids


def test_a_launch_changed_between_tries_fails_without_retry(ec2, context):
    """Same task run, other parameters: EC2 refuses the token (IdempotentParameterMismatch)."""
    token = f"{token_of(context)}-0"
    ec2.run_instances(ImageId=IMAGE_ID, InstanceType="t3.micro", MinCount=1, MaxCount=1, ClientToken=token)
    with pytest.raises(AirflowFailException, match="earlier try of this task run launched with other"):
        launch(wait_for_completion=False).execute(context)


def test_another_run_launches_its_own_instances(context, unique):
    first = launch(deferrable=False).execute(context)
    other_context = {"ti": type(context["ti"])(**{**vars(context["ti"]), "run_id": unique("manual")})}
    assert set(launch(deferrable=False).execute(other_context)).isdisjoint(first)


def test_the_deep_learning_ami_by_default(ec2, context):
    (instance_id,) = launch(image_id=None, wait_for_completion=False).execute(context)
    assert ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["ImageId"] == (
        DLAMI_IMAGE_ID
    )


def test_a_placement_group_is_created_once_under_a_lost_answer(ec2, context, faults, unique, localaws):
    name = unique("ftp-cluster")
    faults({"service": "ec2", "operation": "CreatePlacementGroup", "kind": "lost_response", "limit": 1})
    (instance_id,) = launch(placement_group=name, wait_for_completion=False).execute(context)
    assert control.get_faults(localaws.endpoint_url)["calls"]["ec2.CreatePlacementGroup"] == 2  # botocore retried
    (group,) = ec2.describe_placement_groups(GroupNames=[name])["PlacementGroups"]
    assert group["Strategy"] == "cluster"
    (instance,) = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
    assert instance["Placement"]["GroupName"] == name
    # The next task run finds the group and launches into it.
    other = {"ti": type(context["ti"])(**{**vars(context["ti"]), "run_id": unique("manual")})}
    launch(placement_group=name, wait_for_completion=False).execute(other)
    assert control.get_faults(localaws.endpoint_url)["calls"]["ec2.CreatePlacementGroup"] == 2


def test_efa_interfaces(ec2, context):
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    group = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    operator = launch(instance_type="p4d.24xlarge", efa_interfaces=2, subnet_id=subnet, security_group_ids=[group])
    arguments = operator._run_instances_arguments("t", "b", IMAGE_ID)
    assert "SubnetId" not in arguments and "SecurityGroupIds" not in arguments
    assert arguments["NetworkInterfaces"] == [
        {"NetworkCardIndex": card, "DeviceIndex": index, "SubnetId": subnet, "Groups": [group],
         "InterfaceType": "efa", "DeleteOnTermination": True}
        for card, index in ((0, 0), (1, 1))
    ]  # fmt: skip
    one = launch(instance_type="p4d.24xlarge", efa_interfaces=1, subnet_id=subnet, security_group_ids=[group])
    assert one.execute(context)[0].startswith("i-")
    with pytest.raises(ValueError, match="need subnet_id and security_group_ids"):
        launch(efa_interfaces=1)._run_instances_arguments("t", "b", IMAGE_ID)


def test_a_capacity_block(ec2, context, localaws):
    block = control.add_capacity_block(localaws.endpoint_url, "p5.48xlarge", "us-east-1a")
    operator = launch(
        instance_type="p5.48xlarge", capacity_reservation_id=block, capacity_block=True, wait_for_completion=False,
    )  # fmt: skip
    arguments = operator._run_instances_arguments("t", "b", IMAGE_ID)
    assert arguments["InstanceMarketOptions"] == {"MarketType": "capacity-block"}
    assert arguments["CapacityReservationSpecification"] == {
        "CapacityReservationTarget": {"CapacityReservationId": block}
    }
    (instance_id,) = operator.execute(context)
    assert (
        ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["InstanceLifecycle"]
        == "capacity-block"
    )
    with pytest.raises(ValueError, match="capacity_block needs capacity_reservation_id"):
        launch(capacity_block=True)._run_instances_arguments("t", "b", IMAGE_ID)


def test_instance_profile_by_name_or_arn(boto_client, context, unique):
    iam = boto_client("iam")
    profile = iam.create_instance_profile(InstanceProfileName=unique("ftp-train"))["InstanceProfile"]
    by_name = launch(instance_profile=profile["InstanceProfileName"], wait_for_completion=False)
    assert by_name._run_instances_arguments("t", "b", IMAGE_ID)["IamInstanceProfile"] == {
        "Name": profile["InstanceProfileName"]
    }
    by_arn = launch(instance_profile=profile["Arn"], wait_for_completion=False)
    assert by_arn._run_instances_arguments("t", "b", IMAGE_ID)["IamInstanceProfile"] == {"Arn": profile["Arn"]}
    (instance_id,) = by_arn.execute(context)
    described = boto_client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert described["IamInstanceProfile"]["Arn"] == profile["Arn"]


def test_user_data_placeholders_and_values_must_match(user_data, context):
    with pytest.raises(ValueError, match="without a value in user_data_variables: VERSION"):
        launch(user_data_path=str(user_data), user_data_variables={"DATASET_URI": "s3://b"}).execute(context)
    with pytest.raises(ValueError, match="has no placeholder for: VERSOIN"):
        launch(
            user_data_path=str(user_data), user_data_variables={"DATASET_URI": "s3://b", "VERSION": 1, "VERSOIN": 1}
        ).execute(context)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        launch(user_data_path="/nonexistent/user_data.sh").execute(context)


def test_user_data_over_16_kb_is_refused(tmp_path, context):
    path = tmp_path / "big.sh"
    path.write_text("#!/bin/sh\n" + "#" * 16_384)
    with pytest.raises(ValueError, match="at most 16384"):
        launch(user_data_path=str(path)).execute(context)


def test_render_user_data_and_token():
    assert render_user_data("a={{A}} b={{B}} {{lower}}", {"A": 1, "B": "x y"}) == "a=1 b='x y' {{lower}}"
    token = launch_token_base("dag", "task", "run", -1)
    assert token == launch_token_base("dag", "task", "run", -1) != launch_token_base("dag", "task", "run", 0)
    assert len(f"{token}-99") <= 64  # RunInstances' ClientToken limit


def test_the_shipped_user_data_renders_with_its_variables(bucket):
    operator = job(bucket, "s3://b/code/training.zip")
    text = operator._user_data()
    assert text.startswith("#!/bin/bash") and "{{" not in text


def test_hook_is_the_providers_ec2_hook_as_a_client():
    hook = launch().hook
    assert isinstance(hook, Ec2InstancesHook) and hook._api_type == "client_type"


# Waiting for the instances to run (no marker)


def test_defers_until_running_without_a_marker(context, run_trigger):
    operator = launch(deferrable=True)
    trigger = deferred(operator, context)
    assert isinstance(trigger, Ec2InstancesRunningTrigger)
    event = run_trigger(trigger)
    assert operator.execute_complete(context, event) == trigger.serialize()[1]["instance_ids"]


def test_a_stopped_instance_fails_the_running_wait_and_is_aborted(ec2, context, run_trigger):
    operator = launch(deferrable=True, min_count=2, max_count=2, waiter_max_attempts=5)
    trigger = deferred(operator, context)
    ids = trigger.serialize()[1]["instance_ids"]
    ec2.stop_instances(InstanceIds=ids[:1])  # a stopped instance never runs: the wait runs out of attempts
    event = run_trigger(trigger)
    assert event["status"] == "error" and event["instance_ids"] == ids
    resumed = launch(deferrable=True)  # the deferred half runs on a fresh operator
    with pytest.raises(AirflowException, match="EC2 training instances failed: .*max attempts"):
        resumed.execute_complete(context, event)
    instances = ec2.describe_instances(InstanceIds=ids)["Reservations"][0]["Instances"]
    assert {i["State"]["Name"] for i in instances} <= {"shutting-down", "terminated"}
    assert all(tags_of(i)[ABORTED_TAG] == "true" for i in instances)
    retry = launch(wait_for_completion=False, min_count=2, max_count=2).execute(context)
    assert set(retry).isdisjoint(ids)  # the aborted set is not taken for a finished job


def test_retry_after_the_instances_shut_themselves_down_launches_nothing(ec2, tmp_path, context):
    script = tmp_path / "done.sh"
    script.write_text("#!/bin/sh\nshutdown -h now\n")
    first = launch(user_data_path=str(script), wait_for_completion=False, min_count=2, max_count=2).execute(context)
    deadline = time.monotonic() + 20
    while set(states(ec2, first).values()) != {"terminated"} and time.monotonic() < deadline:
        time.sleep(0.05)
    retry = launch(user_data_path=str(script), deferrable=False, min_count=2, max_count=2)
    assert retry.execute(context) == first
    assert sorted(i["InstanceId"] for i in tagged(ec2, token_of(context))) == first  # no second generation


def test_on_kill_terminates_launched_instances(ec2, context):
    operator = launch(wait_for_completion=False)
    ids = operator.execute(context)
    operator.on_kill()
    assert set(states(ec2, ids).values()) <= {"shutting-down", "terminated"}


def test_cleanup_never_hides_the_original_error(context, monkeypatch):
    operator = launch(wait_for_completion=False)
    operator.execute(context)

    def refuse(**kwargs):
        raise RuntimeError("terminate refused")

    monkeypatch.setattr(operator.hook, "terminate_instances", refuse)
    event = {"status": "error", "message": "the original failure", "instance_ids": operator._launched_instance_ids}
    with pytest.raises(AirflowException, match="the original failure"):
        operator.execute_complete(context, event)


# The job, run by the shipped user data on localaws nodes with a fake bundle


def test_a_job_that_trains_succeeds(ec2, boto_client, bucket, bundle, context, run_trigger, localaws):
    operator = job(bucket, bundle, count=2, deferrable=True)
    trigger = deferred(operator, context)
    event = run_trigger(trigger, timeout=60)
    assert event["status"] == "success", event
    ids = operator.execute_complete(context, event)
    assert boto_client("s3").head_object(Bucket=bucket, Key="models/v1/_SUCCESS")
    deadline = time.monotonic() + 20
    while set(states(ec2, ids).values()) != {"terminated"} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(states(ec2, ids).values()) == {"terminated"}  # each shut itself down
    (second,) = [i["InstanceId"] for i in tagged(ec2, token_of(context)) if i["AmiLaunchIndex"] == 1]
    console = ec2.get_console_output(InstanceId=second)["Output"]
    assert "fake trainer: version v1, rank 1 of 2" in console  # the rank came from the instance metadata
    assert job(bucket, bundle, count=2, deferrable=True).execute(context) == ids  # a retry: already finished


def test_a_node_lacking_a_module_of_the_bundle_installs_its_requirements(ec2, bucket, bundle, context):
    job(bucket, bundle, modules="boto3, a_module_this_node_lacks", deferrable=False).execute(context)
    (instance,) = tagged(ec2, token_of(context))
    console = ec2.get_console_output(InstanceId=instance["InstanceId"])["Output"]
    assert "requirements.txt" in console.split("installing", 1)[1].splitlines()[0]


def test_a_node_with_every_module_installs_nothing(ec2, bucket, bundle, context):
    job(bucket, bundle, deferrable=False).execute(context)
    (instance,) = tagged(ec2, token_of(context))
    console = ec2.get_console_output(InstanceId=instance["InstanceId"])["Output"]
    assert "fake trainer: done" in console and "installing" not in console


def test_a_job_that_fails_fails_with_its_console_output(ec2, bucket, bundle, context, run_trigger):
    operator = job(bucket, bundle, hyperparameters={"fail": True}, deferrable=False)
    with pytest.raises(AirflowException) as failed:
        operator.execute(context)
    message = str(failed.value)
    assert "Every instance ended without writing" in message and "the job failed" in message
    assert "fake trainer: loss is NaN, giving up" in message  # the console output's tail
    (instance,) = tagged(ec2, token_of(context))
    assert instance["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"


def test_a_capacity_interruption_fails_with_the_reason(ec2, bucket, bundle, context, run_trigger, localaws):
    operator = job(bucket, bundle, count=2, hyperparameters={"sleep": 120}, deferrable=True)
    trigger = deferred(operator, context)
    ids = trigger.instance_ids

    def interrupt():
        control.interrupt_instance(localaws.endpoint_url, ids[1], "Server.InsufficientInstanceCapacity")

    event = run_trigger(trigger, during=interrupt, timeout=60)
    assert event["status"] == "error"
    with pytest.raises(AirflowException, match=f"EC2 itself ended instance {ids[1]}.*Insufficient capacity"):
        job(bucket, bundle, deferrable=True).execute_complete(context, event)
    assert set(states(ec2, ids).values()) <= {"shutting-down", "terminated"}  # the other one is aborted
    deadline = time.monotonic() + 20
    while any(localaws.app.nodes.running(i) for i in ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(localaws.app.nodes.running(i) for i in ids)
    # A retry launches a new set (the ended one did not finish), which trains; the next retry launches nothing.
    relaunched = job(bucket, bundle, count=2, deferrable=False).execute(context)
    assert set(relaunched).isdisjoint(ids)
    assert job(bucket, bundle, count=2, deferrable=False).execute(context) == relaunched
    assert len(tagged(ec2, token_of(context))) == 4  # two generations of two


def test_kill_while_deferred_then_retry_then_teardown(ec2, bucket, bundle, context, localaws):
    trigger = deferred(job(bucket, bundle, count=2, hyperparameters={"sleep": 120}, deferrable=True), context)
    ids = trigger.instance_ids
    # The task is killed while deferred: nothing ran on_kill. Its retry finds the same instances.
    retry_trigger = deferred(job(bucket, bundle, count=2, hyperparameters={"sleep": 120}, deferrable=True), context)
    assert retry_trigger.instance_ids == ids
    assert sorted(i["InstanceId"] for i in tagged(ec2, token_of(context))) == ids  # one set, not two
    # Killed again; the teardown (all_done) finds them by tag and terminates them.
    # The context is the launch task's; the teardown names that task.
    teardown = Ec2TerminateTrainingInstancesOperator(task_id="teardown", launch_task_id=context["ti"].task_id)
    assert teardown.execute(context) == ids
    assert set(states(ec2, ids).values()) <= {"shutting-down", "terminated"}
    assert all(tags_of(i)[ABORTED_TAG] == "true" for i in tagged(ec2, token_of(context)))
    deadline = time.monotonic() + 20
    while any(localaws.app.nodes.running(i) for i in ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(localaws.app.nodes.running(i) for i in ids)
    assert teardown.execute(context) == []  # idempotent


def test_teardown_of_a_run_that_launched_nothing(context):
    assert Ec2TerminateTrainingInstancesOperator(task_id="teardown", launch_task_id="launch").execute(context) == []
