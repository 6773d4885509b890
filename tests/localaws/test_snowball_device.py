"""The simulated Snowball device's S3 endpoint, and the import into S3 when the job completes."""

from __future__ import annotations

import os
import uuid

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError


@pytest.fixture
def device(localaws):
    """A normal boto3 S3 client pointed at one job's device, path-style, as the pipeline uses it."""

    def make(job_id: str):
        return boto3.client(
            "s3",
            region_name="us-east-1",
            endpoint_url=f"{localaws.endpoint_url}/_localaws/snowball-device/{job_id}",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    return make


@pytest.fixture
def loaded_job(create_job, make_bucket, advance_job_to, device):
    """A job WithCustomer whose device holds two objects in a KeyRange-limited bucket and one in another."""
    ranged, whole = make_bucket(), make_bucket()
    job_id = create_job(
        [
            {
                "BucketArn": f"arn:aws:s3:::{ranged}",
                "KeyRange": {"BeginMarker": "landing/a", "EndMarker": "landing/m"},
            },
            {"BucketArn": f"arn:aws:s3:::{whole}"},
        ]
    )
    advance_job_to(job_id, "WithCustomer")
    client = device(job_id)
    objects = {
        (ranged, "landing/b/one.csv"): b"id,name\n1,a\n",
        (ranged, "landing/c/two.csv"): b"id\n2\n",
        (whole, "anything/three.json"): b'{"x": 3}',
    }
    for (bucket, key), body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="text/plain")
    return job_id, ranged, whole, objects


def _error(excinfo) -> tuple[int, str, str]:
    response = excinfo.value.response
    return (
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Code"],
        response["Error"]["Message"],
    )


def test_device_answers_only_while_with_customer(create_job, make_bucket, advance_job_to, device):
    bucket = make_bucket()
    job_id = create_job([{"BucketArn": f"arn:aws:s3:::{bucket}"}])
    client = device(job_id)
    with pytest.raises(ClientError) as early:
        client.put_object(Bucket=bucket, Key="k", Body=b"x")
    status, code, message = _error(early)
    assert (status, code) == (409, "InvalidJobState")
    assert "New" in message
    advance_job_to(job_id, "WithCustomer")
    client.put_object(Bucket=bucket, Key="k", Body=b"x")
    advance_job_to(job_id, "InTransitToAWS")
    with pytest.raises(ClientError) as late:
        client.put_object(Bucket=bucket, Key="k2", Body=b"y")
    assert _error(late)[:2] == (409, "InvalidJobState")
    assert "InTransitToAWS" in _error(late)[2]


def test_device_serves_s3_reads_and_listings(loaded_job, device):
    job_id, ranged, whole, objects = loaded_job
    client = device(job_id)
    assert sorted(bucket["Name"] for bucket in client.list_buckets()["Buckets"]) == sorted([ranged, whole])
    listing = client.list_objects_v2(Bucket=ranged, Prefix="landing/")
    assert listing["Name"] == ranged
    assert [item["Key"] for item in listing["Contents"]] == ["landing/b/one.csv", "landing/c/two.csv"]
    head = client.head_object(Bucket=ranged, Key="landing/b/one.csv")
    assert head["ContentLength"] == len(objects[(ranged, "landing/b/one.csv")])
    assert head["ContentType"] == "text/plain"
    assert client.get_object(Bucket=whole, Key="anything/three.json")["Body"].read() == b'{"x": 3}'


def test_multipart_upload_file_lands_on_the_device(loaded_job, device, tmp_path):
    job_id, ranged, _, _ = loaded_job
    client = device(job_id)
    path = tmp_path / "big.bin"
    data = os.urandom(11 * 1024 * 1024)
    path.write_bytes(data)
    config = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    client.upload_file(str(path), ranged, "landing/d/big.bin", Config=config)
    head = client.head_object(Bucket=ranged, Key="landing/d/big.bin")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].endswith('-3"')  # three parts: 5 + 5 + 1 MiB
    assert client.get_object(Bucket=ranged, Key="landing/d/big.bin")["Body"].read() == data


