"""Copying the export to an S3 endpoint and proving it landed, against localaws over HTTP."""

from __future__ import annotations

import pytest

from finetune_pipeline.pipeline import landing
from finetune_pipeline.pipeline.export_manifest import build_manifest


@pytest.fixture
def bucket(boto_client, pipeline_config):
    s3 = boto_client("s3")
    s3.create_bucket(Bucket=pipeline_config.storage.bucket)
    return s3, pipeline_config.storage.bucket


@pytest.fixture
def manifest(tmp_path):
    for table, size in (("customers", 2048), ("tickets", 4096)):
        folder = tmp_path / "public" / table
        folder.mkdir(parents=True)
        (folder / "LOAD00000001.parquet").write_bytes(bytes(range(256)) * (size // 256))
    return tmp_path, build_manifest(tmp_path, "2026-11-26T09:00:00+00:00", ["public.customers"], True)


def test_upload_is_resumable_and_verified(bucket, manifest):
    s3, name = bucket
    directory, exported = manifest
    assert landing.upload_export(s3, directory, exported, name, "landing") == {"copied": 2, "skipped": 0,
                                                                              "bytes": 6144}
    # A retry after a crash re-sends nothing that already arrived whole.
    assert landing.upload_export(s3, directory, exported, name, "landing") == {"copied": 0, "skipped": 2,
                                                                              "bytes": 0}
    assert landing.verify_landed(s3, exported, name, "landing") == 6144


def test_verify_names_every_missing_or_short_file(bucket, manifest):
    s3, name = bucket
    directory, exported = manifest
    landing.upload_export(s3, directory, exported, name, "landing")
    s3.delete_object(Bucket=name, Key="landing/public/tickets/LOAD00000001.parquet")
    s3.put_object(Bucket=name, Key="landing/public/customers/LOAD00000001.parquet", Body=b"short")
    with pytest.raises(landing.LandingError) as error:
        landing.verify_landed(s3, exported, name, "landing")
    message = str(error.value)
    assert "2 of 2 exported files did not land" in message
    assert "public/tickets/LOAD00000001.parquet: missing" in message
    assert "public/customers/LOAD00000001.parquet: 5 bytes, export had 2048" in message


def test_snapshot_manifest_round_trip_and_clear_error_before_it_exists(bucket, manifest):
    s3, name = bucket
    _, exported = manifest
    with pytest.raises(landing.LandingError, match="run the bulk transfer first"):
        landing.read_snapshot_manifest(s3, name, "landing")
    key = landing.publish_snapshot_manifest(s3, exported, name, "landing")
    assert key == "landing/_snapshot/manifest.json"
    assert landing.read_snapshot_manifest(s3, name, "landing") == exported
