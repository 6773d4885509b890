from __future__ import annotations

from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook

from finetune_pipeline.aws.triggers.ec2 import Ec2InstancesRunningTrigger


def run_instances(boto_client, count: int = 1) -> list[str]:
    ec2 = boto_client("ec2")
    image_id = ec2.describe_images(ImageIds=["ami-03cf127a"])["Images"][0]["ImageId"]  # an AMI moto ships
    instances = ec2.run_instances(ImageId=image_id, InstanceType="t3.micro", MinCount=count, MaxCount=count)
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


def test_fires_when_all_instances_run(boto_client, run_trigger):
    ids = run_instances(boto_client, 2)
    trigger = Ec2InstancesRunningTrigger(instance_ids=ids, waiter_delay=0.01, waiter_max_attempts=20)
    assert run_trigger(trigger) == {"status": "success", "instance_ids": ids}


def test_error_event_when_an_instance_is_terminated(boto_client, run_trigger):
    ids = run_instances(boto_client, 2)
    boto_client("ec2").terminate_instances(InstanceIds=ids[:1])
    trigger = Ec2InstancesRunningTrigger(instance_ids=ids, waiter_delay=0.01, waiter_max_attempts=20)
    event = run_trigger(trigger)
    assert event["status"] == "error" and event["instance_ids"] == ids
    assert "did not all start" in event["message"] and "terminal failure" in event["message"]