def test_writes_outside_the_jobs_resources_are_refused(loaded_job, device, make_bucket):
    job_id, ranged, _, _ = loaded_job
    client = device(job_id)
    with pytest.raises(ClientError) as outside_range:
        client.put_object(Bucket=ranged, Key="landing/z/late.csv", Body=b"x")
    status, code, message = _error(outside_range)
    assert (status, code) == (403, "AccessDenied")
    assert "KeyRange" in message and job_id in message
    with pytest.raises(ClientError) as multipart_outside:
        client.create_multipart_upload(Bucket=ranged, Key="other/file.bin")
    assert _error(multipart_outside)[:2] == (403, "AccessDenied")
    with pytest.raises(ClientError) as other_bucket:
        client.put_object(Bucket=make_bucket(), Key="landing/b/x.csv", Body=b"x")
    assert _error(other_bucket)[:2] == (404, "NoSuchBucket")
    with pytest.raises(ClientError) as new_bucket:
        client.create_bucket(Bucket=f"device-bucket-{uuid.uuid4().hex[:8]}")
    assert _error(new_bucket)[:2] == (404, "NoSuchBucket")
    with pytest.raises(ClientError) as job_bucket:
        client.delete_bucket(Bucket=ranged)
    assert _error(job_bucket)[:2] == (403, "AccessDenied")


def test_unknown_job_has_no_device(device):
    with pytest.raises(ClientError) as missing:
        device("JID00000000-0000-0000-0000-000000000000").list_buckets()
    assert _error(missing)[:2] == (404, "NoSuchJob")


def test_device_contents_stay_hidden_until_the_import(loaded_job, s3, snowball, advance_job_to):
    job_id, ranged, whole, objects = loaded_job
    assert s3.list_objects_v2(Bucket=ranged).get("KeyCount") == 0
    assert not any(bucket["Name"].startswith("localaws-") for bucket in s3.list_buckets()["Buckets"])
    advance_job_to(job_id, "InProgress")
    job = snowball.describe_job(JobId=job_id)["JobMetadata"]
    progress = job["DataTransferProgress"]
    assert progress["TotalObjects"] == len(objects)
    assert progress["TotalBytes"] == sum(len(body) for body in objects.values())
    assert 0 <= progress["BytesTransferred"] < progress["TotalBytes"]
    assert s3.list_objects_v2(Bucket=whole).get("KeyCount") == 0


def test_import_lands_objects_exactly_once(loaded_job, s3, snowball, advance_job_to):
    job_id, ranged, whole, objects = loaded_job
    advance_job_to(job_id, "Complete")
    # The first request to notice Complete (here a plain S3 call, not DescribeJob) runs the import.
    landed = {(ranged, item["Key"]) for item in s3.list_objects_v2(Bucket=ranged)["Contents"]}
    landed |= {(whole, item["Key"]) for item in s3.list_objects_v2(Bucket=whole)["Contents"]}
    assert landed == set(objects)
    for (bucket, key), body in objects.items():
        got = s3.get_object(Bucket=bucket, Key=key)
        assert got["Body"].read() == body
        assert got["ContentType"] == "text/plain"
    job = snowball.describe_job(JobId=job_id)["JobMetadata"]
    assert job["JobState"] == "Complete"
    total = sum(len(body) for body in objects.values())
    assert job["DataTransferProgress"] == {
        "BytesTransferred": total,
        "ObjectsTransferred": len(objects),
        "TotalBytes": total,
        "TotalObjects": len(objects),
    }
    # Once imported, never again: a deleted object stays deleted however many requests follow.
    s3.delete_object(Bucket=ranged, Key="landing/b/one.csv")
    snowball.describe_job(JobId=job_id)
    snowball.list_jobs()
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=ranged)["Contents"]]
    assert keys == ["landing/c/two.csv"]
