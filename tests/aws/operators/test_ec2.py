from __future__ import annotations

import base64

import pytest
from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from finetune_pipeline.aws.operators.ec2 import (
    ABORTED_TAG,
    LAUNCH_TOKEN_TAG,
    Ec2LaunchTrainingInstancesOperator,
    launch_token_base,
    render_user_data,
)
from finetune_pipeline.aws.triggers.ec2 import Ec2InstancesRunningTrigger


@pytest.fixture
def ec2(boto_client):
    return boto_client("ec2")


@pytest.fixture
def image_id(ec2) -> str:
    # One of the Amazon AMIs moto ships; listing them all (DescribeImages by owner) takes seconds.
    return ec2.describe_images(ImageIds=["ami-03cf127a"])["Images"][0]["ImageId"]


@pytest.fixture
def user_data(tmp_path):
    path = tmp_path / "user_data.sh"
    path.write_text(
        '#!/usr/bin/env bash\npython3 train.py --dataset-uri "{{DATASET_URI}}" --version "{{VERSION}}"\n'
    )
    return path


def launch(image_id: str, **overrides) -> Ec2LaunchTrainingInstancesOperator:
    arguments = {
        "task_id": "launch",
        "image_id": image_id,
        "instance_type": "g5.2xlarge",
        "tags": {"Name": "ftp"},
        "waiter_delay": 0.01,
        "waiter_max_attempts": 50,
    }
    return Ec2LaunchTrainingInstancesOperator(**{**arguments, **overrides})


def tagged(ec2, token_base: str) -> list[dict]:
    reservations = ec2.describe_instances(
        Filters=[{"Name": f"tag:{LAUNCH_TOKEN_TAG}", "Values": [f"{token_base}-{n}" for n in range(5)]}]
    )["Reservations"]
    return [instance for reservation in reservations for instance in reservation["Instances"]]


def token_of(context) -> str:
    ti = context["ti"]
    return launch_token_base(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)


def test_launches_once_per_task_run(ec2, image_id, user_data, context):
    operator = launch(
        image_id,
        user_data_path=str(user_data),
        min_count=2,
        max_count=2,
        deferrable=False,
        user_data_variables={"DATASET_URI": "s3://b/datasets", "VERSION": "v3"},
    )
    ids = operator.execute(context)
    assert len(ids) == 2
    assert launch(image_id, deferrable=False).execute(context) == ids  # the retry launches nothing
    instances = tagged(ec2, token_of(context))
    assert sorted(i["InstanceId"] for i in instances) == ids
    assert all(i["State"]["Name"] == "running" and i["InstanceType"] == "g5.2xlarge" for i in instances)
    tags = {t["Key"]: t["Value"] for t in instances[0]["Tags"]}
    assert tags == {"Name": "ftp", LAUNCH_TOKEN_TAG: f"{token_of(context)}-0"}
    raw = ec2.describe_instance_attribute(InstanceId=ids[0], Attribute="userData")["UserData"]["Value"]
    assert 'python3 train.py --dataset-uri "s3://b/datasets" --version "v3"' in base64.b64decode(raw).decode()


def test_the_client_token_is_derived_from_the_dag_run(ec2, image_id, context):
    (instance_id,) = launch(image_id, wait_for_completion=False).execute(context)
    (instance,) = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
    ti = context["ti"]
    assert instance["ClientToken"] == f"{launch_token_base(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)}-0"
    assert len(instance["ClientToken"]) <= 64  # EC2's limit on a client token


@pytest.mark.parametrize("mode", ["error", "drop"])
def test_a_launch_whose_answer_is_lost_launches_once(ec2, image_id, context, faults, mode):
    faults({"service": "ec2", "operation": "RunInstances", "kind": "lost_response", "mode": mode, "limit": 1})
    ids = launch(image_id, wait_for_completion=False, min_count=2, max_count=2).execute(context)
    assert sorted(i["InstanceId"] for i in tagged(ec2, token_of(context))) == ids


def test_a_launch_changed_between_tries_fails_without_retry(ec2, image_id, context):
    """Same task run, other parameters: EC2 refuses the token (IdempotentParameterMismatch)."""
    token = f"{token_of(context)}-0"
    ec2.run_instances(ImageId=image_id, InstanceType="t3.micro", MinCount=1, MaxCount=1, ClientToken=token)
    with pytest.raises(AirflowFailException, match="earlier try of this task run launched with other"):
        launch(image_id, wait_for_completion=False).execute(context)


