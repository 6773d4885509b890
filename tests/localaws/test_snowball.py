"""The Snowball job API (hand-written: moto has none), through real boto3 calls with raw answers checked
against botocore's ``snowball`` model by the ``checked_client`` fixture."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import botocore.session
import pytest

# AWS's order for an IMPORT job, written out here as the expectation.
IMPORT_STATES = (
    "New",
    "PreparingAppliance",
    "PreparingShipment",
    "InTransitToCustomer",
    "WithCustomer",
    "InTransitToAWS",
    "WithAWSSortingFacility",
    "WithAWS",
    "InProgress",
    "Complete",
)
JOB_ID = re.compile(r"JID[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
def job_id(create_job, make_bucket):
    return create_job([{"BucketArn": f"arn:aws:s3:::{make_bucket()}"}], Description="test job")


def test_the_shape_checker_is_strict(shape_checker):
    """Guards the checked_client fixture: a checker that accepted anything would make every test vacuous."""
    output = (
        botocore.session.get_session()
        .get_service_model("snowball")
        .operation_model("DescribeJob")
        .output_shape
    )
    shape_checker({"JobMetadata": {"JobId": "JID1", "JobState": "WithCustomer", "CreationDate": 1.5}}, output)
    for bad in (
        {"JobMetadata": {"JobState": "Shipped"}},
        {"JobMetadata": {"JobId": "JID1", "Surprise": 1}},
        {"JobMetadata": {"AddressId": "not-an-address-id"}},
        {"JobMetadata": {"CreationDate": "yesterday"}},
        {"JobMetadata": {"DataTransferProgress": {"TotalBytes": "12"}}},
    ):
        with pytest.raises((AssertionError, ValueError)):
            shape_checker(bad, output)


def test_address_round_trip(snowball, address_id):
    assert re.fullmatch(r"ADID[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", address_id)
    address = snowball.describe_address(AddressId=address_id)["Address"]
    assert address["AddressId"] == address_id
    assert address["City"] == "Seattle"
    assert address["PhoneNumber"] == "+1-206-555-0100"


def test_describe_addresses_pages_through_everything(snowball, address_id):
    created = {
        address_id,
        *(
            snowball.create_address(
                Address={
                    "Name": f"Site {n}",
                    "Street1": "1 Main St",
                    "City": "Austin",
                    "Country": "US",
                    "PostalCode": "73301",
                }
            )["AddressId"]
            for n in range(2)
        ),
    }
    seen, kwargs = [], {"MaxResults": 2}
    while True:
        page = snowball.describe_addresses(**kwargs)
        assert len(page["Addresses"]) <= 2
        seen += [address["AddressId"] for address in page["Addresses"]]
        if "NextToken" not in page:
            break
        kwargs["NextToken"] = page["NextToken"]
    assert created <= set(seen)
    assert len(seen) == len(set(seen))


def test_invalid_address_is_refused(snowball):
    with pytest.raises(snowball.exceptions.InvalidAddressException, match="Street1"):
        snowball.create_address(
            Address={"Name": "No Street", "City": "Seattle", "Country": "US", "PostalCode": "98109"}
        )


def test_unknown_address_is_invalid_resource(snowball):
    with pytest.raises(snowball.exceptions.InvalidResourceException):
        snowball.describe_address(AddressId="ADID00000000-0000-0000-0000-000000000000")


def test_new_job_is_described_as_created(snowball, job_id, address_id):
    assert JOB_ID.fullmatch(job_id)
    job = snowball.describe_job(JobId=job_id)["JobMetadata"]
    assert job["JobId"] == job_id
    assert job["JobState"] == "New"
    assert job["JobType"] == "IMPORT"
    assert job["SnowballType"] == "EDGE_S"
    assert job["SnowballCapacityPreference"] == "T98"
    assert job["AddressId"] == address_id
    assert job["Description"] == "test job"
    assert job["ShippingDetails"] == {"ShippingOption": "SECOND_DAY"}
    assert job["Resources"]["S3Resources"][0]["BucketArn"].startswith("arn:aws:s3:::sb-target-")
    assert "DataTransferProgress" not in job


def test_job_walks_through_every_import_state_in_order(snowball, job_id, advance_job_to):
    for state in IMPORT_STATES:
        advance_job_to(job_id, state)
        job = snowball.describe_job(JobId=job_id)["JobMetadata"]
        assert job["JobState"] == state
        listed = [entry for entry in _all_jobs(snowball) if entry["JobId"] == job_id]
        assert [entry["JobState"] for entry in listed] == [state]
    shipping = job["ShippingDetails"]
    assert shipping["OutboundShipment"]["Status"] == "Delivered"
    assert shipping["InboundShipment"]["Status"] == "Delivered"


def test_cancel_is_allowed_while_new_and_sticks(snowball, job_id, advance):
    snowball.cancel_job(JobId=job_id)
    assert snowball.describe_job(JobId=job_id)["JobMetadata"]["JobState"] == "Cancelled"
    advance(60 * 86_400)
    assert snowball.describe_job(JobId=job_id)["JobMetadata"]["JobState"] == "Cancelled"
    with pytest.raises(snowball.exceptions.InvalidJobStateException, match="Cancelled"):
        snowball.cancel_job(JobId=job_id)


def test_cancel_is_refused_once_preparing_appliance(snowball, job_id, advance_job_to):
    advance_job_to(job_id, "PreparingAppliance")
    with pytest.raises(snowball.exceptions.InvalidJobStateException, match="PreparingAppliance"):
        snowball.cancel_job(JobId=job_id)
    assert snowball.describe_job(JobId=job_id)["JobMetadata"]["JobState"] == "PreparingAppliance"


def test_update_is_allowed_only_while_new(snowball, job_id, advance_job_to):
    snowball.update_job(JobId=job_id, Description="renamed", ShippingOption="NEXT_DAY")
    job = snowball.describe_job(JobId=job_id)["JobMetadata"]
    assert job["Description"] == "renamed"
    assert job["ShippingDetails"]["ShippingOption"] == "NEXT_DAY"
    advance_job_to(job_id, "PreparingAppliance")
    with pytest.raises(snowball.exceptions.InvalidJobStateException, match="New"):
        snowball.update_job(JobId=job_id, Description="too late")
    assert snowball.describe_job(JobId=job_id)["JobMetadata"]["Description"] == "renamed"


@pytest.mark.parametrize(
    "call", ["describe_job", "cancel_job", "update_job", "get_job_manifest", "get_job_unlock_code"]
)
def test_unknown_job_is_invalid_resource(snowball, call):
    with pytest.raises(snowball.exceptions.InvalidResourceException, match="can't be found"):
        getattr(snowball, call)(JobId="JID00000000-0000-0000-0000-000000000000")


def test_jobs_belong_to_their_region(snowball, checked_client, job_id):
    west = checked_client("snowball", region_name="us-west-2")
    with pytest.raises(west.exceptions.InvalidResourceException):
        west.describe_job(JobId=job_id)
    assert job_id not in {entry["JobId"] for entry in _all_jobs(west)}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (
            {"Resources": {"S3Resources": [{"BucketArn": "arn:aws:s3:::no-such-bucket-localaws"}]}},
            "InvalidResourceException",
        ),
        ({"AddressId": "ADID00000000-0000-0000-0000-000000000000"}, "InvalidResourceException"),
        ({"JobType": "EXPORT"}, "InvalidInputCombinationException"),
        ({"RoleARN": None}, "InvalidInputCombinationException"),
        ({"KeyRange": {"BeginMarker": "z", "EndMarker": "a"}}, "InvalidInputCombinationException"),
    ],
)
def test_invalid_jobs_are_refused(snowball, address_id, make_bucket, change, error):
    resource = {"BucketArn": f"arn:aws:s3:::{make_bucket()}"}
    if "KeyRange" in change:
        resource["KeyRange"] = change.pop("KeyRange")
    request = {
        "JobType": "IMPORT",
        "Resources": {"S3Resources": [resource]},
        "AddressId": address_id,
        "RoleARN": "arn:aws:iam::123456789012:role/snowball-import",
        "ShippingOption": "SECOND_DAY",
        **change,
    }
    with pytest.raises(getattr(snowball.exceptions, error)):
        snowball.create_job(**{key: value for key, value in request.items() if value is not None})


def test_list_jobs_pages_with_max_results(snowball, create_job, make_bucket):
    created = {create_job([{"BucketArn": f"arn:aws:s3:::{make_bucket()}"}]) for _ in range(3)}
    first = snowball.list_jobs(MaxResults=1)
    assert len(first["JobListEntries"]) == 1
    entry = first["JobListEntries"][0]
    assert set(entry) >= {"JobId", "JobState", "IsMaster", "JobType", "SnowballType", "CreationDate"}
    assert entry["IsMaster"] is False
    listed = [entry["JobId"] for entry in _all_jobs(snowball, page_size=2)]
    assert created <= set(listed)
    assert len(listed) == len(set(listed))


def test_list_jobs_rejects_a_forged_token(snowball):
    with pytest.raises(snowball.exceptions.InvalidNextTokenException):
        snowball.list_jobs(NextToken="not-a-token")


def test_manifest_and_unlock_code_only_while_with_customer(snowball, job_id, advance_job_to, advance):
    for call in (snowball.get_job_manifest, snowball.get_job_unlock_code):
        with pytest.raises(snowball.exceptions.InvalidJobStateException, match="WithCustomer"):
            call(JobId=job_id)
    advance_job_to(job_id, "WithCustomer")
    code = snowball.get_job_unlock_code(JobId=job_id)["UnlockCode"]
    assert re.fullmatch(r"[A-Za-z0-9]{5}(-[A-Za-z0-9]{5}){4}", code)
    assert len(code) == 29
    assert snowball.get_job_unlock_code(JobId=job_id)["UnlockCode"] == code
    uri = snowball.get_job_manifest(JobId=job_id)["ManifestURI"]
    assert f"/_localaws/snowball/manifest/{job_id}?" in uri
    assert "X-Amz-Signature=" in uri
    with urllib.request.urlopen(uri, timeout=10) as response:
        assert response.read().startswith(b"LOCALAWS-SNOWBALL-MANIFEST")
    advance(61 * 60)  # AWS: the manifest link works for 60 minutes
    with pytest.raises(urllib.error.HTTPError) as expired:
        urllib.request.urlopen(uri, timeout=10)
    assert expired.value.code == 403
    assert b"Request has expired" in expired.value.read()
    with pytest.raises(urllib.error.HTTPError) as forged:
        urllib.request.urlopen(uri.replace("X-Amz-Signature=", "X-Amz-Signature=0"), timeout=10)
    assert forged.value.code == 403
    advance_job_to(job_id, "InTransitToAWS")
    with pytest.raises(snowball.exceptions.InvalidJobStateException, match="InTransitToAWS"):
        snowball.get_job_unlock_code(JobId=job_id)


def _all_jobs(client, page_size: int = 100) -> list[dict]:
    entries, kwargs = [], {"MaxResults": page_size}
    while True:
        page = client.list_jobs(**kwargs)
        entries += page["JobListEntries"]
        if "NextToken" not in page:
            return entries
        kwargs["NextToken"] = page["NextToken"]
