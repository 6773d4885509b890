from __future__ import annotations

import hashlib
import json

import pytest
from airflow.sdk.exceptions import AirflowFailException

from finetune_pipeline.aws.hooks.snowball import SnowballHook
from finetune_pipeline.aws.operators.snowball import (
    MIB,
    SnowballCreateAddressOperator,
    SnowballCreateJobOperator,
    SnowballLoadDeviceOperator,
    job_description,
)

ROLE_ARN = "arn:aws:iam::123456789012:role/finetune-test"


@pytest.fixture
def hook(aws_conn) -> SnowballHook:
    return SnowballHook(aws_conn_id=aws_conn)


# SnowballCreateAddressOperator


def test_create_address_reuses_an_identical_address(hook, context, unique):
    address = {
        "Name": unique("Ops"),
        "Street1": "410 Terry Ave N",
        "City": "Seattle",
        "StateOrProvince": "WA",
        "PostalCode": "98109",
        "Country": "US",
        "PhoneNumber": "+1-206-555-0100",
    }
    operator = SnowballCreateAddressOperator(task_id="create_address", address=address)
    first = operator.execute(context)
    # A retry, and a later run whose config differs only in case and spacing, reuse the same address.
    again = operator.execute(context)
    respelled = SnowballCreateAddressOperator(
        task_id="create_address", address={**address, "City": " seattle ", "Name": address["Name"].upper()}
    ).execute(context)
    assert first == again == respelled
    assert [a["AddressId"] for a in hook.describe_addresses() if a["Name"] == address["Name"]] == [first]


def test_create_address_creates_a_different_address(hook, context, unique):
    base = {
        "Name": unique("Ops"),
        "Street1": "1 First Ave",
        "City": "Seattle",
        "StateOrProvince": "WA",
        "PostalCode": "98101",
        "Country": "US",
        "PhoneNumber": "+1-206-555-0100",
    }
    first = SnowballCreateAddressOperator(task_id="a", address=base).execute(context)
    other = SnowballCreateAddressOperator(task_id="a", address={**base, "Street1": "2 Second Ave"}).execute(
        context
    )
    assert first != other


def test_create_address_rejects_an_empty_address(context):
    with pytest.raises(AirflowFailException, match="non-empty address"):
        SnowballCreateAddressOperator(task_id="a", address={"Name": ""}, aws_conn_id=None).execute(context)


@pytest.mark.parametrize("mode", ["error", "drop"])
def test_create_address_whose_answer_is_lost_creates_one(hook, context, unique, faults, mode):
    address = {"Name": unique("Lost"), "Street1": "1 Main St", "City": "Seattle", "Country": "US", "PostalCode": "1"}
    faults({"service": "snowball", "operation": "CreateAddress", "kind": "lost_response", "mode": mode})
    address_id = SnowballCreateAddressOperator(task_id="a", address=address).execute(context)
    assert [a["AddressId"] for a in hook.describe_addresses() if a["Name"] == address["Name"]] == [address_id]


def test_create_address_sends_again_after_a_refusal(hook, context, unique, faults):
    address = {"Name": unique("Again"), "Street1": "1 Main St", "City": "Seattle", "Country": "US", "PostalCode": "1"}
    faults({"service": "snowball", "operation": "CreateAddress", "kind": "throttle", "limit": 2})
    address_id = SnowballCreateAddressOperator(task_id="a", address=address).execute(context)
    assert [a["AddressId"] for a in hook.describe_addresses() if a["Name"] == address["Name"]] == [address_id]


def test_create_address_refused_as_invalid_fails_without_retry(context, unique):
    with pytest.raises(AirflowFailException, match="InvalidAddressException"):
        SnowballCreateAddressOperator(task_id="a", address={"Name": unique("No street")}).execute(context)


# SnowballCreateJobOperator