def test_another_run_launches_its_own_instances(image_id, context, unique):
    first = launch(image_id, deferrable=False).execute(context)
    other_context = {"ti": type(context["ti"])(**{**vars(context["ti"]), "run_id": unique("manual")})}
    assert set(launch(image_id, deferrable=False).execute(other_context)).isdisjoint(first)


def tags_of(instance: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def test_retry_after_the_job_finished_launches_nothing(ec2, image_id, context):
    first = launch(image_id, deferrable=False, min_count=2, max_count=2).execute(context)
    ec2.terminate_instances(InstanceIds=first)  # what the user data's shutdown does when training ends
    retry = launch(image_id, deferrable=False, min_count=2, max_count=2)
    assert retry.execute(context) == first
    instances = tagged(ec2, token_of(context))
    assert sorted(i["InstanceId"] for i in instances) == first  # no second generation
    assert all(ABORTED_TAG not in tags_of(i) for i in instances)


def test_retry_after_our_abort_launches_a_new_generation(ec2, image_id, context):
    operator = launch(image_id, wait_for_completion=False)
    first = operator.execute(context)
    operator.on_kill()
    (aborted,) = ec2.describe_instances(InstanceIds=first)["Reservations"][0]["Instances"]
    assert tags_of(aborted)[ABORTED_TAG] == "true"
    second = launch(image_id, deferrable=False).execute(context)
    assert second != first
    (relaunched,) = ec2.describe_instances(InstanceIds=second)["Reservations"][0]["Instances"]
    assert tags_of(relaunched)[LAUNCH_TOKEN_TAG] == f"{token_of(context)}-1"
    assert relaunched["State"]["Name"] == "running" and ABORTED_TAG not in tags_of(relaunched)
    assert launch(image_id, deferrable=False).execute(context) == second
    live = [i["InstanceId"] for i in tagged(ec2, token_of(context)) if i["State"]["Name"] != "terminated"]
    assert live == second


def test_blocking_wait_that_sees_the_job_end_succeeds(ec2, image_id, context, monkeypatch):
    operator = launch(image_id, deferrable=False)
    client = operator.hook.conn
    run_instances = client.run_instances

    def run_and_finish(**kwargs):
        # A job so short its instance is gone before the first status check.
        response = run_instances(**kwargs)
        client.terminate_instances(InstanceIds=[i["InstanceId"] for i in response["Instances"]])
        return response

    monkeypatch.setattr(client, "run_instances", run_and_finish)
    (instance_id,) = operator.execute(context)
    (instance,) = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
    assert instance["State"]["Name"] == "terminated" and ABORTED_TAG not in tags_of(instance)


def test_blocking_wait_that_fails_aborts_what_it_launched_and_raises(ec2, image_id, context, monkeypatch):
    operator = launch(image_id, deferrable=False, waiter_max_attempts=5)
    client = operator.hook.conn
    run_instances = client.run_instances

    def run_and_stop(**kwargs):
        # A stopped instance never runs: the wait runs out of attempts, as in the deferred case below.
        response = run_instances(**kwargs)
        client.stop_instances(InstanceIds=[i["InstanceId"] for i in response["Instances"]])
        return response

    monkeypatch.setattr(client, "run_instances", run_and_stop)
    with pytest.raises(AirflowException, match="Waiting for EC2 training instances failed: .*max attempts"):
        operator.execute(context)
    (instance,) = tagged(ec2, token_of(context))
    assert instance["State"]["Name"] in {"shutting-down", "terminated"}
    assert tags_of(instance)[ABORTED_TAG] == "true"


def test_deferred_wait_that_sees_the_job_end_succeeds(ec2, image_id, context, run_trigger):
    operator = launch(image_id, deferrable=True, min_count=2, max_count=2)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    ids = deferred.value.trigger.serialize()[1]["instance_ids"]
    ec2.get_waiter("instance_running").wait(InstanceIds=ids[1:], WaiterConfig={"Delay": 0.01})
    ec2.terminate_instances(InstanceIds=ids[:1])  # one node finished its part and shut down
    event = run_trigger(deferred.value.trigger)
    assert event["status"] == "error"  # botocore's running waiter fails on a terminated instance
    assert launch(image_id, deferrable=True).execute_complete(context, event) == ids
    instances = ec2.describe_instances(InstanceIds=ids)["Reservations"][0]["Instances"]
    assert {i["InstanceId"]: i["State"]["Name"] for i in instances} == {
        ids[0]: "terminated",
        ids[1]: "running",
    }
    assert all(ABORTED_TAG not in tags_of(i) for i in instances)


def test_instance_profile_by_name_or_arn(boto_client, image_id, context, unique):
    iam = boto_client("iam")
    profile = iam.create_instance_profile(InstanceProfileName=unique("ftp-train"))["InstanceProfile"]
    operator = launch(image_id, instance_profile=profile["InstanceProfileName"], wait_for_completion=False)
    assert operator._run_instances_arguments("t")["IamInstanceProfile"] == {
        "Name": profile["InstanceProfileName"]
    }
    by_arn = launch(image_id, instance_profile=profile["Arn"], wait_for_completion=False)
    assert by_arn._run_instances_arguments("t")["IamInstanceProfile"] == {"Arn": profile["Arn"]}
    (instance_id,) = by_arn.execute(context)
    described = boto_client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0][
        "Instances"
    ][0]
    assert described["IamInstanceProfile"]["Arn"] == profile["Arn"]


