"""Copying the export to an S3 endpoint and proving by checksum that it landed, against localaws over HTTP."""

from __future__ import annotations

import hashlib
import os

import pytest
from boto3.s3.transfer import TransferConfig
from manifest_helpers import make_export

from finetune_pipeline.aws.operators.snowball import local_s3_etag
from finetune_pipeline.pipeline import landing

MIB = 1024 * 1024
CUSTOMERS = "public/customers/LOAD00000001.parquet"
TICKETS = "public/tickets/LOAD00000001.parquet"


@pytest.fixture
def bucket(boto_client, pipeline_config):
    s3 = boto_client("s3")
    s3.create_bucket(Bucket=pipeline_config.storage.bucket)
    return s3, pipeline_config.storage.bucket


@pytest.fixture
def export(tmp_path):
    return tmp_path, make_export(tmp_path, {CUSTOMERS: bytes(range(256)) * 8, TICKETS: bytes(range(256)) * 16})


def test_upload_is_resumable_and_verified(bucket, export):
    s3, name = bucket
    directory, exported = export
    assert landing.upload_export(s3, directory, exported, name, "landing") == {"copied": 2, "skipped": 0,
                                                                              "bytes": 6144}
    # A retry after a crash re-sends nothing that already arrived whole.
    assert landing.upload_export(s3, directory, exported, name, "landing") == {"copied": 0, "skipped": 2,
                                                                              "bytes": 0}
    assert landing.verify_landed(s3, exported, name, "landing") == 6144


def test_verify_lists_every_bad_key_and_a_stale_object_of_the_same_size_fails(bucket, export):
    s3, name = bucket
    directory, exported = export
    landing.upload_export(s3, directory, exported, name, "landing")
    s3.delete_object(Bucket=name, Key=f"landing/{TICKETS}")
    # Same size, other bytes: what an earlier export's file left in the bucket looks like.
    s3.put_object(Bucket=name, Key=f"landing/{CUSTOMERS}", Body=bytes(reversed(range(256))) * 8)
    s3.put_object(Bucket=name, Key="landing/public/orders/LOAD00000001.parquet", Body=b"not in the manifest")
    with pytest.raises(landing.LandingError) as error:
        landing.verify_landed(s3, exported, name, "landing")
    message = str(error.value)
    assert "2 of 2 exported files did not land intact" in message
    assert f"{TICKETS}: missing" in message
    assert f"{CUSTOMERS}: content differs: CRC-32" in message and "ETag" in message
    # The upload re-sends the stale object instead of skipping it for its size.
    assert landing.upload_export(s3, directory, exported, name, "landing")["copied"] == 2
    assert landing.verify_landed(s3, exported, name, "landing") == 6144


def test_a_short_object_is_named_with_its_size(bucket, export):
    s3, name = bucket
    directory, exported = export
    landing.upload_export(s3, directory, exported, name, "landing")
    s3.put_object(Bucket=name, Key=f"landing/{CUSTOMERS}", Body=b"short")
    with pytest.raises(landing.LandingError, match=f"{CUSTOMERS}: 5 bytes, export had 2048"):
        landing.verify_landed(s3, exported, name, "landing")


def test_multipart_etags_match_the_device_loader_and_verify_without_a_download(bucket, tmp_path):
    s3, name = bucket
    content = os.urandom(12 * MIB + 17)
    exported = make_export(tmp_path, {TICKETS: content}, part_size=5 * MIB)
    item = exported.files[0]
    assert item.etag.endswith("-3") and item.md5 == hashlib.md5(content).hexdigest()
    # The same ETag the Snowball device loader computes for its skip check, at the same part size.
    config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    assert local_s3_etag(tmp_path / TICKETS, len(content), config) == item.etag
    landing.upload_export(s3, tmp_path, exported, name, "landing")
    assert s3.head_object(Bucket=name, Key=f"landing/{TICKETS}")["ETag"].strip('"') == item.etag
    calls = []
    s3.meta.events.register("before-call.s3", lambda model, **kw: calls.append(model.name))
    assert landing.verify_landed(s3, exported, name, "landing") == len(content)
    assert calls == ["HeadObject"]


def test_an_object_uploaded_in_other_parts_with_nothing_comparable_is_not_passed(bucket, tmp_path):
    s3, name = bucket
    content = os.urandom(11 * MIB)
    exported = make_export(tmp_path, {TICKETS: content}, part_size=5 * MIB)
    config = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB)
    s3.upload_file(str(tmp_path / TICKETS), name, f"landing/{TICKETS}", Config=config)
    with pytest.raises(landing.LandingError, match="cannot verify without downloading"):
        landing.verify_landed(s3, exported, name, "landing")


def test_content_problem_prefers_full_object_checksums_and_ignores_kms_etags(export):
    _, exported = export
    item = exported.files[0]
    head = {"ContentLength": item.size, "ETag": '"0123-4"', "ChecksumCRC32": item.crc32,
            "ChecksumType": "FULL_OBJECT", "ServerSideEncryption": "aws:kms"}
    assert landing.content_problem(head, item) is None
    assert "CRC-32" in landing.content_problem({**head, "ChecksumCRC32": "AAAAAA=="}, item)
    # Under SSE-KMS an ETag is no MD5: it is neither trusted nor held against the object.
    assert "cannot verify" in landing.content_problem(
        {"ContentLength": item.size, "ETag": '"abc"', "ServerSideEncryption": "aws:kms"}, item)


def test_snapshot_manifest_round_trip_and_clear_error_before_it_exists(bucket, export):
    s3, name = bucket
    _, exported = export
    with pytest.raises(landing.LandingError, match="run the bulk transfer first"):
        landing.read_snapshot_manifest(s3, name, "landing")
    key = landing.publish_snapshot_manifest(s3, exported, name, "landing")
    assert key == "landing/_snapshot/manifest.json"
    assert landing.read_snapshot_manifest(s3, name, "landing") == exported
