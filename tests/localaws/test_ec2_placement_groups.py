"""localaws's EC2 placement groups, which moto lacks, refuse what AWS refuses (see localaws.ec2_placement_groups)."""

from __future__ import annotations

import uuid

import pytest
from botocore.exceptions import ClientError

IMAGE_ID = "ami-03cf127a"  # one of the AMIs moto ships


@pytest.fixture
def ec2(boto_client):
    return boto_client("ec2")


@pytest.fixture
def unique():
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:10]}"


def code_of(call) -> str:
    with pytest.raises(ClientError) as refused:
        call()
    return refused.value.response["Error"]["Code"]


def test_create_describe_delete(ec2, unique):
    name = unique("pg")
    created = ec2.create_placement_group(
        GroupName=name,
        Strategy="cluster",
        TagSpecifications=[{"ResourceType": "placement-group", "Tags": [{"Key": "team", "Value": "ml"}]}],
    )["PlacementGroup"]
    assert created["GroupName"] == name and created["Strategy"] == "cluster" and created["State"] == "available"
    assert created["GroupId"].startswith("pg-") and created["Tags"] == [{"Key": "team", "Value": "ml"}]
    (described,) = ec2.describe_placement_groups(GroupNames=[name])["PlacementGroups"]
    assert described == created
    by_filter = ec2.describe_placement_groups(Filters=[{"Name": "tag:team", "Values": ["ml"]}])["PlacementGroups"]
    assert name in [group["GroupName"] for group in by_filter]
    ec2.delete_placement_group(GroupName=name)
    assert code_of(lambda: ec2.describe_placement_groups(GroupNames=[name])) == "InvalidPlacementGroup.Unknown"
    assert code_of(lambda: ec2.delete_placement_group(GroupName=name)) == "InvalidPlacementGroup.Unknown"


def test_a_taken_name_is_a_duplicate(ec2, unique):
    name = unique("pg")
    ec2.create_placement_group(GroupName=name, Strategy="cluster")
    assert code_of(lambda: ec2.create_placement_group(GroupName=name, Strategy="spread")) == (
        "InvalidPlacementGroup.Duplicate"
    )


def test_strategy_and_its_options_are_checked(ec2, unique):
    # botocore checks no enum client-side: the server refuses.
    assert code_of(lambda: ec2.create_placement_group(GroupName=unique("pg"), Strategy="ring")) == (
        "InvalidParameterValue"
    )
    assert (
        code_of(lambda: ec2.create_placement_group(GroupName=unique("pg"), Strategy="cluster", PartitionCount=2))
        == "InvalidParameterCombination"
    )
    assert (
        code_of(lambda: ec2.create_placement_group(GroupName=unique("pg"), Strategy="partition", PartitionCount=8))
        == "InvalidParameterValue"
    )
    partition = ec2.create_placement_group(GroupName=unique("pg"), Strategy="partition", PartitionCount=3)
    assert partition["PlacementGroup"]["PartitionCount"] == 3


def test_run_instances_into_a_group(ec2, unique):
    name = unique("pg")
    assert (
        code_of(
            lambda: ec2.run_instances(
                ImageId=IMAGE_ID, InstanceType="p4d.24xlarge", MinCount=1, MaxCount=1, Placement={"GroupName": name}
            )
        )
        == "InvalidPlacementGroup.Unknown"
    )
    ec2.create_placement_group(GroupName=name, Strategy="cluster")
    (instance,) = ec2.run_instances(
        ImageId=IMAGE_ID, InstanceType="p4d.24xlarge", MinCount=1, MaxCount=1, Placement={"GroupName": name}
    )["Instances"]
    (described,) = ec2.describe_instances(InstanceIds=[instance["InstanceId"]])["Reservations"][0]["Instances"]
    assert described["Placement"]["GroupName"] == name
    assert code_of(lambda: ec2.delete_placement_group(GroupName=name)) == "InvalidPlacementGroup.InUse"
    ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])
    ec2.delete_placement_group(GroupName=name)


def test_groups_are_per_region(boto_client, unique):
    name = unique("pg")
    boto_client("ec2").create_placement_group(GroupName=name, Strategy="cluster")
    boto_client("ec2", region_name="eu-west-1").create_placement_group(GroupName=name, Strategy="cluster")