def job_operator(bucket: str, address_id: str, key: str, **overrides) -> SnowballCreateJobOperator:
    arguments = {
        "task_id": "create_job",
        "description_key": key,
        "bucket_arn": f"arn:aws:s3:::{bucket}",
        "role_arn": ROLE_ARN,
        "address_id": address_id,
        "snowball_type": "EDGE_S",
        "capacity": "T80",
        **overrides,
    }
    return SnowballCreateJobOperator(**arguments)


def test_create_job_is_idempotent(hook, bucket, address_id, context, unique):
    key = unique("bulk")
    operator = job_operator(bucket, address_id, key, kms_key_arn="arn:aws:kms:us-east-1:123456789012:key/k1")
    job_id = operator.execute(context)
    assert operator.execute(context) == job_id  # the retry reuses the job
    jobs = hook.find_jobs_by_description(job_description(key))
    assert [job["JobId"] for job in jobs] == [job_id]
    job = hook.describe_job(job_id)
    assert job["JobType"] == "IMPORT"
    assert job["Resources"]["S3Resources"] == [{"BucketArn": f"arn:aws:s3:::{bucket}"}]
    assert (job["SnowballType"], job["SnowballCapacityPreference"]) == ("EDGE_S", "T80")
    assert job["KmsKeyARN"].endswith("key/k1")


def test_create_job_replaces_a_cancelled_job(hook, bucket, address_id, context, unique):
    key = unique("bulk")
    first = job_operator(bucket, address_id, key).execute(context)
    hook.cancel_job(first)
    second = job_operator(bucket, address_id, key).execute(context)
    assert second != first
    assert [job["JobId"] for job in hook.find_live_jobs_by_description(job_description(key))] == [second]


@pytest.mark.parametrize("mode", ["error", "drop"])
def test_create_job_whose_answer_is_lost_orders_one_device(hook, bucket, address_id, context, unique, faults, mode):
    key = unique("bulk")
    faults({"service": "snowball", "operation": "CreateJob", "kind": "lost_response", "mode": mode})
    job_id = job_operator(bucket, address_id, key).execute(context)
    assert [job["JobId"] for job in hook.find_jobs_by_description(job_description(key))] == [job_id]


def test_create_job_sends_again_after_a_refusal(hook, bucket, address_id, context, unique, faults):
    key = unique("bulk")
    faults(
        {"service": "snowball", "operation": "CreateJob", "kind": "throttle", "limit": 1},
        {"service": "snowball", "operation": "CreateJob", "kind": "error", "status": 503, "limit": 1},
    )
    job_id = job_operator(bucket, address_id, key).execute(context)
    assert [job["JobId"] for job in hook.find_jobs_by_description(job_description(key))] == [job_id]


def test_create_job_keeps_the_oldest_of_duplicates_and_cancels_the_rest(
    hook, snowball_job, bucket, address_id, context, unique
):
    key = unique("bulk")
    first, second = snowball_job(job_description(key)), snowball_job(job_description(key))
    assert job_operator(bucket, address_id, key).execute(context) == first
    assert hook.get_job_state(second) == "Cancelled"
    assert [job["JobId"] for job in hook.find_live_jobs_by_description(job_description(key))] == [first]


def test_create_job_fails_on_a_duplicate_that_can_no_longer_be_cancelled(
    hook, snowball_job, bucket, address_id, context, unique, advance_clock
):
    key = unique("bulk")
    first = snowball_job(job_description(key))
    advance_clock(2 * 3600)  # past New: PreparingAppliance
    second = snowball_job(job_description(key))
    advance_clock(2 * 3600)
    with pytest.raises(AirflowFailException, match=f"{second} duplicate job {first}"):
        job_operator(bucket, address_id, key).execute(context)


def test_create_job_refuses_a_job_with_another_bucket(boto_client, bucket, address_id, context, unique):
    key = unique("bulk")
    job_operator(bucket, address_id, key).execute(context)
    other = unique("ftp-other")
    boto_client("s3").create_bucket(Bucket=other)
    with pytest.raises(AirflowFailException, match="already has the description") as error:
        job_operator(other, address_id, key).execute(context)
    assert bucket in str(error.value) and other in str(error.value)


