from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from finetune_pipeline.aws.hooks.s3_objects import S3ObjectHook, split_s3_uri


@pytest.fixture
def hook(aws_conn) -> S3ObjectHook:
    return S3ObjectHook(aws_conn_id=aws_conn)


def test_client_type(hook):
    assert hook.client_type == "s3"


def test_a_create_only_put_refuses_an_existing_key(hook, bucket):
    hook.put_object(bucket, "jobs/a.json", b"first", if_none_match=True)
    with pytest.raises(ClientError) as refused:
        hook.put_object(bucket, "jobs/a.json", b"second", if_none_match=True)
    assert S3ObjectHook.error_code(refused.value) == S3ObjectHook.PRECONDITION_FAILED
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert hook.get_object_body(bucket, "jobs/a.json") == b"first"
    hook.put_object(bucket, "jobs/a.json", b"third")  # a plain PUT overwrites
    assert hook.get_object_body(bucket, "jobs/a.json") == b"third"


def test_a_missing_key_reads_as_none(hook, bucket):
    assert hook.get_object_body(bucket, "nothing/here") is None
    with pytest.raises(ClientError, match="NoSuchBucket"):
        hook.get_object_body(f"{bucket}-gone", "x")


def test_split_s3_uri():
    assert split_s3_uri("s3://b/some/prefix/") == ("b", "some/prefix")
    assert split_s3_uri("s3://b") == ("b", "")
    assert S3ObjectHook.error_code(ValueError()) is None
    for bad in ("b/prefix", "https://b/x", "s3:///x", ""):
        with pytest.raises(ValueError, match="is not an s3://bucket/prefix URI"):
            split_s3_uri(bad)
