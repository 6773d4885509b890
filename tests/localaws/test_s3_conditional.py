"""S3 conditional writes on localaws: of many PutObject(IfNoneMatch="*") of one key at once, exactly one wins."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import ClientError


def test_concurrent_create_only_puts_of_one_key_have_one_winner(boto_client):
    s3 = boto_client("s3")
    bucket = f"cond-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)

    def put(index: int) -> str:
        try:
            s3.put_object(Bucket=bucket, Key="jobs/k.json", Body=f"writer {index}".encode(), IfNoneMatch="*")
            return "won"
        except ClientError as error:
            return error.response["Error"]["Code"]

    for _ in range(3):
        s3.delete_object(Bucket=bucket, Key="jobs/k.json")
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(put, range(8)))
        assert sorted(outcomes) == ["PreconditionFailed"] * 7 + ["won"], outcomes
        body = s3.get_object(Bucket=bucket, Key="jobs/k.json")["Body"].read().decode()
        assert body.startswith("writer ")


def test_a_plain_put_still_overwrites(boto_client):
    s3 = boto_client("s3")
    bucket = f"cond-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"1", IfNoneMatch="*")
    s3.put_object(Bucket=bucket, Key="k", Body=b"2")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"2"