def test_create_job_passes_key_range_and_extra_arguments(hook, bucket, address_id, context, unique):
    key_range = {"BeginMarker": "landing/", "EndMarker": "landing/~"}
    job_id = job_operator(
        bucket,
        address_id,
        unique("bulk"),
        key_range=key_range,
        create_job_kwargs={"ShippingOption": "EXPRESS"},
    ).execute(context)
    job = hook.describe_job(job_id)
    assert job["Resources"]["S3Resources"][0]["KeyRange"] == key_range
    assert job["ShippingDetails"]["ShippingOption"] == "EXPRESS"


def test_create_job_rejects_a_bucket_name_for_an_arn(address_id, context):
    with pytest.raises(AirflowFailException, match="must be an S3 bucket ARN"):
        job_operator("unused", address_id, "k", bucket_arn="plain-name").execute(context)


# SnowballLoadDeviceOperator


@pytest.fixture
def export_dir(tmp_path):
    """An export folder: two tables' files plus the manifest."""
    root = tmp_path / "export"
    (root / "public" / "customers").mkdir(parents=True)
    (root / "public" / "tickets").mkdir(parents=True)
    (root / "public" / "customers" / "LOAD00000001.parquet").write_bytes(b"c" * 3000)
    (root / "public" / "tickets" / "LOAD00000001.parquet").write_bytes(b"t" * 5000)
    (root / "manifest.json").write_text(json.dumps({"snapshot_position": "2026-01-01T00:00:00Z"}))
    return root


@pytest.fixture
def load_operator(localaws):
    """A load operator for a job, pointed at localaws's simulated device for that job."""

    def make(job_id: str, export_dir, **overrides) -> SnowballLoadDeviceOperator:
        overrides.setdefault("device_endpoint_url", f"{localaws.endpoint_url}/_localaws/snowball-device/{job_id}")
        return SnowballLoadDeviceOperator(
            task_id="load_device", job_id=job_id, source_dir=str(export_dir), key_prefix="landing", **overrides
        )

    return make


def device_client(boto_client, localaws, job_id):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=f"{localaws.endpoint_url}/_localaws/snowball-device/{job_id}",
        config=Config(s3={"addressing_style": "path"}),
    )


