"""localaws instances run their user data, shut themselves down, and can be ended by "AWS"
(see localaws.ec2_instances)."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from localaws import control

IMAGE_ID = "ami-03cf127a"  # one of the AMIs moto ships


@pytest.fixture
def ec2(boto_client):
    return boto_client("ec2")


def launch(ec2, user_data: str | None = None, **overrides) -> str:
    arguments = {"ImageId": IMAGE_ID, "InstanceType": "t3.micro", "MinCount": 1, "MaxCount": 1}
    if user_data is not None:
        arguments["UserData"] = user_data
    (instance,) = ec2.run_instances(**{**arguments, **overrides})["Instances"]
    return instance["InstanceId"]


def described(ec2, instance_id: str) -> dict:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def wait_for(condition, timeout: float = 20.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def state_of(ec2, instance_id: str) -> str:
    return described(ec2, instance_id)["State"]["Name"]


def test_user_data_runs_and_its_shutdown_terminates(ec2, s3, localaws):
    bucket = f"ud-{time.time_ns()}"
    s3.create_bucket(Bucket=bucket)
    script = (
        "#!/bin/bash\nset -e\necho hello from the node\n"
        f"python3 -c \"import boto3; boto3.client('s3').put_object(Bucket='{bucket}', Key='ran', Body=b'1')\"\n"
        "shutdown -h now\necho never printed\n"
    )
    instance_id = launch(ec2, script, InstanceInitiatedShutdownBehavior="terminate")
    wait_for(lambda: state_of(ec2, instance_id) == "terminated", what="the shutdown")
    instance = described(ec2, instance_id)
    assert instance["StateReason"] == {
        "Code": "Client.InstanceInitiatedShutdown",
        "Message": "Client.InstanceInitiatedShutdown: Instance initiated shutdown",
    }
    assert s3.get_object(Bucket=bucket, Key="ran")["Body"].read() == b"1"
    wait_for(lambda: not localaws.app.nodes.running(instance_id), what="the node's end")
    console = ec2.get_console_output(InstanceId=instance_id)["Output"]  # botocore decodes the base64
    assert "hello from the node" in console and "never printed" not in console


def test_shutdown_without_terminate_behaviour_stops(ec2):
    instance_id = launch(ec2, "#!/bin/sh\nshutdown -h now\n")  # the default behaviour is stop
    wait_for(lambda: state_of(ec2, instance_id) == "stopped", what="the stop")
    assert described(ec2, instance_id)["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"


def test_a_script_that_ends_without_shutdown_leaves_the_instance_running(ec2, localaws):
    instance_id = launch(ec2, "#!/bin/sh\nexit 3\n", InstanceInitiatedShutdownBehavior="terminate")
    wait_for(lambda: localaws.app.nodes.exit_code(instance_id) == 3, what="the script's end")
    assert state_of(ec2, instance_id) == "running"


def test_user_data_that_is_not_a_script_runs_nothing(ec2, localaws):
    instance_id = launch(ec2, "#cloud-config\nruncmd: [poweroff]\n")
    assert localaws.app.nodes.exit_code(instance_id) is None and not localaws.app.nodes.running(instance_id)
    assert state_of(ec2, instance_id) == "running"


def test_terminate_instances_stops_the_node(ec2, localaws):
    instance_id = launch(ec2, "#!/bin/sh\nsleep 600\n", InstanceInitiatedShutdownBehavior="terminate")
    wait_for(lambda: localaws.app.nodes.running(instance_id), what="the node's start")
    ec2.terminate_instances(InstanceIds=[instance_id])
    wait_for(lambda: not localaws.app.nodes.running(instance_id), what="the node's end")
    assert described(ec2, instance_id)["StateReason"]["Code"] == "Client.UserInitiatedShutdown"


def test_aws_ends_an_instance_with_a_server_reason(ec2, localaws):
    instance_id = launch(ec2, "#!/bin/sh\nsleep 600\n", InstanceInitiatedShutdownBehavior="terminate")
    answer = control.interrupt_instance(localaws.endpoint_url, instance_id, "Server.InsufficientInstanceCapacity")
    assert answer["state"] == "terminated"
    instance = described(ec2, instance_id)
    assert instance["State"]["Name"] == "terminated"
    assert instance["StateReason"]["Code"] == "Server.InsufficientInstanceCapacity"
    wait_for(lambda: not localaws.app.nodes.running(instance_id), what="the node's end")
    spot = launch(ec2)
    assert control.interrupt_instance(localaws.endpoint_url, spot, "Server.ScheduledStop")["state"] == "stopped"
    with pytest.raises(ValueError, match="code must be one of"):
        control.interrupt_instance(localaws.endpoint_url, spot, "Client.UserInitiatedShutdown")
    with pytest.raises(ValueError, match="404"):
        control.interrupt_instance(localaws.endpoint_url, "i-0123456789abcdef0", "Server.InternalError")


def code_of(call) -> str:
    with pytest.raises(ClientError) as refused:
        call()
    return refused.value.response["Error"]["Code"]


def test_efa_needs_an_instance_type_that_supports_it(ec2):
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    efa = [{"DeviceIndex": 0, "SubnetId": subnet, "InterfaceType": "efa"}]
    assert code_of(lambda: launch(ec2, NetworkInterfaces=efa)) == "InvalidParameterCombination"
    assert (
        code_of(lambda: launch(ec2, InstanceType="p4d.24xlarge", NetworkInterfaces=efa, SecurityGroupIds=["sg-1"]))
        == "InvalidParameterCombination"
    )
    assert launch(ec2, InstanceType="p4d.24xlarge", NetworkInterfaces=efa).startswith("i-")


def test_a_capacity_block_launch_names_its_reservation(ec2, localaws):
    block = control.add_capacity_block(localaws.endpoint_url, "p5.48xlarge", "us-east-1a")
    market = {"MarketType": "capacity-block"}
    assert code_of(lambda: launch(ec2, InstanceType="p5.48xlarge", InstanceMarketOptions=market)) == (
        "InvalidParameterCombination"
    )
    instance_id = launch(
        ec2,
        InstanceType="p5.48xlarge",
        InstanceMarketOptions=market,
        CapacityReservationSpecification={"CapacityReservationTarget": {"CapacityReservationId": block}},
    )
    assert described(ec2, instance_id)["InstanceLifecycle"] == "capacity-block"


def test_the_deep_learning_ami_parameter_resolves_to_an_image(boto_client, ec2):
    name = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
    image_id = boto_client("ssm").get_parameter(Name=name)["Parameter"]["Value"]
    assert ec2.describe_images(ImageIds=[image_id])["Images"][0]["ImageId"] == image_id
    assert launch(ec2, ImageId=image_id).startswith("i-")
    there = boto_client("ssm", region_name="eu-west-1").get_parameter(Name=name)["Parameter"]["Value"]
    assert there == image_id


def test_every_instance_of_a_launch_gets_the_instance_profile(boto_client, ec2):
    name = f"ftp-{time.time_ns()}"
    profile = boto_client("iam").create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    instances = ec2.run_instances(ImageId=IMAGE_ID, MinCount=3, MaxCount=3, IamInstanceProfile={"Name": name})[
        "Instances"
    ]
    ids = [i["InstanceId"] for i in instances]
    described = ec2.describe_instances(InstanceIds=ids)["Reservations"][0]["Instances"]
    assert [i["IamInstanceProfile"]["Arn"] for i in described] == [profile["Arn"]] * 3


def test_user_data_over_16_kb_is_refused(ec2):
    assert code_of(lambda: launch(ec2, "#!/bin/sh\n" + "#" * 16_384)) == "InvalidParameterValue"


def test_the_node_reads_its_instance_metadata(ec2, localaws):
    script = (
        "#!/bin/bash\nset -e\nbase=${AWS_EC2_METADATA_SERVICE_ENDPOINT%/}\n"
        'token=$(curl -sf -X PUT "$base/latest/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 60")\n'
        "for item in instance-id ami-launch-index placement/region; do\n"
        '  echo "$item=$(curl -sf -H "X-aws-ec2-metadata-token: $token" "$base/latest/meta-data/$item")"\n'
        "done\n"
    )
    instances = ec2.run_instances(ImageId=IMAGE_ID, MinCount=2, MaxCount=2, UserData=script)["Instances"]
    second = instances[1]["InstanceId"]
    wait_for(lambda: localaws.app.nodes.exit_code(second) == 0, what="the script's end")
    console = ec2.get_console_output(InstanceId=second)["Output"]
    assert f"instance-id={second}\nami-launch-index=1\nplacement/region=us-east-1\n" in console


def test_an_unknown_shutdown_behaviour_is_refused(ec2):
    assert code_of(lambda: launch(ec2, InstanceInitiatedShutdownBehavior="hibernate")) == "InvalidParameterValue"
