"""Small task bodies: the CDC start position DMS understands, and training before any dataset exists."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException
from manifest_helpers import make_export

from finetune_pipeline.pipeline.tasks import (
    dms_cdc_position,
    read_export,
    triggered_dataset_version,
    verify_and_publish_snapshot,
)


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [
        ("2026-11-26T09:26:59+00:00", "2026-11-26T09:26:59"),
        ("2026-11-26T09:26:59.123456Z", "2026-11-26T09:26:59"),
        ("2026-11-26T10:26:59+01:00", "2026-11-26T09:26:59"),
    ],
)
def test_cdc_position_uses_dms_date_form_in_utc(snapshot, expected):
    assert dms_cdc_position(snapshot) == expected


def test_manual_training_before_any_version_is_a_clear_failure(pipeline_config, boto_client, aws_conn):
    boto_client("s3").create_bucket(Bucket=pipeline_config.storage.bucket)
    with pytest.raises(AirflowFailException, match="no dataset version is published .* run finetune_incremental_sync"):
        triggered_dataset_version(pipeline_config, triggering_asset_events={})


def _export(config) -> None:
    make_export(config.snowball.export_dir, {"public/tickets/LOAD00000001.parquet": b"t" * 512})


def test_an_export_that_does_not_match_its_manifest_fails_without_retry(pipeline_config):
    _export(pipeline_config)
    (pipeline_config.snowball.export_dir / "public" / "tickets" / "LOAD00000001.parquet").write_bytes(b"short")
    # A retry would read the same files: the task fails at once and says what to do.
    with pytest.raises(AirflowFailException, match="does not match its manifest(.|\n)*re-run the export"):
        read_export(pipeline_config)


def test_a_snapshot_that_did_not_land_fails_without_retry(pipeline_config, boto_client, aws_conn):
    _export(pipeline_config)
    boto_client("s3").create_bucket(Bucket=pipeline_config.storage.bucket)
    with pytest.raises(AirflowFailException, match="did not land(.|\n)*clear copy_online"):
        verify_and_publish_snapshot(pipeline_config)
    # Nothing was published: CDC cannot start from a snapshot that is not all there.
    listed = boto_client("s3").list_objects_v2(Bucket=pipeline_config.storage.bucket).get("KeyCount", 0)
    assert listed == 0
