"""localaws's Capacity Reservations and Capacity Blocks, which moto lacks (see localaws.ec2_capacity_reservations)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from localaws import control

IMAGE_ID = "ami-03cf127a"  # one of the AMIs moto ships


@pytest.fixture
def ec2(boto_client):
    return boto_client("ec2")


def code_of(call) -> str:
    with pytest.raises(ClientError) as refused:
        call()
    return refused.value.response["Error"]["Code"]


def into(reservation_id: str, **overrides) -> dict:
    arguments = {
        "ImageId": IMAGE_ID, "InstanceType": "p5.48xlarge", "MinCount": 1, "MaxCount": 1,
        "Placement": {"AvailabilityZone": "us-east-1a"},
        "CapacityReservationSpecification": {"CapacityReservationTarget": {"CapacityReservationId": reservation_id}},
    }  # fmt: skip
    return {**arguments, **overrides}


def test_an_on_demand_reservation(ec2):
    reservation = ec2.create_capacity_reservation(
        InstanceType="p5.48xlarge", InstancePlatform="Linux/UNIX", AvailabilityZone="us-east-1a", InstanceCount=2
    )["CapacityReservation"]
    reservation_id = reservation["CapacityReservationId"]
    assert reservation["State"] == "active" and reservation["AvailableInstanceCount"] == 2
    ec2.run_instances(**into(reservation_id, MinCount=2, MaxCount=2))
    (described,) = ec2.describe_capacity_reservations(CapacityReservationIds=[reservation_id])["CapacityReservations"]
    assert described["AvailableInstanceCount"] == 0
    assert code_of(lambda: ec2.run_instances(**into(reservation_id))) == "ReservationCapacityExceeded"
    assert code_of(lambda: ec2.run_instances(**into(reservation_id, InstanceType="p4d.24xlarge"))) == (
        "InvalidParameterCombination"
    )
    assert (
        code_of(
            lambda: ec2.run_instances(**into(reservation_id, InstanceMarketOptions={"MarketType": "capacity-block"}))
        )
        == "InvalidParameterCombination"
    )
    ec2.cancel_capacity_reservation(CapacityReservationId=reservation_id)
    assert code_of(lambda: ec2.run_instances(**into(reservation_id))) == "InvalidCapacityReservationId.NotFound"
    assert code_of(lambda: ec2.run_instances(**into("cr-0123456789abcdef0"))) == "InvalidCapacityReservationId.NotFound"


def test_a_capacity_block(ec2, localaws, advance):
    block = control.add_capacity_block(
        localaws.endpoint_url, "p5.48xlarge", "us-east-1a", instance_count=1, starts_in_seconds=3600
    )
    (described,) = ec2.describe_capacity_reservations(CapacityReservationIds=[block])["CapacityReservations"]
    assert described["ReservationType"] == "capacity-block" and described["State"] == "scheduled"
    market = {"MarketType": "capacity-block"}
    assert code_of(lambda: ec2.run_instances(**into(block, InstanceMarketOptions=market))) == (
        "InsufficientInstanceCapacity"
    )
    advance(3600)
    assert code_of(lambda: ec2.run_instances(**into(block))) == "InvalidParameterCombination"  # no market type
    assert (
        code_of(
            lambda: ec2.run_instances(
                **into(block, InstanceMarketOptions=market, Placement={"AvailabilityZone": "us-east-1b"})
            )
        )
        == "InvalidParameterCombination"
    )
    (instance,) = ec2.run_instances(**into(block, InstanceMarketOptions=market))["Instances"]
    assert instance["InstanceLifecycle"] == "capacity-block"
    advance(24 * 3600)
    (described,) = ec2.describe_capacity_reservations(CapacityReservationIds=[block])["CapacityReservations"]
    assert described["State"] == "expired"