def test_defers_until_running(image_id, context, run_trigger):
    operator = launch(image_id, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, Ec2InstancesRunningTrigger)
    event = run_trigger(trigger)
    assert operator.execute_complete(context, event) == trigger.serialize()[1]["instance_ids"]


def test_failed_wait_aborts_what_it_launched_and_raises(ec2, image_id, context, run_trigger):
    operator = launch(image_id, deferrable=True, min_count=2, max_count=2, waiter_max_attempts=5)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    ids = deferred.value.trigger.serialize()[1]["instance_ids"]
    ec2.stop_instances(InstanceIds=ids[:1])  # a stopped instance never runs: the wait runs out of attempts
    event = run_trigger(deferred.value.trigger)
    assert event["status"] == "error" and event["instance_ids"] == ids
    resumed = launch(image_id, deferrable=True)  # the deferred half runs on a fresh operator
    with pytest.raises(AirflowException, match="Waiting for EC2 training instances failed: .*max attempts"):
        resumed.execute_complete(context, event)
    states = ec2.describe_instances(InstanceIds=ids)["Reservations"][0]["Instances"]
    assert {i["State"]["Name"] for i in states} <= {"shutting-down", "terminated"}
    assert all(tags_of(i)[ABORTED_TAG] == "true" for i in states)
    retry = launch(image_id, wait_for_completion=False, min_count=2, max_count=2).execute(context)
    assert set(retry).isdisjoint(ids)  # the aborted set is not taken for a finished job


def test_on_kill_terminates_launched_instances(ec2, image_id, context):
    operator = launch(image_id, wait_for_completion=False)
    ids = operator.execute(context)
    operator.on_kill()
    states = ec2.describe_instances(InstanceIds=ids)["Reservations"][0]["Instances"]
    assert {i["State"]["Name"] for i in states} <= {"shutting-down", "terminated"}


def test_cleanup_never_hides_the_original_error(image_id, context, monkeypatch):
    operator = launch(image_id, wait_for_completion=False)
    operator.execute(context)

    def refuse(**kwargs):
        raise RuntimeError("terminate refused")

    monkeypatch.setattr(operator.hook, "terminate_instances", refuse)
    with pytest.raises(AirflowException, match="the original failure"):
        operator.execute_complete(
            context,
            {
                "status": "error",
                "message": "the original failure",
                "instance_ids": operator._launched_instance_ids,
            },
        )


def test_user_data_placeholders_must_all_be_given(image_id, user_data, context):
    operator = launch(image_id, user_data_path=str(user_data), user_data_variables={"DATASET_URI": "s3://b"})
    with pytest.raises(ValueError, match="without a value in user_data_variables: VERSION"):
        operator.execute(context)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        launch(image_id, user_data_path="/nonexistent/user_data.sh").execute(context)


def test_render_user_data_and_token():
    assert render_user_data("a={{A}} b={{B}} {{lower}}", {"A": 1, "B": "x"}) == "a=1 b=x {{lower}}"
    token = launch_token_base("dag", "task", "run", -1)
    assert token == launch_token_base("dag", "task", "run", -1) != launch_token_base("dag", "task", "run", 0)
    assert len(f"{token}-99") <= 64  # RunInstances' ClientToken limit


def test_hook_is_the_providers_ec2_hook_as_a_client(image_id):
    hook = launch(image_id).hook
    assert isinstance(hook, EC2Hook) and hook._api_type == "client_type"
