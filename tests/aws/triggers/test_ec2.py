from __future__ import annotations

from datetime import UTC, datetime

from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook

from finetune_pipeline.aws.triggers.ec2 import (
    ABORTED_TAG,
    Ec2InstancesRunningTrigger,
    Ec2JobCompleteTrigger,
    job_status,
)

MARKER = "s3://bucket/models/v1/_SUCCESS"


def run_instances(boto_client, count: int = 1) -> list[str]:
    ec2 = boto_client("ec2")
    instances = ec2.run_instances(ImageId="ami-03cf127a", InstanceType="t3.micro", MinCount=count, MaxCount=count)
    return [instance["InstanceId"] for instance in instances["Instances"]]


def test_serialize_round_trip():
    trigger = Ec2InstancesRunningTrigger(instance_ids=["i-1", "i-2"], waiter_delay=1, waiter_max_attempts=2)
    classpath, kwargs = trigger.serialize()
    assert classpath == "finetune_pipeline.aws.triggers.ec2.Ec2InstancesRunningTrigger"
    assert kwargs == {
        "instance_ids": ["i-1", "i-2"],
        "waiter_delay": 1,
        "waiter_max_attempts": 2,
        "aws_conn_id": "aws_default",
    }
    rebuilt = Ec2InstancesRunningTrigger(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    hook = rebuilt.hook()
    assert isinstance(hook, EC2Hook) and hook._api_type == "client_type"


def test_job_trigger_serialize_round_trip():
    trigger = Ec2JobCompleteTrigger(
        instance_ids=["i-1"], success_marker_uri=MARKER, launched_at="2026-12-01T10:00:00+00:00",
        waiter_delay=5, waiter_max_attempts=7, region_name="eu-west-1",
        botocore_config={"retries": {"mode": "standard"}},
    )  # fmt: skip
    classpath, kwargs = trigger.serialize()
    assert classpath == "finetune_pipeline.aws.triggers.ec2.Ec2JobCompleteTrigger"
    assert Ec2JobCompleteTrigger(**kwargs).serialize() == (classpath, kwargs)
    ec2, s3 = Ec2JobCompleteTrigger(**kwargs).hooks()
    assert ec2._api_type == "client_type" and ec2.region_name == s3.region_name == "eu-west-1"


def test_fires_when_all_instances_run(boto_client, run_trigger):
    ids = run_instances(boto_client, 2)
    trigger = Ec2InstancesRunningTrigger(instance_ids=ids, waiter_delay=0.01, waiter_max_attempts=20)
    assert run_trigger(trigger) == {"status": "success", "instance_ids": ids}


def instance(instance_id: str, state: str, code: str | None = None, message: str | None = None, tags=()) -> dict:
    described = {
        "InstanceId": instance_id,
        "State": {"Name": state},
        "Tags": [{"Key": k, "Value": "true"} for k in tags],
    }
    if code:
        described["StateReason"] = {"Code": code, "Message": message or f"{code}: ..."}
    return described


def test_job_status():
    ids = ["i-1", "i-2"]
    running = [instance("i-1", "running"), instance("i-2", "running")]
    assert not job_status(ids, running, False, MARKER).done
    success = job_status(ids, [instance("i-1", "terminated", "Client.InstanceInitiatedShutdown")], True, MARKER)
    assert (
        success.done
        and success.succeeded
        and success.states
        == {
            "i-1": "terminated (Client.InstanceInitiatedShutdown)",
            "i-2": "gone",
        }
    )
    spot = job_status(
        ids,
        [instance("i-1", "running"), instance("i-2", "terminated", "Server.SpotInstanceTermination", "Spot!")],
        False,
        MARKER,
    )
    assert spot.done and not spot.succeeded and "EC2 itself ended instance i-2 (terminated): Spot!" in spot.message
    aborted = job_status(ids, [instance("i-1", "running"), instance("i-2", "shutting-down", tags=[ABORTED_TAG])],
                         False, MARKER)  # fmt: skip
    assert aborted.done and not aborted.succeeded and "aborted" in aborted.message
    failed = job_status(
        ids, [instance(i, "terminated", "Client.InstanceInitiatedShutdown") for i in ids], False, MARKER
    )
    assert failed.done and not failed.succeeded and "the job failed" in failed.message
    by_api = job_status(ids, [instance(i, "terminated", "Client.UserInitiatedShutdown") for i in ids], False, MARKER)
    assert by_api.done and not by_api.succeeded and "through the EC2 API" in by_api.message
    half = job_status(
        ids, [instance("i-1", "terminated", "Client.InstanceInitiatedShutdown"), running[1]], False, MARKER
    )
    assert not half.done


def test_an_older_marker_is_not_the_jobs(boto_client, bucket, run_trigger):
    boto_client("s3").put_object(Bucket=bucket, Key="models/v1/_SUCCESS", Body=b"")
    ids = run_instances(boto_client)
    boto_client("ec2").terminate_instances(InstanceIds=ids)
    later = datetime(2100, 1, 1, tzinfo=UTC).isoformat()
    marker = f"s3://{bucket}/models/v1/_SUCCESS"
    stale = Ec2JobCompleteTrigger(instance_ids=ids, success_marker_uri=marker, launched_at=later, waiter_delay=0.01)
    event = run_trigger(stale)
    assert event["status"] == "error" and "ended without writing" in event["message"]
    fresh = Ec2JobCompleteTrigger(instance_ids=ids, success_marker_uri=marker, waiter_delay=0.01)
    assert run_trigger(fresh)["status"] == "success"


def test_times_out(boto_client, bucket, run_trigger):
    ids = run_instances(boto_client)
    trigger = Ec2JobCompleteTrigger(
        instance_ids=ids, success_marker_uri=f"s3://{bucket}/none/_SUCCESS", waiter_delay=0.01, waiter_max_attempts=3
    )
    event = run_trigger(trigger)
    assert event["status"] == "error" and event["timed_out"] and "did not end within" in event["message"]
    assert trigger.wait()["timed_out"]
