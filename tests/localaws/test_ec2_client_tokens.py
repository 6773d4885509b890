"""EC2 RunInstances honours ClientToken as AWS documents ("Ensuring idempotency in Amazon EC2 API requests")."""

from __future__ import annotations

import uuid

import botocore.exceptions
import pytest

IMAGE_ID = "ami-03cf127a"  # one of the AMIs moto ships


@pytest.fixture
def ec2(boto_client):
    return boto_client("ec2")


def launch(ec2, token: str, **overrides) -> dict:
    arguments = {"ImageId": IMAGE_ID, "InstanceType": "t3.micro", "MinCount": 1, "MaxCount": 1, "ClientToken": token}
    return ec2.run_instances(**{**arguments, **overrides})


def with_token(ec2, token: str) -> list[dict]:
    """The instances launched with ``token`` (moto has no ``client-token`` filter; it reports the token)."""
    pages = ec2.get_paginator("describe_instances").paginate()
    return [
        instance
        for page in pages
        for reservation in page["Reservations"]
        for instance in reservation["Instances"]
        if instance.get("ClientToken") == token
    ]


def ids(answer: dict) -> list[str]:
    return [instance["InstanceId"] for instance in answer["Instances"]]


def test_a_repeated_request_returns_the_first_reservation(ec2):
    token = uuid.uuid4().hex
    first = launch(ec2, token, MinCount=2, MaxCount=2)
    again = launch(ec2, token, MinCount=2, MaxCount=2)
    assert again["ReservationId"] == first["ReservationId"]
    assert ids(again) == ids(first)
    assert sorted(i["InstanceId"] for i in with_token(ec2, token)) == sorted(ids(first))


def test_the_same_token_with_other_parameters_is_a_mismatch(ec2):
    token = uuid.uuid4().hex
    launch(ec2, token)
    with pytest.raises(botocore.exceptions.ClientError) as mismatch:
        launch(ec2, token, InstanceType="t3.large")
    assert mismatch.value.response["Error"]["Code"] == "IdempotentParameterMismatch"
    assert len(with_token(ec2, token)) == 1


def test_the_availability_zone_is_not_compared(ec2):
    token = uuid.uuid4().hex
    first = launch(ec2, token, Placement={"AvailabilityZone": "us-east-1a"})
    assert ids(launch(ec2, token, Placement={"AvailabilityZone": "us-east-1b"})) == ids(first)


def test_a_token_is_kept_per_region(ec2, boto_client):
    token = uuid.uuid4().hex
    here = launch(ec2, token)
    there = launch(boto_client("ec2", region_name="eu-west-1"), token)
    assert ids(here) != ids(there)


def test_without_a_token_every_request_launches(ec2):
    arguments = {"ImageId": IMAGE_ID, "MinCount": 1, "MaxCount": 1}
    assert ids(ec2.run_instances(**arguments)) != ids(ec2.run_instances(**arguments))


def test_a_lost_answer_retried_by_botocore_launches_once(ec2, faults):
    token = uuid.uuid4().hex
    faults({"service": "ec2", "operation": "RunInstances", "kind": "lost_response", "limit": 1})
    answer = launch(ec2, token)
    assert answer["ResponseMetadata"]["RetryAttempts"] == 1
    assert [i["InstanceId"] for i in with_token(ec2, token)] == ids(answer)


def test_a_token_lasts_24_hours_after_its_instances_terminated(ec2, localaws):
    from localaws import control

    token = uuid.uuid4().hex
    first = launch(ec2, token)
    ec2.terminate_instances(InstanceIds=ids(first))
    assert ids(launch(ec2, token)) == ids(first)  # localaws sees them terminated from now on
    control.advance_clock(localaws.endpoint_url, 23 * 3600)
    assert ids(launch(ec2, token)) == ids(first)
    control.advance_clock(localaws.endpoint_url, 3600)
    relaunched = launch(ec2, token)
    assert ids(relaunched) != ids(first)
