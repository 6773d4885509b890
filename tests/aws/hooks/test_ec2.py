from __future__ import annotations

import pytest

from finetune_pipeline.aws.hooks.ec2 import DLAMI_PARAMETER, Ec2InstancesHook, Ec2PreflightError
from localaws.ssm_public_parameters import DLAMI_IMAGE_ID


@pytest.fixture
def hook():
    return Ec2InstancesHook(aws_conn_id="aws_default")


def subnet_in(boto_client, zone: str) -> str:
    subnets = boto_client("ec2").describe_subnets(Filters=[{"Name": "availability-zone", "Values": [zone]}])
    return subnets["Subnets"][0]["SubnetId"]


def test_resolves_the_deep_learning_ami(hook):
    assert hook.resolve_image_id() == hook.resolve_image_id(DLAMI_PARAMETER) == DLAMI_IMAGE_ID
    with pytest.raises(ValueError, match="does not exist"):
        hook.resolve_image_id("/aws/service/deeplearning/ami/x86_64/no-such-ami/latest/ami-id")


def test_ensure_placement_group(hook, unique):
    name = unique("pg")
    created = hook.ensure_placement_group(name)
    assert created["Strategy"] == "cluster"
    assert hook.ensure_placement_group(name)["GroupId"] == created["GroupId"]
    with pytest.raises(ValueError, match="exists with strategy cluster, not spread"):
        hook.ensure_placement_group(name, "spread")
    assert hook.get_placement_group(unique("pg")) is None


def test_preflight_passes(hook, boto_client, unique):
    profile = boto_client("iam").create_instance_profile(InstanceProfileName=unique("ftp"))["InstanceProfile"]
    notes = hook.check_launch(
        instance_type="p4d.24xlarge",
        instance_count=2,
        subnet_id=subnet_in(boto_client, "us-east-1a"),
        instance_profile=profile["Arn"],
        efa=True,
    )
    assert notes == []


def test_preflight_says_every_problem(hook, boto_client, unique):
    missing = unique("missing")
    with pytest.raises(Ec2PreflightError) as failed:
        hook.check_launch(instance_type="g9.huge", instance_count=0, instance_profile=missing)
    assert failed.value.problems == [
        "instance count must be at least 1, got 0",
        "instance type 'g9.huge' does not exist in us-east-1",
        f"IAM instance profile {missing} does not exist",
    ]
    with pytest.raises(Ec2PreflightError, match="g5.2xlarge is not offered in Availability Zone us-east-1e"):
        hook.check_launch(instance_type="g5.2xlarge", subnet_id=subnet_in(boto_client, "us-east-1e"))
    with pytest.raises(Ec2PreflightError, match="t3.micro does not support EFA"):
        hook.check_launch(instance_type="t3.micro", subnet_id=subnet_in(boto_client, "us-east-1a"), efa=True)
    with pytest.raises(Ec2PreflightError, match="subnet subnet-0000 does not exist"):
        hook.check_launch(instance_type="t3.micro", subnet_id="subnet-0000")


def test_console_output_of_an_instance_without_a_script(hook, boto_client):
    (instance,) = boto_client("ec2").run_instances(ImageId="ami-03cf127a", MinCount=1, MaxCount=1)["Instances"]
    assert isinstance(hook.console_output(instance["InstanceId"]), str)


def test_describe_skips_instances_that_no_longer_show(hook, boto_client):
    (instance,) = boto_client("ec2").run_instances(ImageId="ami-03cf127a", MinCount=1, MaxCount=1)["Instances"]
    described = hook.describe([instance["InstanceId"], "i-0123456789abcdef0"])
    assert [i["InstanceId"] for i in described] == [instance["InstanceId"]]
    assert hook.describe([]) == []


def test_preflight_of_a_capacity_block(hook, boto_client, localaws):
    from localaws import control

    subnet = subnet_in(boto_client, "us-east-1a")
    block = control.add_capacity_block(localaws.endpoint_url, "p5.48xlarge", "us-east-1a", instance_count=2)
    launch = {"instance_type": "p5.48xlarge", "subnet_id": subnet, "capacity_reservation_id": block}
    assert hook.check_launch(**launch, instance_count=2, capacity_block=True) == []
    with pytest.raises(Ec2PreflightError) as failed:
        hook.check_launch(**{**launch, "instance_type": "p4d.24xlarge"}, instance_count=3)
    assert failed.value.problems == [
        f"{block} is a Capacity Block: launch it with the capacity-block market type",
        f"Capacity Block {block} holds p5.48xlarge, not p4d.24xlarge",
        f"Capacity Block {block} has 2 instances available, 3 are needed",
    ]
    later = control.add_capacity_block(localaws.endpoint_url, "p5.48xlarge", "us-east-1b", starts_in_seconds=86400)
    with pytest.raises(Ec2PreflightError, match=r"is scheduled, not active \(it starts at .*is in us-east-1b"):
        hook.check_launch(**{**launch, "capacity_reservation_id": later}, capacity_block=True)
    with pytest.raises(Ec2PreflightError, match="cr-0123456789abcdef0 does not exist"):
        hook.check_launch(**{**launch, "capacity_reservation_id": "cr-0123456789abcdef0"})
