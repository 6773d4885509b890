from __future__ import annotations

import pytest
from airflow.sdk.log import redact
from boto3.s3.transfer import TransferConfig

from finetune_pipeline.aws.hooks.snowball import SnowballDeviceHook, SnowballHook


@pytest.fixture
def hook(aws_conn) -> SnowballHook:
    return SnowballHook(aws_conn_id=aws_conn)


def test_client_type_and_waiters_are_ours(hook):
    assert hook.client_type == "snowball"
    assert hook.waiter_path.name == "snowball.json" and hook.waiter_path.is_file()
    assert {"job_with_customer", "job_complete"} <= set(hook.list_waiters())


def test_create_describe_and_list_addresses(hook):
    address = {
        "Name": "Hook Test",
        "Street1": "1 Main St",
        "City": "Seattle",
        "Country": "US",
        "StateOrProvince": "WA",
        "PostalCode": "98101",
        "PhoneNumber": "+1-206-555-0199",
    }
    address_id = hook.create_address(address)
    assert hook.describe_address(address_id)["Street1"] == "1 Main St"
    assert address_id in {item["AddressId"] for item in hook.describe_addresses()}


def test_job_calls(hook, snowball_job, unique):
    description = unique("hook-job")
    job_id = snowball_job(description)
    job = hook.describe_job(job_id)
    assert (job["JobState"], job["JobType"], job["Description"]) == ("New", "IMPORT", description)
    assert hook.get_job_state(job_id) == "New"
    assert job_id in {entry["JobId"] for entry in hook.list_jobs()}

    hook.update_job(job_id, ShippingOption="NEXT_DAY")
    assert hook.describe_job(job_id)["ShippingDetails"]["ShippingOption"] == "NEXT_DAY"

    hook.cancel_job(job_id)
    assert hook.get_job_state(job_id) == "Cancelled"


def test_unlock_code_and_manifest_are_masked(hook, snowball_job, advance_job_to):
    job_id = snowball_job()
    advance_job_to(job_id, "WithCustomer")
    code = hook.get_job_unlock_code(job_id)
    url = hook.get_job_manifest(job_id)
    assert code and url.startswith("http")
    assert code not in str(redact(f"unlock with {code}"))
    assert url not in str(redact(f"manifest at {url}"))


def test_find_live_jobs_by_description_skips_cancelled_jobs_oldest_first(hook, snowball_job, unique):
    description = unique("pipeline-key")
    cancelled = snowball_job(description)
    hook.cancel_job(cancelled)
    assert hook.find_live_jobs_by_description(description) == []
    first, second = snowball_job(description), snowball_job(description)
    assert [job["JobId"] for job in hook.find_live_jobs_by_description(description)] == [first, second]
    assert {job["JobId"] for job in hook.find_jobs_by_description(description)} == {cancelled, first, second}


def test_creates_are_sent_once_without_botocores_retries(hook, faults):
    from botocore.exceptions import ClientError

    faults({"service": "snowball", "operation": "CreateAddress", "kind": "throttle", "limit": 1})
    with pytest.raises(ClientError, match="ThrottlingException"):
        hook.create_address({"Name": "n", "Street1": "s", "City": "c", "Country": "US", "PostalCode": "1"})
    assert hook.single_attempt_conn.meta.config.retries["total_max_attempts"] == 1


def test_states_after():
    assert SnowballHook.states_after("WithCustomer") == {
        "InTransitToAWS",
        "WithAWSSortingFacility",
        "WithAWS",
        "InProgress",
        "Complete",
    }
    assert SnowballHook.states_after("Complete") == frozenset()


def test_device_hook_lists_and_uploads(aws_conn, localaws, snowball_job, advance_job_to, bucket, tmp_path):
    job_id = snowball_job()
    advance_job_to(job_id, "WithCustomer")
    device = SnowballDeviceHook(
        aws_conn_id=aws_conn,
        device_endpoint_url=f"{localaws.endpoint_url}/_localaws/snowball-device/{job_id}",
    )
    path = tmp_path / "part-0.parquet"
    path.write_bytes(b"x" * 1000)
    device.upload_file(str(path), bucket, "landing/part-0.parquet", TransferConfig())
    objects = device.list_objects(bucket, "landing/")
    assert list(objects) == ["landing/part-0.parquet"]
    assert objects["landing/part-0.parquet"]["Size"] == 1000
    assert not objects["landing/part-0.parquet"]["ETag"].startswith('"')