def test_load_device_copies_the_export_and_resumes(
    load_operator,
    aws_conn, boto_client, localaws, snowball_job, advance_job_to, bucket, export_dir, context, capsys
):
    job_id = snowball_job()
    advance_job_to(job_id, "WithCustomer")
    operator = load_operator(job_id, export_dir)
    result = operator.execute(context)
    logged = capsys.readouterr().out  # task logs go to stdout through structlog
    total = sum(path.stat().st_size for path in export_dir.rglob("*") if path.is_file())
    assert result == {
        "bucket": bucket,
        "key_prefix": "landing",
        "files": 3,
        "bytes": total,
        "uploaded": 3,
        "skipped": 0,
    }
    assert f"[3/3 files, {total}/{total} bytes] landing/manifest.json" in logged
    device = device_client(boto_client, localaws, job_id)
    keys = [item["Key"] for item in device.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == [
        "landing/manifest.json",
        "landing/public/customers/LOAD00000001.parquet",
        "landing/public/tickets/LOAD00000001.parquet",
    ]

    # A retry after one file changed on disk uploads only that file.
    (export_dir / "public" / "tickets" / "LOAD00000001.parquet").write_bytes(b"T" * 5000)
    again = operator.execute(context)
    assert (again["uploaded"], again["skipped"]) == (1, 2)
    body = device.get_object(Bucket=bucket, Key="landing/public/tickets/LOAD00000001.parquet")["Body"].read()
    assert body == b"T" * 5000


def test_load_device_uploads_large_files_in_parts_and_skips_them_on_retry(
    load_operator,
    aws_conn, boto_client, localaws, snowball_job, advance_job_to, bucket, export_dir, context
):
    big = export_dir / "public" / "tickets" / "LOAD00000002.parquet"
    big.write_bytes(bytes(range(256)) * (6 * MIB // 256 + 7))
    job_id = snowball_job()
    advance_job_to(job_id, "WithCustomer")
    operator = load_operator(job_id, export_dir, multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    assert operator.execute(context)["uploaded"] == 4
    head = device_client(boto_client, localaws, job_id).head_object(
        Bucket=bucket, Key="landing/public/tickets/LOAD00000002.parquet"
    )
    assert head["ETag"].strip('"').endswith("-2")  # two parts
    assert head["ContentLength"] == big.stat().st_size
    again = operator.execute(context)
    assert (again["uploaded"], again["skipped"]) == (0, 4)


def test_load_device_data_is_imported_when_the_job_completes(
    load_operator,
    aws_conn, boto_client, snowball_job, advance_job_to, bucket, export_dir, context
):
    job_id = snowball_job()
    advance_job_to(job_id, "WithCustomer")
    load_operator(job_id, export_dir).execute(context)
    advance_job_to(job_id, "Complete")
    body = boto_client("s3").get_object(Bucket=bucket, Key="landing/public/customers/LOAD00000001.parquet")[
        "Body"
    ]
    assert hashlib.sha256(body.read()).hexdigest() == hashlib.sha256(b"c" * 3000).hexdigest()


def test_load_device_needs_the_device_on_site(load_operator, aws_conn, snowball_job, export_dir, context):
    job_id = snowball_job()
    with pytest.raises(RuntimeError, match=rf"Snowball job {job_id} is New;.*WithCustomer"):
        load_operator(job_id, export_dir).execute(context)


def test_load_device_after_the_device_left(load_operator, aws_conn, snowball_job, advance_job_to, export_dir, context):
    job_id = snowball_job()
    advance_job_to(job_id, "InTransitToAWS")
    with pytest.raises(AirflowFailException, match="is InTransitToAWS;.*if an earlier try finished loading"):
        load_operator(job_id, export_dir).execute(context)


def test_load_device_of_a_cancelled_job(
    load_operator, aws_conn, boto_client, snowball_job, export_dir, context
):
    job_id = snowball_job()
    boto_client("snowball").cancel_job(JobId=job_id)
    with pytest.raises(AirflowFailException, match=rf"{job_id} is Cancelled;.*Create a new job"):
        load_operator(job_id, export_dir).execute(context)


def test_load_device_needs_a_manifest(load_operator, aws_conn, snowball_job, advance_job_to, export_dir, context):
    (export_dir / "manifest.json").unlink()
    job_id = snowball_job()
    advance_job_to(job_id, "WithCustomer")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        load_operator(job_id, export_dir).execute(context)


def test_load_device_refuses_a_bucket_outside_the_job(
    load_operator,
    aws_conn, snowball_job, advance_job_to, export_dir, context
):
    job_id = snowball_job()
    advance_job_to(job_id, "WithCustomer")
    with pytest.raises(AirflowFailException, match="would never be imported"):
        load_operator(job_id, export_dir, bucket="some-other-bucket").execute(context)


def test_load_device_needs_the_device_s3_adapter(load_operator, export_dir):
    # No fallback: the device's address is known only on site, and an empty or unrendered value is refused.
    for bad in ("", "192.168.1.20:8443", "{{ var.value.device }}"):
        with pytest.raises(ValueError, match="device_endpoint_url must be the S3 adapter"):
            load_operator("JID-any", export_dir, device_endpoint_url=bad)._device_endpoint()
    explicit = load_operator("JID-any", export_dir, device_endpoint_url="https://10.0.0.5:8443")
    assert explicit._device_endpoint() == "https://10.0.0.5:8443"
